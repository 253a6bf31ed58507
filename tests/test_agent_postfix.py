"""The agent against a real private Postfix: freeze with postsuper -h, snapshot, release or re-inject into an
aiosmtpd sink, purge; and exactly once when the agent is SIGKILLed during a release."""

from __future__ import annotations

import hashlib
import logging
import sys
import time

import pytest

from agent.journal import Journal
from agent.mta.postfix import PostfixQueue
from agent.mta.smtp import SmtpDeliverer
from agent.runner import Agent
from agent.take import take
from agent.upload import parse_destination
from pipeline.instructions import Receipt
from pipeline.policy import Limits
from pipeline.queues import receipt_key
from pipeline.readers import read_snapshot
from pipeline.store import LocalChannel, LocalStore
from tests.support import agent as support
from tests.support.agent import approved, instruction, real_messages, signed_body
from tests.support.postfix import PostfixInstance, available, private_postfix
from tests.test_agent_sigkill import kill_until_done

keys, mail_corpus, sink = support.keys, support.mail_corpus, support.sink
pytestmark = pytest.mark.postfix
INC, HOST = "inc-pf", "mx1"


@pytest.fixture
def pf():
    if why := available():
        pytest.skip(why)
    with private_postfix(users={}) as p:
        yield p


def flood(pf: PostfixInstance, msgs) -> None:
    for sender, rcpts, data in msgs:
        pf.send(sender, rcpts, data)
    pf.wait_queued(len(msgs))


def relay_to(pf: PostfixInstance, port: int) -> None:
    pf.run("/usr/sbin/postconf", "-c", str(pf.etc), "-e", f"relayhost = [127.0.0.1]:{port}")
    pf.run("/usr/sbin/postfix", "-c", str(pf.etc), "reload")
    time.sleep(0.5)


