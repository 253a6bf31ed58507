"""bench/child.py: a child's result read back, or one line that says why there is none."""

from __future__ import annotations

from pathlib import Path

from bench.child import run_child

ROOT = Path(__file__).resolve().parent.parent
CHILD = f"""import sys
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from bench.child import result
if sys.argv[1] == "ok":
    print("noise")
    result({{"n": 3, "path": Path("x")}})
elif sys.argv[1] == "raise":
    raise ValueError("bad snapshot: x.tar")
"""


def test_result_and_failure(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    assert run_child(str(script), ["ok"]) == ({"n": 3, "path": "x"}, "")
    assert run_child(str(script), ["raise"]) == (None, "exit 1: ValueError: bad snapshot: x.tar")
    assert run_child(str(script), ["silent"]) == (None, "exit 0: no output")
