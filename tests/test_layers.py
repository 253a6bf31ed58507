"""The layers hold: only the handlers import functions/, the core never imports the cloud, nothing configures
anything by writing the environment. Read from the source (ast), so a new module is checked the day it lands."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("pipeline", "adapters", "functions", "agent", "console", "spoolsweep")  # pyproject's packages
CLOUD = {"boto3", "botocore", "aws_lambda_powertools", "mangum"}
OURS_OUTSIDE_THE_CORE = {"adapters", "functions", "agent", "console", "spoolsweep", "bench", "tests"}


def _modules(*tops: str, root: Path = ROOT) -> Iterator[tuple[str, ast.Module]]:
    for top in tops:
        for path in sorted((root / top).rglob("*.py")):
            yield path.relative_to(root).as_posix(), ast.parse(path.read_text(encoding="utf-8"), str(path))


def _imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, module) of every absolute import, inside functions too (lazy imports count)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def _top(module: str) -> str:
    return module.split(".")[0]


def functions_imports(tops: tuple[str, ...], root: Path = ROOT) -> list[str]:
    return [f"{name}:{line} imports {mod}" for name, tree in _modules(*tops, root=root)
            if not name.startswith("functions/") for line, mod in _imports(tree) if _top(mod) == "functions"]


def test_only_the_handlers_import_functions() -> None:
    """Entry points call the service layer (pipeline/service/); the Lambda handlers are one of them, not a library."""
    assert functions_imports((*SHIPPED, "bench")) == []


def test_the_check_sees_an_import_of_functions(tmp_path: Path) -> None:
    (tmp_path / "console").mkdir()
    (tmp_path / "console" / "x.py").write_text("import functions\ndef f():\n    from functions.embedded import a\n")
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / "h.py").write_text("from functions.common import Powertools\n")
    assert functions_imports(("console", "functions"), root=tmp_path) == [
        "console/x.py:1 imports functions", "console/x.py:3 imports functions.embedded"]


def test_the_core_and_its_service_layer_import_no_cloud_and_no_entry_point() -> None:
    bad = [f"{name}:{line} imports {mod}" for name, tree in _modules("pipeline") for line, mod in _imports(tree)
           if _top(mod) in CLOUD | OURS_OUTSIDE_THE_CORE]
    assert bad == []


def test_the_service_layer_runs_no_program() -> None:
    """Use cases take ports; MTA commands belong to agent/."""
    bad = [f"{name}:{line} imports {mod}" for name, tree in _modules("pipeline/service") for line, mod in _imports(tree)
           if _top(mod) in {"subprocess", "agent"}]
    assert bad == []


def _environ_writes(tree: ast.Module) -> Iterator[int]:
    """Lines that assign to os.environ[...], call os.environ.update/setdefault/pop/clear, or os.putenv."""

    def is_environ(n: ast.AST) -> bool:
        return isinstance(n, ast.Attribute) and n.attr == "environ" and isinstance(n.value, ast.Name) \
            and n.value.id == "os"

    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            if any(isinstance(t, ast.Subscript) and is_environ(t.value) for t in targets):
                yield node.lineno
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if (is_environ(f.value) and f.attr in {"update", "setdefault", "pop", "popitem", "clear"}) or (
                    isinstance(f.value, ast.Name) and f.value.id == "os" and f.attr in {"putenv", "unsetenv"}):
                yield node.lineno


def test_nothing_shipped_is_configured_by_writing_the_environment() -> None:
    """Settings are passed as values (a Lambda reads its environment once, at cold start, and never writes it)."""
    bad = [f"{name}:{line}" for name, tree in _modules(*SHIPPED) for line in _environ_writes(tree)]
    assert bad == []


def test_the_environment_check_sees_each_kind_of_write() -> None:
    code = ("import os\nos.environ['A'] = '1'\nos.environ.update(B='2')\nos.environ.setdefault('C', '3')\n"
            "del os.environ['A']\nos.putenv('D', '4')\nos.environ.get('E')\n")
    assert sorted(_environ_writes(ast.parse(code))) == [2, 3, 4, 5, 6]
