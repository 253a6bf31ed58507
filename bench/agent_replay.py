"""Replay throughput (messages/s) and the agent's peak memory: SMTP re-injection into an aiosmtpd sink, and a
real private Postfix releasing its hold queue into the same sink when Postfix is installed.

    python3 bench/agent_replay.py [--messages 2000] [--postfix-messages 500] [--rate 0]

The agent runs as `spoolsweep agent run --once` in a child process; its peak RSS is the child's VmHWM.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.journal import Journal  # noqa: E402
from agent.mta.pickup import PickupQueue  # noqa: E402
from agent.take import take  # noqa: E402
from agent.upload import parse_destination  # noqa: E402
from bench.rss import peak_rss_mb  # noqa: E402
from pipeline.instructions import Receipt, generate_keypair  # noqa: E402
from pipeline.queues import receipt_key  # noqa: E402
from pipeline.store import LocalChannel, LocalStore  # noqa: E402
from tests.support.agent import Sink, approved, instruction, signed_body, write_pickup  # noqa: E402

INC, HOST = "bench", "mx1"


def synthetic(n: int, tag: str) -> list[tuple[str, list[str], bytes]]:
    body = b"".join(b"Line %d of a plain message body, as a real one would have.\r\n" % i for i in range(30))
    return [(f"s{i}@example.net", [f"r{i}@example.org"],
             b"From: s%d@example.net\r\nTo: r%d@example.org\r\nSubject: bench %d\r\nMessage-ID: <%s-%d@bench>\r\n\r\n"
             % (i, i, i, tag.encode(), i) + body) for i in range(n)]


def agent_cli(*args: str) -> tuple[float, float]:
    """(seconds, peak MiB) of one `spoolsweep agent ...` in a child process."""
    with tempfile.TemporaryFile() as errf:
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "spoolsweep", "agent", *args], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=errf)
        peak = 0.0
        while p.poll() is None:
            peak = max(peak, peak_rss_mb(p.pid))
            time.sleep(0.05)
        secs = time.perf_counter() - t
        if p.returncode != 0:
            errf.seek(0)
            raise SystemExit(errf.read().decode(errors="replace"))
    return secs, peak


def run_agent(args: list[str], store: LocalStore, iid: str) -> tuple[float, float]:
    secs, peak = agent_cli("run", *args, "--once")
    Receipt.model_validate_json(store.get(receipt_key(INC, HOST, iid)))
    return secs, peak


def bench_smtp(n: int, tmp: Path, keys: tuple[bytes, Path], rate: float) -> None:
    out = tmp / "Out"
    write_pickup(out, synthetic(n, "smtp"))
    state = tmp / "state"
    secs, peak = agent_cli("snapshot", "--mta", "pickup-dir", "--dir", str(out), "--to", str(tmp / "store"),
                           "--incident", INC, "--host", HOST, "--state-dir", str(state), "--quiet")
    print(f"snapshot of {n:,} messages (pickup folder): {secs:.1f} s, agent peak RSS {peak:,.0f} MiB")
    qms = list(PickupQueue(out).list())
    LocalChannel(tmp / "store" / "channel").send(
        HOST, signed_body(instruction(INC, HOST, approved(qms), [], iid="smtp"), keys[0]), "smtp")
    sink = Sink()
    sink.controller.start()
    try:
        secs, peak = run_agent(["--mta", "pickup-dir", "--dir", str(out), "--host", HOST, "--state-dir", str(state),
                                "--public-key", str(keys[1]), "--store", str(tmp / "store"),
                                "--deliver", f"smtp://127.0.0.1:{sink.port}", "--rate", str(rate)],
                               LocalStore(tmp / "store"), "smtp")
        got = len(sink.received)
    finally:
        sink.controller.stop()
    print(f"SMTP re-injection: {got:,} of {n:,} messages in {secs:.1f} s = {got / secs:,.0f} messages/s "
          f"(process start included); agent peak RSS {peak:,.0f} MiB")


def bench_postfix(n: int, tmp: Path, keys: tuple[bytes, Path], rate: float) -> None:
    from agent.mta.postfix import PostfixQueue
    from tests.support.postfix import available, private_postfix

    if why := available():
        print(f"Postfix: skipped ({why})")
        return
    with private_postfix(users={}) as pf:
        msgs = synthetic(n, "pf")
        with pf.smtp() as s:
            for sender, rcpts, data in msgs:
                s.sendmail(sender, rcpts, data)
        pf.wait_queued(n, timeout=300)
        state = tmp / "pfstate"
        q = PostfixQueue(pf.etc)
        take(q, "postfix", parse_destination(None, tmp / "pfstore", INC, HOST), Journal(state / "journal.sqlite"),
             state)
        qms = list(q.list())
        LocalChannel(tmp / "pfstore" / "channel").send(
            HOST, signed_body(instruction(INC, HOST, approved(qms), [], iid="pf"), keys[0]), "pf")
        sink = Sink()
        sink.controller.start()
        try:
            pf.run("/usr/sbin/postconf", "-c", str(pf.etc), "-e", f"relayhost = [127.0.0.1]:{sink.port}")
            pf.run("/usr/sbin/postfix", "-c", str(pf.etc), "reload")
            t = time.perf_counter()
            secs, peak = run_agent(["--mta", "postfix", "--postfix-config", str(pf.etc), "--host", HOST,
                                    "--state-dir", str(state), "--public-key", str(keys[1]), "--store",
                                    str(tmp / "pfstore"), "--rate", str(rate)], LocalStore(tmp / "pfstore"), "pf")
            while len(sink.received) < n and time.perf_counter() - t < 600:
                time.sleep(0.1)
            total = time.perf_counter() - t
        finally:
            sink.controller.stop()
        print(f"Postfix release: {n:,} messages released in {secs:.1f} s ({n / secs:,.0f} messages/s); "
              f"{len(sink.received):,} delivered to the sink after {total:.1f} s ({len(sink.received) / total:,.0f}"
              f" messages/s end to end); agent peak RSS {peak:,.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--postfix-messages", type=int, default=500)
    ap.add_argument("--rate", type=float, default=0)
    a = ap.parse_args()
    priv, pub = generate_keypair()
    with tempfile.TemporaryDirectory(prefix="spoolsweep-bench-") as d:
        tmp = Path(d)
        (tmp / "pub.pem").write_bytes(pub)
        bench_smtp(a.messages, tmp, (priv, tmp / "pub.pem"), a.rate)
        if a.postfix_messages:
            bench_postfix(a.postfix_messages, tmp, (priv, tmp / "pub.pem"), a.rate)


if __name__ == "__main__":
    main()
