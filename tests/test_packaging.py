"""`python -m build` makes an sdist and a wheel; the wheel, alone in a fresh venv, generates, triages and demos."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.support.tree import tracked

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, timeout: float = 900) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "SPOOLSWEEP_CORPUS")}
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


def tracked_copy(dest: Path) -> Path:
    """The checkout's tracked files (what a clean clone holds) copied to `dest`.

    The build runs there, not in the checkout: setuptools writes its egg-info and the sdist's release tree
    (`spoolsweep-0.1.0/`, hard links removed after taring) beside the sources, so a build in the checkout
    shares that tree with whatever else runs there (a CI run once lost `spoolsweep-0.1.0/tests/...`
    between linking and taring), and a stale `*.egg-info/SOURCES.txt` there would list files a clone lacks.
    """
    for name in tracked(ROOT):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the work tree is not in a clone made from it either
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name, follow_symlinks=False)
    return dest


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The sdist and the wheel built from it (as `python -m build` does), and what the build printed."""
    out = tmp_path_factory.mktemp("dist")
    src = tracked_copy(tmp_path_factory.mktemp("src"))
    log = run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], cwd=out)
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    return sdist, wheel, log


def test_build_is_clean_and_ships_the_corpus(dist: tuple[Path, Path, str]) -> None:
    import tarfile
    import zipfile

    sdist, wheel, log = dist
    assert "Deprecat" not in log, log  # e.g. SetuptoolsDeprecationWarning about project.license
    names = zipfile.ZipFile(wheel).namelist()
    assert "pipeline/data/corpus/spamassassin-sample.tar.gz" in names
    assert "pipeline/data/corpus/spamassassin-spam2.tar.xz" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert any(n.endswith("licenses/pipeline/data/corpus/NOTICE.md") for n in names), names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta
    assert not any(n.startswith("tests/") for n in names)
    with tarfile.open(sdist) as tf:
        assert any(n.endswith("/pipeline/data/corpus/spamassassin-sample.tar.gz") for n in tf.getnames())
        assert any(n.endswith("/pipeline/data/corpus/spamassassin-spam2.tar.xz") for n in tf.getnames())


def test_wheel_in_a_fresh_venv(dist: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, wheel, _ = dist
    venv.create(tmp_path / "venv", with_pip=True)
    py, cli = tmp_path / "venv/bin/python", str(tmp_path / "venv/bin/spoolsweep")
    work = tmp_path / "work"  # not the checkout: nothing may come from the source tree
    work.mkdir()
    run([str(py), "-m", "pip", "install", "-q", str(wheel)], cwd=work)
    # the base install is the agent's: no scikit-learn, yet it can generate an incident from the shipped sample
    assert "scikit-learn" not in run([str(py), "-m", "pip", "list"], cwd=work).lower()
    run([cli, "generate", "incident.tar.gz", "-n", "300"], cwd=work)
    assert (work / "incident.truth.jsonl").exists() and (work / "site.toml").exists()

    run([str(py), "-m", "pip", "install", "-q", f"{wheel}[triage]"], cwd=work)
    run([cli, "triage", "incident.tar.gz", "--policy", "site.toml", "--out", "triaged", "-q"], cwd=work)
    assert (work / "triaged" / "manifest.json").stat().st_size > 0
    out = run([cli, "demo", "--spool", "triage-only", "-n", "300", "--workdir", "demo"], cwd=work)
    assert (work / "demo" / "manifest.json").exists(), out
