"""A benchmark's measurement in a process of its own: the child prints `RESULT <json>` (`result`), the
parent runs it and reads that line back (`run_child`), so one measurement's memory and caches are not the
next one's."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

_MARK = "RESULT "


def result(out: Any) -> None:
    """Print the child's result, for run_child to read."""
    print(_MARK + json.dumps(out, default=str), flush=True)


def run_child(script: str, args: list[str]) -> tuple[dict | None, str]:
    """(the result `script args` printed, "") or (None, why it gave none: its exit code and the last line of
    its standard error, the exception's own message when it raised one)."""
    p = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    line = next((x for x in p.stdout.splitlines() if x.startswith(_MARK)), None)
    if p.returncode or line is None:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"exit {p.returncode}: {last}"
    out: dict = json.loads(line[len(_MARK):])
    return out, ""
