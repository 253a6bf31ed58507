"""The agent against a real Sendmail from Debian's packages (unpacked, not installed): quarantine with -Q, snapshot
the hf/df pairs, release with -qQ -Q + -qf -qI into an aiosmtpd sink, purge (quarantined first), re-inject over SMTP
through the courier, refuse a message whose bytes changed since review."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.journal import Journal
from agent.mta.base import QueuedMessage
from agent.mta.sendmail import SendmailQueue
from agent.runner import Agent
from agent.safefs import UnsafePath
from agent.take import take
from agent.upload import parse_destination
from pipeline.instructions import Receipt
from pipeline.models import Envelope
from pipeline.policy import Limits
from pipeline.queues import receipt_key
from pipeline.readers import read_snapshot
from pipeline.store import LocalChannel, LocalStore
from spoolsweep.lab.sendmail import available, private_sendmail
from spoolsweep.lab.sink import body_of
from tests.support import agent as support
from tests.support.agent import approved, instruction, real_messages, signed_body

keys, mail_corpus, sink = support.keys, support.mail_corpus, support.sink
pytestmark = pytest.mark.sendmail
ROOT = Path(__file__).resolve().parent.parent
INC, HOST = "inc-sendmail", "mx1"


@pytest.fixture
def sendmail():
    if why := available():
        pytest.skip(why)
    with private_sendmail() as sm:
        yield sm


def flood(sm, corpus, n: int, tag: str) -> list[tuple[str, list[str], bytes]]:
    msgs = real_messages(corpus, n, tag=tag)
    for sender, rcpts, data in msgs:
        sm.send_smtp(sender, rcpts, data)
    return msgs


def wait_for(sink, n: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while len(sink.received) < n and time.monotonic() < end:
        time.sleep(0.1)
    time.sleep(0.5)  # a duplicate would arrive now


def test_sendmail_quarantine_snapshot_release_purge(tmp_path, mail_corpus, keys, sink, sendmail):
    sm = sendmail
    msgs = flood(sm, mail_corpus, 9, "sm")
    q = SendmailQueue(command=sm.argv())
    assert q.queue_dirs == [sm.queue]
    # --dry-run says what it would do and touches nothing
    r = subprocess.run([sys.executable, "-m", "spoolsweep", "agent", "snapshot", "--mta", "sendmail", "--sendmail",
                        str(sm.wrapper), "--to", str(tmp_path / "dry"), "--incident", INC, "--host", HOST,
                        "--state-dir", str(tmp_path / "dry-state"), "--dry-run"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "would quarantine 9 messages" in r.stdout
    assert sum(1 for f in sm.files() if f.startswith("qf")) == 9 and not any(f.startswith("hf") for f in sm.files())

    journal = Journal(tmp_path / "state" / "journal.sqlite")
    s = take(q, "sendmail", parse_destination(None, tmp_path / "store", INC, HOST), journal, tmp_path / "state")
    assert s.messages == 9
    assert sum(1 for f in sm.files() if f.startswith("hf")) == 9, "every message quarantined (hf)"
    assert sm.bp(quarantined=True).count("QUARANTINE: spoolsweep") == 9
    assert "is empty" in sm.bp(), "nothing left for a queue run"
    qms = list(q.list())
    assert sorted(qm.envelope.mail_from for qm in qms) == sorted(m[0] for m in msgs)
    _, found, _ = read_snapshot(tmp_path / "store/incoming" / INC / HOST / "snapshot.tar.zst", Limits())
    found = list(found)
    assert {f.sha256 for f in found} == {qm.sha256 for qm in qms}
    # sendmail's own queue files carry no defect into the snapshot
    assert all(not f.raw.defects for f in found) and all(not qm.defects for qm in qms)
    for qm in qms:
        assert hashlib.sha256(q.content(qm)).hexdigest() == qm.sha256
    # mail that arrives after the freeze flows (it is not quarantined)
    late = sm.send_smtp("late@example.net", ["x@example.org"], b"Subject: late\r\n\r\nafter the freeze\r\n")
    assert f"qf{late}" in sm.files()

    by_mid = {support.Received("", [], q.content(qm)).message_id: qm for qm in qms}
    reviewed = {k: q.content(qm) for k, qm in by_mid.items()}
    assert not any(b"\x81" in c for c in reviewed.values()), "no unexpanded Sendmail macro in what is reviewed"
    rep = [by_mid[f"<sm-{i}@spoolsweep.test>"] for i in range(5)]
    pur = [by_mid[f"<sm-{i}@spoolsweep.test>"] for i in range(5, 8)]
    tampered = by_mid["<sm-8@spoolsweep.test>"]
    df = sm.queue / f"df{tampered.name}"
    df.write_bytes(df.read_bytes() + b"changed after review\n")  # the reviewed digest no longer matches
    sm.relay_to(sink.port)
    agent = Agent(host=HOST, queue=q, journal=journal, store=LocalStore(tmp_path / "store"),
                  public_key_pem=keys.public, quarantine=tmp_path / "quarantine")
    ins = instruction(INC, HOST, approved(rep), approved(pur + [tampered]))
    r = agent.handle(signed_body(ins, keys.private))
    c = r.counts()
    assert c["replayed"] == 5 and c["purged"] == 3 and c["refused"] == 1, r.items
    assert "digest mismatch" in next(i.detail for i in r.items if i.outcome.value == "refused")
    wait_for(sink, 5)
    got = sink.message_ids()
    assert set(got) == {f"<sm-{i}@spoolsweep.test>" for i in range(5)} and set(got.values()) == {1}
    by_id = {f"<sm-{i}@spoolsweep.test>": m for i, m in enumerate(msgs)}
    for rec in sink.received:  # what was reviewed, byte for byte but for the Received: line Sendmail adds on the way
        assert body_of(rec.data) == body_of(reviewed[rec.message_id]), rec.message_id
        assert sorted(rec.rcpt_tos) == sorted(by_id[rec.message_id][1])
        # and the message as it was sent, but for its Return-Path: (a trace field; Sendmail drops it on arrival)
        sent = b"".join(ln for ln in by_id[rec.message_id][2].splitlines(True) if not ln.startswith(b"Return-Path:"))
        assert body_of(rec.data) == body_of(sent)
    # purged mail was copied to the quarantine folder first, byte for byte what was reviewed
    kept = {p.name for p in (tmp_path / "quarantine").glob("*.eml")}
    assert kept == {f"{qm.sha256}.eml" for qm in pur}
    for qm in pur:
        assert hashlib.sha256((tmp_path / "quarantine" / f"{qm.sha256}.eml").read_bytes()).hexdigest() == qm.sha256
    left = sm.files()
    assert left == sorted([f"df{tampered.name}", f"hf{tampered.name}", f"df{late}", f"qf{late}"]), left
    # the receipt is in the store
    assert LocalStore(tmp_path / "store").exists(receipt_key(INC, HOST, "ins1"))
    # the same instruction again is refused, and nothing goes out twice
    again = agent.handle(signed_body(ins, keys.private))
    assert again.refused and "already executed" in again.refused
    time.sleep(0.5)
    assert len(sink.received) == 5


def test_sendmail_smtp_reinjection_through_the_courier(tmp_path, mail_corpus, keys, sink, sendmail):
    """`--deliver smtp://` hands approved mail back to the running Sendmail over SMTP; it relays it to the sink."""
    sm = sendmail
    flood(sm, mail_corpus, 4, "rj")
    store = tmp_path / "store"
    state = tmp_path / "state"
    snap = subprocess.run([sys.executable, "-m", "spoolsweep", "agent", "snapshot", "--mta", "sendmail", "--sendmail",
                           str(sm.wrapper), "--to", str(store), "--incident", INC, "--host", HOST, "--state-dir",
                           str(state)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert snap.returncode == 0, snap.stderr
    q = SendmailQueue(command=sm.argv())
    qms = sorted(q.list(), key=lambda m: support.Received("", [], q.content(m)).message_id or "")
    sm.relay_to(sink.port)
    LocalChannel(store / "channel").send(HOST, signed_body(instruction(INC, HOST, approved(qms[:3]),
                                                                       approved(qms[3:]), iid="rj"), keys.private),
                                         "rj")
    run = subprocess.run([sys.executable, "-m", "spoolsweep", "agent", "run", "--mta", "sendmail", "--sendmail",
                          str(sm.wrapper), "--host", HOST, "--state-dir", str(state), "--store", str(store),
                          "--public-key", str(keys.public_file), "--deliver", f"smtp://127.0.0.1:{sm.port}",
                          "--once", "--wait", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    wait_for(sink, 3)
    assert sorted(sink.message_ids()) == [f"<rj-{i}@spoolsweep.test>" for i in range(3)]
    assert set(sink.message_ids().values()) == {1}
    r = Receipt.model_validate_json(LocalStore(store).get(receipt_key(INC, HOST, "rj")))
    assert r.counts()["replayed"] == 3 and r.counts()["purged"] == 1
    assert all(i.detail.startswith("re-injected: ") and "accepted for delivery" in i.detail
               for i in r.items if i.outcome.value == "replayed"), [i.detail for i in r.items]
    assert not any(f.startswith(("hf", "qf")) for f in sm.files()), "re-injected and purged mail left the queue"
    courier = [json.loads(ln) for ln in (state / "courier.jsonl").read_text().splitlines()]
    assert [c["state"] for c in courier] == ["dot", "ok"] * 3


@pytest.mark.parametrize(("kind", "plant"), [("df", "hardlink"), ("hf", "symlink")])
def test_a_link_planted_in_the_queue_is_refused(tmp_path, sendmail, kind, plant):
    """Whoever writes the queue swaps a frozen message's df (its body) or hf (its envelope and headers) for a link to
    another file: the agent neither snapshots nor releases that file's bytes, and the other messages go on."""
    sm = sendmail
    qid = sm.send_smtp("a@example.net", ["b@example.org"], b"Subject: s\r\nMessage-ID: <linked@x>\r\n\r\nbody\r\n")
    other = sm.send_smtp("a@example.net", ["b@example.org"], b"Subject: t\r\nMessage-ID: <clean@x>\r\n\r\nok\r\n")
    q = SendmailQueue(command=sm.argv())
    q.freeze()
    victim = sm.queue / f"{kind}{qid}"
    secret = sm.root / "secret"  # beside the queue, on its file system (a hard link cannot cross one)
    secret.write_bytes(victim.read_bytes().replace(b"<linked@x>", b"<SECRET@x>") if kind == "hf" else b"SECRET\n")
    victim.unlink()
    (victim.symlink_to if plant == "symlink" else victim.hardlink_to)(secret)
    assert [m.queue_id for m in q.list()] == [other], "the planted file is left out of the snapshot"
    with pytest.raises(UnsafePath):
        q.locate(qid, qid)
    q.remove(QueuedMessage(qid, qid, Envelope(), "", 0))  # a purge unlinks the link, never its target
    assert secret.read_bytes().count(b"SECRET") == 1 and not victim.is_symlink() and not victim.exists()


def test_qI_substring_clash_is_refused():
    """`sendmail -qI` matches substrings: a release must not also reach a quarantined message whose id holds ours."""
    from agent.errors import MtaError

    with pytest.raises(MtaError, match="part of another queued id"):
        SendmailQueue._unique(["6B1M5bE3012952"], {"6B1M5bE3012952", "6B1M5bE30129521"})
    assert SendmailQueue._unique(["6B1M5bE3012952"], {"6B1M5bE3012952", "6B1M5bE3012953"}) == ["6B1M5bE3012952"]
