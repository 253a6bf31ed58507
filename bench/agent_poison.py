"""The agent survives poison: N fuzzed channel messages (unsigned garbage, and payloads under the real key) are
fed to one long-running `spoolsweep agent run` child process as hypothesis generates them; at the end the child
must still be running, with every message handled and gone from the channel.

    python3 bench/agent_poison.py [--messages 10000]

Prints how many messages were fed, refused and carried out, whether the agent was still running, and the
rate. The state and store go to /dev/shm when there is one: this measures survival, not fsync (each refusal
syncs four times).
"""

from __future__ import annotations

import argparse
import os
import signal
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


def feed(n: int, private: bytes, channel: Path, ahead: int = 200) -> int:
    """Write n generated bodies into the local channel (renamed in whole), as hypothesis makes them, at most
    `ahead` waiting at a time (a folder channel lists itself on every receive, as a queue would not)."""
    count = 0
    strategy = st.one_of(bodies, payloads.map(lambda p: sign_payload(p, private)))

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(body=strategy)
    def put(body: str) -> None:
        nonlocal count
        if count >= n:
            return
        while count % 50 == 0 and sum(1 for e in os.scandir(channel) if e.name.endswith(".msg")) > ahead:
            time.sleep(0.2)
        tmp = channel / f".{count:06d}.tmp"
        tmp.write_bytes(body.encode("utf-8", "surrogateescape"))
        tmp.rename(channel / f"{count:06d}.msg")
        count += 1

    while count < n:  # hypothesis may end a run early once it has seen enough alike
        put()
    return count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--timeout", type=float, default=3600)
    a = ap.parse_args()
    private, public = generate_keypair()
    # a tmpfs when there is one (this measures survival, not fsync); mkdtemp makes a private folder in it
    with tempfile.TemporaryDirectory(prefix="spoolsweep-poison-", dir=SHM if os.path.isdir(SHM) else None) as tmp:
        base = Path(tmp)
        (base / "Out").mkdir()
        chan = base / "store" / "channel" / HOST
        chan.mkdir(parents=True)
        (base / "pub.pem").write_bytes(public)
        cmd = [sys.executable, "-m", "spoolsweep", "agent", "run", "--mta", "pickup-dir", "--dir", str(base / "Out"),
               "--host", HOST, "--state-dir", str(base / "state"), "--store", str(base / "store"),
               "--public-key", str(base / "pub.pem"), "--wait", "1"]
        t0 = time.monotonic()
        # its stderr to a file: a pipe nobody reads fills up and blocks the agent's logging
        errlog = open(base / "agent.stderr", "w")  # closed after the agent stops
        agent = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errlog)
        fed = feed(a.messages, private, chan)
        print(f"fed {fed:,} fuzzed channel messages in {time.monotonic() - t0:.0f} s")
        deadline = time.monotonic() + a.timeout
        while agent.poll() is None and time.monotonic() < deadline and any(chan.glob("*.msg")):
            time.sleep(1)
        took = time.monotonic() - t0
        alive = agent.poll() is None
        left = len(list(chan.glob("*.msg")))
        agent.send_signal(signal.SIGINT)
        try:
            agent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        errlog.close()
        stderr = (base / "agent.stderr").read_text(errors="replace")
        log = (base / "state" / "agent.log").read_text(errors="replace").splitlines()
        refused = sum(1 for ln in log if " instruction refused: " in ln)
        done = sum(1 for ln in log if " finished: " in ln and " instruction refused: " not in ln)
        dead = len(list((base / "state" / "dead-letter").glob("*.msg")))
    print(f"agent {'still running' if alive else f'EXITED with {agent.returncode}'} after {took:.0f} s; "
          f"handled {refused + done:,} of {fed:,} ({refused:,} refused, {done:,} signed and carried out with nothing "
          f"to touch); {left} left on the channel; {dead:,} distinct bodies dead-lettered "
          f"({(refused + done) / took:,.1f} messages/s on this machine)")
    if not alive:
        print(stderr[-2000:])
    return 0 if alive and left == 0 and refused + done == fed else 1


if __name__ == "__main__":
    sys.exit(main())
