"""Exactly once under SIGKILL on a real Exim and a real Sendmail (Debian's packages, unpacked privately): the agent
releases natively (exim -Mt + -M; sendmail -qQ -Q + -qf -qI) and purges, killed at random points and restarted,
until its receipt is written; the sink counts every delivery."""

from __future__ import annotations

import os
import sys
import time

import pytest

from agent.journal import Journal
from agent.mta.exim import EximQueue
from agent.mta.sendmail import SendmailQueue
from agent.take import take
from agent.upload import parse_destination
from pipeline.instructions import Receipt
from pipeline.queues import receipt_key
from pipeline.store import LocalChannel, LocalStore
from spoolsweep.lab import exim as lab_exim
from spoolsweep.lab import sendmail as lab_sendmail
from tests.support import agent as support
from tests.support.agent import approved, instruction, real_messages, signed_body
from tests.test_agent_sigkill import kill_until_done

keys, mail_corpus, sink = support.keys, support.mail_corpus, support.sink
INC, HOST = "inc-kill-mta", "mx1"
N, N_REPLAY = 150, 110


def _run_and_kill(tmp_path, keys, sink, q, mta_args: list[str], queued, tag: str, iid: str, relay_to,
                  left=lambda: "") -> list[int]:
    """Snapshot, approve the first N_REPLAY for replay and the rest for purge, kill the agent until it is done."""
    state, store = tmp_path / "state", tmp_path / "store"
    journal = Journal(state / "journal.sqlite")
    take(q, mta_args[1], parse_destination(None, store, INC, HOST), journal, state)
    journal.close()
    qms = list(q.list())
    assert len(qms) == N
    by_mid = {support.Received("", [], q.content(qm)).message_id: qm for qm in qms}
    rep = [by_mid[f"<{tag}-{i}@spoolsweep.test>"] for i in range(N_REPLAY)]
    pur = [by_mid[f"<{tag}-{i}@spoolsweep.test>"] for i in range(N_REPLAY, N)]
    relay_to(sink.port)
    LocalChannel(store / "channel").send(
        HOST, signed_body(instruction(INC, HOST, approved(rep), approved(pur), iid=iid), keys.private), iid)
    cmd = [sys.executable, "-m", "spoolsweep", "agent", "run", *mta_args, "--host", HOST, "--state-dir", str(state),
           "--public-key", str(keys.public_file), "--store", str(store), "--once", "--visibility", "1",
           "--rate", "40"]
    lstore = LocalStore(store)
    at_kill = kill_until_done(cmd, lstore, receipt_key(INC, HOST, iid), lambda: N - queued(), seed=17)
    mid = [c for c in at_kill if 0 < c < N]
    assert len(mid) >= 5, f"too few kills landed during the replay: {at_kill}"
    end = time.monotonic() + 30
    while len(sink.received) < N_REPLAY and time.monotonic() < end:
        time.sleep(0.2)
    time.sleep(1)  # a duplicate would arrive now
    got = sink.message_ids()
    dupes = {k: v for k, v in got.items() if v > 1}
    assert not dupes, f"delivered twice: {dupes}"
    want = {f"<{tag}-{i}@spoolsweep.test>" for i in range(N_REPLAY)}
    r = Receipt.model_validate_json(lstore.get(receipt_key(INC, HOST, iid)))
    assert set(got) == want, (f"missing {sorted(want - set(got))[:5]}, unexpected {sorted(set(got) - want)[:5]}; "
                              f"still queued {queued()}: {left()}; receipt {r.counts()}; kills {at_kill}")
    r = Receipt.model_validate_json(lstore.get(receipt_key(INC, HOST, iid)))
    assert r.counts()["replayed"] == N_REPLAY and r.counts()["purged"] == N - N_REPLAY, r.counts()
    assert queued() == 0, "replayed and purged mail is gone from the queue"
    print(f"\n{len(at_kill)} kills; messages out of the queue at each: {at_kill}")
    return at_kill


@pytest.mark.slow
@pytest.mark.exim
def test_sigkill_exim_release_exactly_once(tmp_path, mail_corpus, keys, sink):
    if why := lab_exim.available():
        pytest.skip(why)
    with lab_exim.private_exim() as ex:
        for sender, rcpts, data in real_messages(mail_corpus, N, tag="ek"):
            ex.send_smtp(sender, rcpts, data)
        q = EximQueue(command=[str(ex.wrapper), "-C", str(ex.conf)])

        def queued() -> int:  # messages still in the spool (frozen, or thawed and not yet delivered)
            return sum(1 for n in os.listdir(ex.spool / "input") if n.endswith("-H"))

        _run_and_kill(tmp_path, keys, sink, q, ["--mta", "exim", "--exim", str(ex.wrapper), "--exim-config",
                                                str(ex.conf)], queued, "ek", "eximkill", ex.relay_to)


@pytest.mark.slow
@pytest.mark.sendmail
def test_sigkill_sendmail_release_exactly_once(tmp_path, mail_corpus, keys, sink):
    if why := lab_sendmail.available():
        pytest.skip(why)
    with lab_sendmail.private_sendmail() as sm:
        for sender, rcpts, data in real_messages(mail_corpus, N, tag="sk"):
            sm.send_smtp(sender, rcpts, data)
        q = SendmailQueue(command=sm.argv())

        def queued() -> int:  # control files left: quarantined (hf) or released and not yet delivered (qf)
            return sum(1 for n in os.listdir(sm.queue) if n.startswith(("hf", "qf")))

        def left() -> str:
            return " ".join(repr(p.read_bytes()[:160]) for p in sm.queue.iterdir() if p.name.startswith(("hf", "qf")))

        _run_and_kill(tmp_path, keys, sink, q, ["--mta", "sendmail", "--sendmail", str(sm.wrapper)], queued, "sk",
                      "smkill", sm.relay_to, left)