def wait_for(sink, n: int, pf: PostfixInstance, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and len(sink.received) < n:
        pf.run("/usr/sbin/postqueue", "-c", str(pf.etc), "-f", check=False)
        time.sleep(0.5)
    time.sleep(1.0)  # anything more (a duplicate) would arrive now


def body_of(data: bytes) -> bytes:
    """The message without the trace headers Postfix adds on the way in (Received:), LF line ends."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    while lines and (lines[0].startswith(b"Received:") or (lines[0][:1] in (b" ", b"\t"))):
        lines.pop(0)
    return b"\n".join(lines)


def snapshot_postfix(pf, tmp_path, msgs) -> tuple[PostfixQueue, Journal, LocalStore, list]:
    flood(pf, msgs)
    q = PostfixQueue(pf.etc)
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    s = take(q, "postfix", parse_destination(None, tmp_path / "store", INC, HOST), journal, tmp_path / "state")
    assert s.messages == len(msgs)
    assert {m["queue_name"] for m in pf.postqueue_json()} == {"hold"}
    return q, journal, LocalStore(tmp_path / "store"), list(q.list())


@pytest.mark.parametrize("deliver", ["native", "smtp"])
def test_postfix_freeze_snapshot_replay_purge(pf, tmp_path, mail_corpus, keys, sink, deliver):
    msgs = real_messages(mail_corpus, 30, tag=f"pf{deliver}")
    q, journal, store, qms = snapshot_postfix(pf, tmp_path, msgs)
    # new mail keeps flowing: it is not held
    pf.send("late@example.net", ["x@example.com"], b"Subject: late\r\nMessage-ID: <late@t>\r\n\r\nlate\r\n")
    time.sleep(0.5)
    assert sum(1 for m in pf.postqueue_json() if m["queue_name"] != "hold") == 1
    # the snapshot's digests are the queue's RFC 822 bytes, as the pipeline's reader and postcat see them
    snap = tmp_path / "store" / "incoming" / INC / HOST / "snapshot.tar.zst"
    _, found, _ = read_snapshot(snap, Limits())
    found = {f.raw.envelope.queue_id: f for f in found}
    for qm in qms:
        assert found[qm.queue_id].sha256 == qm.sha256
        assert hashlib.sha256(pf.postcat_bytes(qm.queue_id, "-bh")).hexdigest() == qm.sha256
        assert found[qm.queue_id].raw.envelope.rcpt_to == qm.envelope.rcpt_to != []
        assert found[qm.queue_id].raw.defects == [] == qm.defects  # Postfix's own queue files: no defect
    by_mid = {support.Received("", [], q.content(qm)).message_id: qm for qm in qms}
    rep = [by_mid[f"<pf{deliver}-{i}@spoolsweep.test>"] for i in range(20)]
    pur = [by_mid[f"<pf{deliver}-{i}@spoolsweep.test>"] for i in range(20, 30)]
    originals = {qm.queue_id: q.content(qm) for qm in rep}
    relay_to(pf, sink.port)
    d = SmtpDeliverer("127.0.0.1", pf.port) if deliver == "smtp" else None
    agent = Agent(host=HOST, queue=q, journal=journal, store=store, public_key_pem=keys.public, deliverer=d,
                  quarantine=tmp_path / "quarantine")
    r = agent.handle(signed_body(instruction(INC, HOST, approved(rep), approved(pur)), keys.private))
    assert r.counts()["replayed"] == 20 and r.counts()["purged"] == 10, r.items
    wait_for(sink, 21, pf)
    got = sink.message_ids()
    want = {f"<pf{deliver}-{i}@spoolsweep.test>" for i in range(20)} | {"<late@t>"}
    assert set(got) == want and set(got.values()) == {1}
    by_id = {x.message_id: x for x in sink.received}
    for qm in rep:
        orig = originals[qm.queue_id]
        mid = support.Received("", [], orig).message_id
        assert body_of(by_id[mid].data) == body_of(orig), "byte for byte apart from trace headers"
        assert sorted(by_id[mid].rcpt_tos) == sorted(qm.envelope.rcpt_to)
    assert pf.postqueue_json() == [], "no spam left in any queue"
    assert len(list((tmp_path / "quarantine").glob("*.eml"))) == 10


@pytest.mark.slow
def test_sigkill_postfix_release_exactly_once(pf, tmp_path, mail_corpus, keys, sink):
    n, n_replay = 200, 150
    q, journal, store, qms = snapshot_postfix(pf, tmp_path, real_messages(mail_corpus, n, tag="pk"))
    by_mid = {support.Received("", [], q.content(qm)).message_id: qm for qm in qms}
    rep = [by_mid[f"<pk-{i}@spoolsweep.test>"] for i in range(n_replay)]
    pur = [by_mid[f"<pk-{i}@spoolsweep.test>"] for i in range(n_replay, n)]
    journal.close()
    relay_to(pf, sink.port)
    LocalChannel(tmp_path / "store" / "channel").send(
        HOST, signed_body(instruction(INC, HOST, approved(rep), approved(pur), iid="pfkill"), keys.private), "pfkill")
    cmd = [sys.executable, "-m", "spoolsweep", "agent", "run", "--mta", "postfix", "--postfix-config", str(pf.etc),
           "--host", HOST, "--state-dir", str(tmp_path / "state"), "--public-key", str(keys.public_file),
           "--store", str(tmp_path / "store"), "--once", "--visibility", "1", "--batch", "7",
           # paced, so the replay lasts long enough for the kills to land in it on a fast machine too
           "--rate", "60"]
    def done() -> int:  # messages no longer on hold: released or purged
        return n - sum(1 for m in pf.postqueue_json() if m["queue_name"] == "hold")

    at_kill = kill_until_done(cmd, store, receipt_key(INC, HOST, "pfkill"), done, seed=11)
    mid = [c for c in at_kill if 0 < c < n]
    assert len(mid) >= 5, f"too few kills landed during the replay: {at_kill}"
    wait_for(sink, n_replay, pf)
    got = sink.message_ids()
    dupes = {k: v for k, v in got.items() if v > 1}
    assert not dupes, f"delivered twice: {dupes}"
    assert set(got) == {f"<pk-{i}@spoolsweep.test>" for i in range(n_replay)}
    assert pf.postqueue_json() == []
    r = Receipt.model_validate_json(store.get(receipt_key(INC, HOST, "pfkill")))
    assert r.counts()["replayed"] == n_replay and r.counts()["purged"] == n - n_replay
    print(f"\n{len(at_kill)} kills; messages off hold at each: {at_kill}")


def test_postfix_dry_run_changes_nothing(pf, tmp_path, mail_corpus):
    flood(pf, real_messages(mail_corpus, 3, tag="dry"))
    j = Journal(tmp_path / "j.sqlite")
    s = take(PostfixQueue(pf.etc), "postfix", parse_destination(None, tmp_path / "store", INC, HOST), j,
             tmp_path, dry_run=True)
    assert s.dry_run and s.messages == 3 and "would put 3 messages" in s.froze
    assert "hold" not in {m["queue_name"] for m in pf.postqueue_json()}
    assert not (tmp_path / "store").exists() and j.snapshot(INC, HOST) is None




def test_a_damaged_queue_file_goes_into_the_snapshot_with_its_defects(pf, tmp_path, mail_corpus):
    # The agent read its hold files with the pipeline's own Postfix reader and kept the bytes and envelope, not
    # what the reader found wrong: a queue file cut short went into the snapshot as a whole, clean message,
    # where the reader of a spool tarball holds it for review.
    flood(pf, real_messages(mail_corpus, 2, tag="cut"))
    q = PostfixQueue(pf.etc)
    damaged: list[str] = []

    def say(line: str) -> None:  # once frozen, before the pack: a hold file loses its end
        if line.startswith("froze"):
            path = next(q._hold_files())
            data = path.read_bytes()
            path.write_bytes(data[: len(data) - 40])  # the end record with it
            damaged.append(path.name)

    journal = Journal(tmp_path / "state" / "journal.sqlite")
    s = take(q, "postfix", parse_destination(None, tmp_path / "store", INC, HOST), journal, tmp_path / "state",
             say=say)
    assert s.messages == 2 and s.notes == ["1 of the 2 messages packed come from queue files the reader found "
                                           "damaged: their defects go with them, and triage holds them for review"]
    _fmt, found, _report = read_snapshot(tmp_path / "store/incoming" / INC / HOST / "snapshot.tar.zst", Limits())
    defects = {f.raw.envelope.queue_id: f.raw.defects for f in found}
    assert len(defects) == 2 and any(d.startswith("truncated") for d in defects[damaged[0]])
    assert all(not d for qid, d in defects.items() if qid != damaged[0])


def test_a_frozen_message_left_out_of_the_snapshot_is_said(pf, tmp_path, mail_corpus):
    # A message gone from the hold queue between the freeze and the pack (deleted by the admin meanwhile, say):
    # the summary said "froze 3" and "packed 2" with nothing between them.
    flood(pf, real_messages(mail_corpus, 3, tag="gap"))
    q = PostfixQueue(pf.etc)
    journal = Journal(tmp_path / "state" / "journal.sqlite")

    def say(line: str) -> None:
        if line.startswith("froze"):
            next(q._hold_files()).unlink()

    s = take(q, "postfix", parse_destination(None, tmp_path / "store", INC, HOST), journal, tmp_path / "state",
             say=say)
    assert s.messages == 2
    assert s.notes == ["1 of the 3 messages frozen are not in the snapshot: released or deleted since, or refused "
                       "by the queue's reader (the log names those); triage never sees them"]


def test_a_hold_file_postcat_cannot_read_is_named_not_skipped_silently(pf, tmp_path, mail_corpus, caplog):
    # Without the native reader the agent reads hold files with postcat; a file postcat failed on was skipped
    # as if the admin had released it meanwhile, with no line naming it.
    flood(pf, real_messages(mail_corpus, 3, tag="postcat"))
    q = PostfixQueue(pf.etc)
    q._parse = None
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    spoiled: list[str] = []

    def say(line: str) -> None:
        if line.startswith("froze"):
            path = next(q._hold_files())
            path.write_bytes(b"\x00not a queue file\n" * 4)
            spoiled.append(path.name)

    with caplog.at_level(logging.WARNING, "spoolsweep.agent"):
        s = take(q, "postfix", parse_destination(None, tmp_path / "store", INC, HOST), journal,
                 tmp_path / "state", say=say)
    assert s.messages == 2
    named = [r.getMessage() for r in caplog.records if spoiled[0] in r.getMessage()]
    assert len(named) == 1 and "\n" not in named[0]
    assert named[0].startswith(f"skipped in the hold queue: {spoiled[0]}: The MTA command failed: postcat -bh")
    assert any(n.startswith("1 of the 3 messages frozen are not in the snapshot") for n in s.notes)
