"""The agent survives poison: N fuzzed channel messages (unsigned garbage, and payloads under the real key) go
through one `spoolsweep agent run --once` child process, which must finish them all and exit 0.

    python3 bench/agent_poison.py [--messages 10000]

Prints how many messages were handled, refused and carried out, the exit code and the rate. The state and
store go to /dev/shm when there is one: this measures survival, not fsync (each refusal syncs 4 times).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pipeline.instructions import generate_keypair  # noqa: E402
from tests.support.fuzz import HOST, bodies, payloads, sign_payload  # noqa: E402

SHM = "/dev/shm"  # noqa: S108


def generate(n: int, private: bytes) -> list[str]:
    out: list[str] = []
    strategy = st.one_of(bodies, payloads.map(lambda p: sign_payload(p, private)))

    @settings(max_examples=min(n, 10_000), database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(body=strategy)
    def collect(body: str) -> None:
        out.append(body)

    while len(out) < n:  # hypothesis may end a run early once it has seen enough alike
        collect()
    return out[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    a = ap.parse_args()
    private, public = generate_keypair()
    t0 = time.monotonic()
    msgs = generate(a.messages, private)
    print(f"generated {len(msgs):,} fuzzed channel messages in {time.monotonic() - t0:.1f} s")
    # a tmpfs when there is one (this measures survival, not fsync); mkdtemp makes a private folder in it
    shm = SHM if os.path.isdir(SHM) else None
    with tempfile.TemporaryDirectory(prefix="spoolsweep-poison-", dir=shm) as tmp:
        base = Path(tmp)
        (base / "Out").mkdir()
        chan = base / "store" / "channel" / HOST
        chan.mkdir(parents=True)
        for i, b in enumerate(msgs):
            (chan / f"{i:06d}.msg").write_bytes(b.encode("utf-8", "surrogateescape"))
        (base / "pub.pem").write_bytes(public)
        cmd = [sys.executable, "-m", "spoolsweep", "agent", "run", "--mta", "pickup-dir", "--dir", str(base / "Out"),
               "--host", HOST, "--state-dir", str(base / "state"), "--store", str(base / "store"),
               "--public-key", str(base / "pub.pem"), "--once", "--wait", "0"]
        t0 = time.monotonic()
        cp = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        took = time.monotonic() - t0
        lines = cp.stdout.splitlines()
        refused = sum(1 for ln in lines if ln.startswith("refused"))
        done = sum(1 for ln in lines if ln.startswith("done"))
        left = len(list(chan.glob("*.msg")))
        dead = len(list((base / "state" / "dead-letter").glob("*.msg")))
    print(f"agent exit code {cp.returncode}; handled {refused + done:,} of {len(msgs):,} messages "
          f"({refused:,} refused, {done:,} carried out with nothing to touch); {left} left on the channel; "
          f"{dead:,} distinct bodies dead-lettered; {took:.1f} s ({len(msgs) / took:,.0f} messages/s)")
    if cp.returncode != 0:
        print(cp.stderr[-2000:])
    return 0 if cp.returncode == 0 and refused + done == len(msgs) and left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
