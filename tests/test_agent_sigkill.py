"""Exactly once under SIGKILL: kill the agent at random points of a replay, restart it, count what arrived."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.journal import Journal
from agent.mta.pickup import PickupQueue
from agent.take import take
from agent.upload import parse_destination
from pipeline.instructions import Receipt
from pipeline.queues import receipt_key
from pipeline.store import LocalChannel, LocalStore
from tests.support import agent as support
from tests.support.agent import approved, instruction, real_messages, signed_body, write_pickup

# the shared fixtures, bound here so pytest finds them
keys, mail_corpus, sink = support.keys, support.mail_corpus, support.sink

ROOT = Path(__file__).resolve().parent.parent
INC, HOST = "inc-kill", "mx1"


def kill_until_done(cmd: list[str], store: LocalStore, key: str, progress: Callable[[], int], seed: int,
                    kills: int = 8, max_runs: int = 30) -> list[int]:
    """Start the agent and SIGKILL it, again and again, then let it finish; returns `progress()` at each kill.

    The first kill lands at a random moment of start-up or planning; the others once the replay has moved
    on by a random few messages, plus a random fraction of a message's handling, so they hit every step.
    """
    rng = random.Random(seed)
    at_kill: list[int] = []
    for run in range(max_runs):
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        target = progress() + rng.randint(3, 30)
        started = time.monotonic()
        first_kill = rng.uniform(0.1, 0.5)
        killed = False
        while p.poll() is None and time.monotonic() - started < 120:
            due = progress() >= target if run else time.monotonic() - started >= first_kill
            if len(at_kill) < kills and due:
                time.sleep(rng.uniform(0, 0.01))
                os.kill(p.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.002)
        out, err = p.communicate(timeout=120)
        if killed:
            at_kill.append(progress())
            continue
        assert p.returncode == 0, err.decode()
        if store.exists(key):
            return at_kill
        time.sleep(1.1)  # the channel's visibility timeout, if a kill left the instruction leased
    raise AssertionError(f"the agent did not finish in {max_runs} runs")


@pytest.mark.slow
def test_sigkill_smtp_replay_exactly_once(tmp_path, mail_corpus, keys, sink):
    n, n_replay = 300, 200
    out = tmp_path / "Out"
    write_pickup(out, real_messages(mail_corpus, n, tag="k"))
    state = tmp_path / "state"
    take(PickupQueue(out), "pickup-dir", parse_destination(None, tmp_path / "store", INC, HOST),
         Journal(state / "journal.sqlite"), state)
    qms = list(PickupQueue(out).list())
    # the replay half gets the ids the sink will count; real_messages numbered them in file order
    rep, pur = approved(qms[:n_replay]), approved(qms[n_replay:])
    LocalChannel(tmp_path / "store" / "channel").send(
        HOST, signed_body(instruction(INC, HOST, rep, pur, iid="killme"), keys.private), "killme")
    cmd = [sys.executable, "-m", "spoolsweep", "agent", "run", "--mta", "pickup-dir", "--dir", str(out),
           "--host", HOST, "--state-dir", str(state), "--public-key", str(keys.public_file),
           "--store", str(tmp_path / "store"), "--deliver", f"smtp://127.0.0.1:{sink.port}", "--once",
           "--visibility", "1"]
    store = LocalStore(tmp_path / "store")
    at_kill = kill_until_done(cmd, store, receipt_key(INC, HOST, "killme"), lambda: len(sink.received), seed=5)
    mid = [c for c in at_kill if 0 < c < n_replay]
    assert len(mid) >= 5, f"too few kills landed during the replay: {at_kill}"
    got = sink.message_ids()
    want = {f"<k-{i}@spoolsweep.test>" for i in range(n_replay)}
    dupes = {k: v for k, v in got.items() if v > 1}
    assert not dupes, f"delivered twice: {dupes}"
    assert set(got) == want, f"missing {sorted(want - set(got))[:5]}, unexpected {sorted(set(got) - want)[:5]}"
    assert not any((tmp_path / "Out.old").iterdir()), "purged and replayed mail is gone from the frozen queue"
    r = Receipt.model_validate_json(store.get(receipt_key(INC, HOST, "killme")))
    assert r.counts()["replayed"] == n_replay and r.counts()["purged"] == n - n_replay
    print(f"\n{len(at_kill)} kills, sink count at each: {at_kill}")
