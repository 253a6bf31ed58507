"""The repository's tracked files, as a clone would hold them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def tracked(root: Path) -> list[Path]:
    """The files git tracks under root; every file when root is no checkout (a copy of the tracked tree)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", ".venv-tools", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                ".hypothesis", "build", "dist", "demo-out", "bench-out", "test-artifacts"}
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
            files += [Path(dirpath, f).relative_to(root) for f in filenames]
            files += [Path(dirpath, d).relative_to(root) for d in dirnames if Path(dirpath, d).is_symlink()]
        return sorted(files)
    return [Path(p) for p in out.decode().split("\0") if p]
