"""Each install extra carries what its commands import: `spoolsweep console --aws` works with the console extra."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"pipeline", "adapters", "console", "functions", "agent", "spoolsweep"}


def _third_party(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in OURS and n != "__future__"}


def _extra(name: str) -> set[str]:
    """The extra's requirements and the base install's, by distribution name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["optional-dependencies"][name] + project.get("dependencies", [])
    return {re.split(r"[<>=\[;! ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_console_extra_carries_what_console_aws_imports():
    dists = packages_distributions()
    # every module of the console package: its routes live in one module per resource
    imported = set().union(*(_third_party(p) for p in (ROOT / "console").glob("*.py")))
    needed = {dists[m][0].lower() for m in imported}
    assert needed <= _extra("console"), needed - _extra("console")


def test_mypy_checks_every_package_we_ship():
    """`./run test` runs bare `mypy`: its package list must name every package the wheel ships."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    shipped = {p.rstrip("*") for p in cfg["setuptools"]["packages"]["find"]["include"]}
    assert shipped == set(cfg["mypy"]["packages"]), shipped ^ set(cfg["mypy"]["packages"])
