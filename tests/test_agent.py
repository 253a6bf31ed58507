"""The agent with real parts: pickup folders, SMTP re-injection into an aiosmtpd sink, hostile instructions."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.errors import SnapshotExists
from agent.journal import Journal
from agent.mta.pickup import PickupQueue
from agent.mta.smtp import SmtpDeliverer
from agent.runner import Agent
from agent.take import take
from agent.upload import parse_destination
from pipeline.instructions import ApprovedMessage, Receipt, SignedInstruction, canonical_json
from pipeline.policy import Limits
from pipeline.queues import receipt_key
from pipeline.readers import read_snapshot
from pipeline.readers.eml import split_iis_envelope
from pipeline.store import LocalChannel, LocalStore
from tests.support import agent as support
from tests.support.agent import approved, forged_body, instruction, real_messages, signed_body, write_pickup

# the shared fixtures, bound here so pytest finds them
keys, mail_corpus, sink = support.keys, support.mail_corpus, support.sink

ROOT = Path(__file__).resolve().parent.parent
INC, HOST = "inc-2026-11-28", "mx1"


def _norm(b: bytes) -> bytes:
    return b.replace(b"\r\n", b"\n")


@pytest.fixture
def frozen(tmp_path, mail_corpus):
    """A pickup folder of 40 real messages, frozen and snapshotted into a local store."""
    out = tmp_path / "Out"
    msgs = real_messages(mail_corpus, 40)
    write_pickup(out, msgs)
    store_root = tmp_path / "store"
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    q = PickupQueue(out)
    s = take(q, "pickup-dir", parse_destination(None, store_root, INC, HOST), journal, tmp_path / "state")
    return q, journal, LocalStore(store_root), s, msgs


def make_agent(q, journal, store, keys, sink=None, **kw) -> Agent:
    d = SmtpDeliverer("127.0.0.1", sink.port) if sink is not None else None
    return Agent(host=HOST, queue=q, journal=journal, store=store, public_key_pem=keys.public, deliverer=d, **kw)


def test_snapshot_freezes_packs_and_refuses_a_second(frozen, tmp_path):
    q, journal, store, s, msgs = frozen
    assert (tmp_path / "Out").is_dir() and not any((tmp_path / "Out").iterdir()), "new mail must keep flowing"
    assert len(list((tmp_path / "Out.old").iterdir())) == 40
    assert s.messages == 40 and s.archive is None, "the local copy goes once the upload is confirmed"
    path = Path(s.destination)
    assert path == tmp_path / "store/incoming" / INC / HOST / "snapshot.tar.zst"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == s.archive_sha256
    fmt, found, report = read_snapshot(path, Limits())
    found = list(found)
    assert fmt == "canonical" and len(found) == 40 and not report.defects
    by_digest = {hashlib.sha256(split_iis_envelope(f.read_bytes())[1]).hexdigest() for f in q.aside.iterdir()}
    assert {f.sha256 for f in found} == by_digest
    assert all(not f.raw.defects for f in found)
    assert {f.raw.envelope.mail_from for f in found} == {m[0] for m in msgs}
    with pytest.raises(SnapshotExists):
        take(q, "pickup-dir", parse_destination(None, tmp_path / "store", INC, HOST), journal, tmp_path / "state")
    # another agent (fresh journal) is refused too: the store already holds the incident's snapshot
    with pytest.raises(SnapshotExists):
        take(q, "pickup-dir", parse_destination(None, tmp_path / "store", INC, HOST),
             Journal(tmp_path / "other.sqlite"), tmp_path / "state2")


def test_a_pickup_file_that_is_no_message_goes_into_the_snapshot_with_its_defect(tmp_path, mail_corpus):
    # The spool reader says of a pickup file with no header at its top "maybe not a message"; the agent's pickup
    # adapter said nothing, and the snapshot held it as a clean message.
    out = tmp_path / "Out"
    write_pickup(out, real_messages(mail_corpus, 2))
    (out / "NTFS_0000000F.EML").write_bytes(b"x-sender: a@example.net\r\nx-receiver: b@example.org\r\n\x00\x01junk")
    s = take(PickupQueue(out), "pickup-dir", parse_destination(None, tmp_path / "store", INC, HOST),
             Journal(tmp_path / "state" / "journal.sqlite"), tmp_path / "state")
    assert s.messages == 3 and s.notes == ["1 of the 3 messages packed come from queue files the reader found "
                                           "damaged: their defects go with them, and triage holds them for review"]
    _fmt, found, _report = read_snapshot(Path(s.destination), Limits())
    defects = {f.raw.path: f.raw.defects for f in found}
    assert defects.pop("messages/NTFS_0000000F.EML") == ["does not start with a header; maybe not a message"]
    assert list(defects.values()) == [[], []]


def test_an_aside_folder_left_by_an_earlier_snapshot_is_not_taken_for_this_ones(tmp_path, mail_corpus):
    # The pickup folder is frozen by moving it to Out.old. An Out.old left by an earlier incident (emptied by its
    # replay and purge) was taken for this snapshot's own, cut short: the snapshot packed it (0 messages, "already
    # moved aside") while the queue in Out went on unfrozen and unread.
    from agent.errors import FreezeError

    out = tmp_path / "Out"
    write_pickup(out, real_messages(mail_corpus, 3))
    (tmp_path / "Out.old").mkdir()  # what a finished incident leaves
    s = take(PickupQueue(out), "pickup-dir", parse_destination(None, tmp_path / "store", "inc-b", HOST),
             Journal(tmp_path / "state" / "journal.sqlite"), tmp_path / "state")
    assert s.messages == 3 and s.froze == f"moved {out} to {tmp_path / 'Out.old'}"
    assert not any(out.iterdir()) and len(list((tmp_path / "Out.old").iterdir())) == 3
    # an aside that still holds mail is nobody's to pack or remove: refused, the queue left where it is
    out2 = tmp_path / "Out2"
    write_pickup(out2, real_messages(mail_corpus, 2, tag="b"))
    (tmp_path / "Out2.old").mkdir()
    (tmp_path / "Out2.old" / "left.eml").write_bytes(b"From: a@example.net\r\n\r\nhi\r\n")
    for _attempt in (1, 2):  # the same again is refused again, not taken for the resume of a freeze begun
        with pytest.raises(FreezeError, match="Out2.old exists already and is not an empty folder"):
            take(PickupQueue(out2), "pickup-dir", parse_destination(None, tmp_path / "store", "inc-c", HOST),
                 Journal(tmp_path / "state2" / "journal.sqlite"), tmp_path / "state2")
        assert len(list(out2.iterdir())) == 2 and [p.name for p in (tmp_path / "Out2.old").iterdir()] == ["left.eml"]
        assert not (tmp_path / "store" / "incoming" / "inc-c").exists()


def test_a_store_folder_that_cannot_be_written_is_said_and_the_snapshot_goes_on_to_another(tmp_path, mail_corpus):
    # `agent snapshot --to` a folder that cannot be made ended in a traceback after the freeze and the pack.
    from agent.errors import UploadError

    out = tmp_path / "Out"
    write_pickup(out, real_messages(mail_corpus, 3))
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    with pytest.raises(UploadError, match=r"^The snapshot upload failed; the local copy is kept: /proc/no: No such "
                                          r"file or directory; the queue stays frozen, the copy is .*/mx1-snapshot"
                                          r"\.tar\.zst: run the same command with a --to that can be written"):
        take(PickupQueue(out), "pickup-dir", parse_destination(None, Path("/proc/no/store"), INC, HOST), journal,
             tmp_path / "state")
    s = take(PickupQueue(out), "pickup-dir", parse_destination(None, tmp_path / "store", INC, HOST), journal,
             tmp_path / "state")
    assert s.resumed_from == "packed" and s.messages == 3 and Path(s.destination).is_file()


def test_an_instruction_key_that_is_no_ed25519_public_key_is_refused_at_start(tmp_path, keys):
    # The key was read only when an instruction came: `agent run --once` with any file as --public-key exited 0,
    # and a long-running agent would have refused every instruction it was ever sent.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from agent.errors import AgentError

    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    q, journal, store = PickupQueue(tmp_path / "Out"), Journal(tmp_path / "j.sqlite"), LocalStore(tmp_path / "s")
    for pem, why in ((b"not a key", "not a public key in PEM form"), (keys.private, "not a public key in PEM form"),
                     (rsa_pub, "an RSA public key, not an Ed25519 one")):
        with pytest.raises(AgentError, match=f"the instruction key: {why}"):
            Agent(host=HOST, queue=q, journal=journal, store=store, public_key_pem=pem)
    Agent(host=HOST, queue=q, journal=journal, store=store, public_key_pem=keys.public)
    (tmp_path / "Out").mkdir()
    (tmp_path / "k.pem").write_bytes(rsa_pub)
    r = subprocess.run([sys.executable, "-m", "spoolsweep", "agent", "run", "--mta", "pickup-dir", "--dir",
                        str(tmp_path / "Out"), "--public-key", str(tmp_path / "k.pem"), "--store", str(tmp_path / "s"),
                        "--host", HOST, "--state-dir", str(tmp_path / "st"), "--once"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"--public-key {tmp_path / 'k.pem'}: an RSA public key, not an Ed25519 one" in " ".join(r.stderr.split())


def test_a_channel_that_fails_for_a_while_does_not_end_the_agent(tmp_path, keys, caplog, monkeypatch):
    # The long-running agent died on the first error of its channel (a network blip, a throttled SQS queue):
    # it now says so and tries again, waiting longer each time; with --once the error is the command's.
    import threading

    stop = threading.Event()
    waits: list[float] = []
    monkeypatch.setattr(stop, "wait", lambda t=None: waits.append(t) or False)

    class Flaky:
        def __init__(self, fail: int) -> None:
            self.fail, self.calls = fail, 0

        def receive(self, host, max_messages=1, wait_seconds=0.0):
            self.calls += 1
            if self.calls <= self.fail:
                raise ConnectionResetError(104, "Connection reset by peer")
            stop.set()
            return []

        def delete(self, host, receipt):
            raise AssertionError("nothing to delete")

    agent = Agent(host=HOST, queue=PickupQueue(tmp_path / "Out"), journal=Journal(tmp_path / "j.sqlite"),
                  store=LocalStore(tmp_path / "s"), public_key_pem=keys.public)
    ch = Flaky(fail=3)
    with caplog.at_level(logging.WARNING, "spoolsweep.agent"):
        assert agent.run(ch, wait_seconds=0, stop=stop) == []
    assert ch.calls == 4 and waits == [1.0, 2.0, 4.0]
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == "the instruction channel failed ([Errno 104] Connection reset by peer); trying again in 1 s"
    assert len(said) == 3
    with pytest.raises(ConnectionResetError):
        agent.run(Flaky(fail=1), wait_seconds=0, once=True)


def test_a_channel_error_that_waiting_does_not_mend_ends_the_agent(tmp_path, keys, monkeypatch):
    # Access denied, bad or missing credentials: the agent logged a warning a minute for ever while no instruction
    # could reach it. Now they end it, as the command's error (one line, spoolsweep.cli.main); a throttled queue
    # is still waited out.
    import threading

    from botocore.exceptions import ClientError, NoCredentialsError

    def client_error(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": code}}, "ReceiveMessage")

    class Failing:
        def __init__(self, error: BaseException) -> None:
            self.error, self.calls = error, 0

        def receive(self, host, max_messages=1, wait_seconds=0.0):
            self.calls += 1
            if self.calls > 2:
                stop.set()
                return []
            raise self.error

    agent = Agent(host=HOST, queue=PickupQueue(tmp_path / "Out"), journal=Journal(tmp_path / "j.sqlite"),
                  store=LocalStore(tmp_path / "s"), public_key_pem=keys.public)
    for lasting in (client_error("AccessDenied"), client_error("InvalidClientTokenId"), NoCredentialsError()):
        stop = threading.Event()
        monkeypatch.setattr(stop, "wait", lambda t=None: False)
        ch = Failing(lasting)
        with pytest.raises(type(lasting)):
            agent.run(ch, wait_seconds=0, stop=stop)
        assert ch.calls == 1
    stop = threading.Event()
    monkeypatch.setattr(stop, "wait", lambda t=None: False)
    ch = Failing(client_error("ThrottlingException"))
    assert agent.run(ch, wait_seconds=0, stop=stop) == [] and ch.calls == 3


def test_the_agents_queue_readers_keep_what_the_spool_readers_find_wrong(tmp_path):
    # Exim's and Sendmail's adapters read their spool files with the pipeline's readers, then dropped the defects
    # those found (as Postfix's did: tests/test_agent_postfix.py): a damaged message went into the snapshot clean.
    from agent.mta import exim, sendmail
    from pipeline.archive import ArchiveReport, Member
    from pipeline.readers.exim import EximReader

    qid = "1xXOoH-0004xE-30"
    spool = Path(__file__).resolve().parent / "data" / "queues" / "exim"
    h, d = (spool / f"{qid}-H").read_bytes(), (spool / f"{qid}-D").read_bytes()
    assert exim._read_pair(h, d, qid)[2] == []
    longer = d + b"a line the -H file does not count\n"
    data, env, defects = exim._read_pair(h, longer, qid)
    assert defects == ["-H says the body has 1 lines, the -D file has 2"]
    # what the spool's own reader gives for the same two files: the same bytes, envelope and defects
    [found] = EximReader().read(iter([Member(f"input/{qid}-H", h, len(h), 0.0, None, []),
                                      Member(f"input/{qid}-D", longer, len(longer), 0.0, None, [])]), ArchiveReport())
    assert (found.data, found.raw.envelope, found.raw.defects) == (data, env, defects)

    qf = b"V8\nT1795896853\nSfrank@example.org\nRPFD:rcpt@example.org\nHSubject: x\n.\n"
    assert sendmail._read_pair(qf, b"body\n", "q1")[2] == []
    assert sendmail._read_pair(qf[:-2], b"body\n", "q1")[2] == ["truncated: no '.' end line"]


def test_journal_is_wal_and_full_sync(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    assert j.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_journal_phases_are_read_as_phases_and_a_foreign_one_is_refused(tmp_path):
    from agent.errors import JournalError
    from agent.journal import Phase

    j = Journal(tmp_path / "journal.db")
    j.begin("ins1", "inc", "{}", [("m1", "replay", "p", None, "0" * 64, Phase.pending, "")])
    assert j.done_elsewhere("p", "0" * 64, "replay", "ins2") is None
    j.set_phase("ins1", 0, Phase.commit)
    assert [a.phase for a in j.actions("ins1")] == [Phase.commit]
    assert j.done_elsewhere("p", "0" * 64, "replay", "ins2") == "ins1"
    j.db.execute("UPDATE actions SET phase='paused'")  # a journal written by another version
    with pytest.raises(JournalError, match="unknown phase 'paused'"):
        j.actions("ins1")


def test_replay_over_smtp_and_purge(frozen, keys, sink, tmp_path, caplog):
    q, journal, store, _, msgs = frozen
    qms = list(q.list())
    rep, pur = approved(qms[:25]), approved(qms[25:])
    ch = LocalChannel(tmp_path / "channel")
    ch.send(HOST, signed_body(instruction(INC, HOST, rep, pur), keys.private), "ins1")
    agent = make_agent(q, journal, store, keys, sink, quarantine=tmp_path / "quarantine")
    with caplog.at_level(logging.INFO, "spoolsweep.agent"):
        receipts = agent.run(ch, once=True)
    assert [r.counts()["replayed"] for r in receipts] == [25]
    assert receipts[0].counts()["purged"] == 15
    got = sink.message_ids()
    assert sorted(got) == sorted(f"<t-{i}@spoolsweep.test>" for i in range(25)) and set(got.values()) == {1}
    # byte for byte, original envelope
    by_id = {r.message_id: r for r in sink.received}
    for i in range(25):
        r = by_id[f"<t-{i}@spoolsweep.test>"]
        assert _norm(r.data) == _norm(msgs[i][2])
        assert r.mail_from == msgs[i][0] and r.rcpt_tos == msgs[i][1]
    assert not any(q.aside.iterdir()), "replayed and purged mail leaves the frozen queue"
    assert len(list((tmp_path / "quarantine").glob("*.eml"))) == 15
    saved = Receipt.model_validate_json(store.get(receipt_key(INC, HOST, "ins1")))
    assert saved.counts()["replayed"] == 25 and saved.counts()["purged"] == 15
    assert ch.receive(HOST) == [], "the instruction leaves the channel once its receipt is written"
    assert "instruction ins1 finished" in caplog.text


def test_pickup_native_release_writes_x_sender_lines(frozen, keys, tmp_path):
    q, journal, store, _, msgs = frozen
    pickup = tmp_path / "Pickup"
    pickup.mkdir()
    q.pickup, q.staging = pickup, tmp_path / ".Pickup.staging"
    qms = list(q.list())[:5]
    agent = make_agent(q, journal, store, keys)
    r = agent.handle(signed_body(instruction(INC, HOST, approved(qms), []), keys.private))
    assert r.counts()["replayed"] == 5
    files = sorted(pickup.iterdir())
    assert len(files) == 5
    for f in files:
        raw = f.read_bytes()
        assert raw.startswith(b"X-Sender: sender")
        env, body = split_iis_envelope(raw)
        assert env is not None and env.rcpt_to
        assert hashlib.sha256(body).hexdigest() in {qm.sha256 for qm in qms}
    assert not any(q.staging.iterdir())


# -- hostile and broken instructions ---------------------------------------------------------------

def _hostile(kind: str, qms, keys, q) -> str:
    good = approved(qms[:3]), approved(qms[3:5])
    if kind == "forged":
        return forged_body(instruction(INC, HOST, *good))
    if kind == "other host":
        return signed_body(instruction(INC, "mx2", *good), keys.private)
    if kind == "expired":
        return signed_body(instruction(INC, HOST, *good, issued=datetime.now(UTC) - timedelta(days=3), ttl=60),
                           keys.private)
    if kind == "unknown incident":
        return signed_body(instruction("inc-never-seen", HOST, *good), keys.private)
    if kind == "malformed body":
        return '{"payload": 3, "signature": "'
    if kind == "malformed payload":
        import base64

        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        payload = '{"instruction_id": "x", "replay": "everything"}'
        sig = load_pem_private_key(keys.private, None).sign(payload.encode())
        signed = SignedInstruction(payload=payload, signature=base64.b64encode(sig).decode(), key_id="k")
        return signed.model_dump_json()
    if kind == "tampered payload":
        body = SignedInstruction.model_validate_json(signed_body(instruction(INC, HOST, *good), keys.private))
        ins = instruction(INC, HOST, approved(qms[:5]), [])  # turns the purge into a replay
        return body.model_copy(update={"payload": canonical_json(ins)}).model_dump_json()
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["forged", "other host", "expired", "unknown incident", "malformed body",
                                  "malformed payload", "tampered payload"])
def test_hostile_instruction_is_refused_and_touches_nothing(kind, frozen, keys, sink, caplog):
    q, journal, store, _, _ = frozen
    qms = list(q.list())
    before = sorted(p.name for p in q.aside.iterdir())
    agent = make_agent(q, journal, store, keys, sink)
    with caplog.at_level(logging.WARNING, "spoolsweep.agent"):
        r = agent.handle(_hostile(kind, qms, keys, q))
    assert r.refused and not r.items
    expect = {"forged": "bad signature", "other host": "it is for host 'mx2'", "expired": "expired at",
              "unknown incident": "unknown incident", "malformed body": "malformed instruction",
              "malformed payload": "malformed payload", "tampered payload": "bad signature"}[kind]
    assert expect in r.refused
    assert expect in caplog.text
    assert sink.received == []
    assert sorted(p.name for p in q.aside.iterdir()) == before
    keys_written = [k for k in store.list("receipts/") if ".refused-" in k]
    assert len(keys_written) == 1
    assert Receipt.model_validate_json(store.get(keys_written[0])).refused == r.refused


def test_replayed_instruction_is_refused(frozen, keys, sink):
    q, journal, store, _, _ = frozen
    qms = list(q.list())
    body = signed_body(instruction(INC, HOST, approved(qms[:3]), approved(qms[3:4])), keys.private)
    agent = make_agent(q, journal, store, keys, sink)
    assert agent.handle(body).counts()["replayed"] == 3
    r = agent.handle(body)
    assert r.refused and "already executed" in r.refused
    assert len(sink.received) == 3
    # the receipt of the real run is kept, the refusal is written beside it
    assert Receipt.model_validate_json(store.get(receipt_key(INC, HOST, "ins1"))).refused is None
    # a new instruction (another id) naming the same messages does not replay them twice
    r2 = agent.handle(signed_body(instruction(INC, HOST, approved(qms[:3]), [], iid="ins2"), keys.private))
    assert {i.outcome.value for i in r2.items} == {"refused"} and "already replayed" in r2.items[0].detail
    assert len(sink.received) == 3


def test_digest_mismatch_and_unknown_id_touch_nothing_for_them(frozen, keys, sink, caplog):
    q, journal, store, _, _ = frozen
    qms = list(q.list())
    changed = qms[0]
    changed.source.write_bytes(changed.source.read_bytes() + b"\r\nappended after review\r\n")
    purge_changed = qms[1]
    purge_changed.source.write_bytes(purge_changed.source.read_bytes().replace(b"x-sender", b"x-sender", 1) + b"!")
    ghost = ApprovedMessage(id="ghost", path="messages/NTFS_DEADBEEF.EML", sha256="0" * 64, queue_id=None)
    rep = [*approved([changed]), ghost, *approved(qms[2:4])]
    body = signed_body(instruction(INC, HOST, rep, approved([purge_changed])), keys.private)
    agent = make_agent(q, journal, store, keys, sink)
    with caplog.at_level(logging.WARNING, "spoolsweep.agent"):
        r = agent.handle(body)
    out = {i.id: (i.outcome.value, i.detail) for i in r.items}
    assert out[rep[0].id][0] == "refused" and "digest mismatch" in out[rep[0].id][1]
    assert out["ghost"][0] == "missing"
    purged_id = approved([purge_changed])[0].id
    assert out[purged_id][0] == "refused"
    assert changed.source.exists() and purge_changed.source.exists(), "a changed message is left untouched"
    assert len(sink.received) == 2
    assert "digest mismatch" in caplog.text


@pytest.mark.slow
def test_agent_install_stays_light(tmp_path):
    """The agent's modules and `spoolsweep agent` import without scikit-learn, mail-parser, boto3, starlette."""
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('sklearn', 'mailparser', 'boto3', 'botocore', 'starlette', 'numpy'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
sys.argv = ['spoolsweep', 'agent', 'snapshot', '--mta', 'pickup-dir', '--dir', {str(tmp_path / 'Out')!r},
            '--to', {str(tmp_path / 'store')!r}, '--incident', 'i1', '--host', 'h', '--state-dir',
            {str(tmp_path / 'st')!r}, '--dry-run']
import agent.runner, agent.take, agent.mta.pickup, agent.mta.smtp, agent.mta.postfix, agent.mta.exim, agent.upload
from spoolsweep.cli import main
main()
"""
    (tmp_path / "Out").mkdir()
    cp = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                        env={**os.environ, "COLUMNS": "400"})
    assert cp.returncode == 0, cp.stderr
    assert "dry run" in cp.stdout and "0 messages (0 bytes)" in cp.stdout


@pytest.mark.slow
def test_cli_snapshot_and_run(tmp_path, mail_corpus, keys, sink):
    out = tmp_path / "Out"
    write_pickup(out, real_messages(mail_corpus, 6))
    args = ["--mta", "pickup-dir", "--dir", str(out), "--host", HOST, "--state-dir", str(tmp_path / "st")]
    cmd = [sys.executable, "-m", "spoolsweep", "agent"]
    cp = subprocess.run([*cmd, "snapshot", *args, "--to", str(tmp_path / "store"), "--incident", INC],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert "6 messages" in cp.stdout and "moved" in cp.stdout and "checksum confirmed" in cp.stdout
    cp = subprocess.run([*cmd, "snapshot", *args, "--to", str(tmp_path / "store"), "--incident", INC],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1 and "already has this host's snapshot" in cp.stderr
    qms = list(PickupQueue(out).list())
    LocalChannel(tmp_path / "store" / "channel").send(
        HOST, signed_body(instruction(INC, HOST, approved(qms[:4]), approved(qms[4:])), keys.private), "ins1")
    cp = subprocess.run([*cmd, "run", *args, "--public-key", str(keys.public_file), "--store", str(tmp_path / "store"),
                         "--deliver", f"smtp://127.0.0.1:{sink.port}", "--once"],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert "done ins1" in cp.stdout and "replayed 4" in cp.stdout and "purged 2" in cp.stdout
    assert len(sink.received) == 4
    assert "finished" in (tmp_path / "st" / "agent.log").read_text()
    db = sqlite3.connect(tmp_path / "st" / "journal.sqlite")
    assert db.execute("SELECT count(*) FROM actions WHERE phase='done'").fetchone()[0] == 6


def test_exim_spool_pair_is_read_as_rfc822():
    """The agent reads a -H/-D pair through the pipeline's Exim reader, so its digests agree with triage's."""
    from agent.mta.exim import _read_pair

    hdrs = [(" ", b"Received: from client.example.net ([203.0.113.9])\n\tby mx1 with esmtp\n"),
            ("*", b"X-Deleted: by a filter\n"), ("F", b"From: Alice <alice@example.net>\n"),
            (" ", b"Subject: hi\n")]
    h = (b"1tAbCd-000123-Ab-H\nDebian-exim 101 103\n<alice@example.net>\n1764000000 0\n"
         b"-helo_name client.example.net\n-host_address 203.0.113.9.41234\n-received_protocol esmtp\n"
         b"-auth_id bob\n-frozen 1764000100\nXX\n2\nbob@example.org\ncarol@example.com 1,2#1\n\n"
         + b"".join(f"{len(t):03d}{flag} ".encode() + t for flag, t in hdrs))
    d = b"1tAbCd-000123-Ab-D\nline one\nline two\n"
    data, env, defects = _read_pair(h, d, "1tAbCd-000123-Ab")
    assert defects == []
    assert data == (b"Received: from client.example.net ([203.0.113.9])\n\tby mx1 with esmtp\n"
                    b"From: Alice <alice@example.net>\nSubject: hi\n\nline one\nline two\n")
    assert env.mail_from == "alice@example.net" and env.rcpt_to == ["bob@example.org", "carol@example.com"]
    assert env.client_address == "203.0.113.9" and env.helo == "client.example.net" and env.sasl_username == "bob"


class Crash(BaseException):
    """Stands in for SIGKILL: nothing after it runs."""


class CrashAfterCommit:
    def send(self, data, envelope, commit, key=""):
        commit()
        raise Crash

    def resolve(self, key):
        raise AssertionError("not used")

    def close(self):
        pass


@pytest.mark.parametrize("courier_said", [None, "dot", "ok"])
def test_restart_after_a_crash_past_commit_asks_the_courier(courier_said, frozen, keys, sink, tmp_path):
    """Nothing recorded: never handed over, so send it. `ok`: delivered, do not send again. `dot` without an
    answer (the courier itself died): uncertain, reported and left frozen, never sent twice."""
    import json

    from agent.mta.courier import CourierDeliverer

    q, journal, store, _, _ = frozen
    qms = list(q.list())[:2]
    body = signed_body(instruction(INC, HOST, approved(qms), []), keys.private)
    crashing = Agent(host=HOST, queue=q, journal=journal, store=store, public_key_pem=keys.public,
                     deliverer=CrashAfterCommit())
    with pytest.raises(Crash):
        crashing.handle(body)
    assert [a.phase for a in journal.actions("ins1")] == ["commit", "pending"]
    state = tmp_path / "courier-state"
    state.mkdir()
    if courier_said:
        rec = {"key": "ins1/0", "state": courier_said, "reply": "2.0.0 Ok"}
        (state / "courier.jsonl").write_text(json.dumps(rec) + "\n")
    agent = Agent(host=HOST, queue=q, journal=journal, store=store, public_key_pem=keys.public,
                  deliverer=CourierDeliverer("127.0.0.1", sink.port, state))
    (r,) = agent.resume()
    first = r.items[0]
    want = {None: "replayed", "ok": "replayed", "dot": "failed"}[courier_said]
    assert first.outcome.value == want and r.items[1].outcome.value == "replayed"
    assert len(sink.received) == (2 if courier_said is None else 1)
    assert qms[0].source.exists() == (courier_said == "dot"), "an uncertain message stays frozen"
    if courier_said == "dot":
        assert "uncertain" in first.detail


def test_lean_parse_follows_the_instruction_model():
    """The agent validates payloads item by item; its head model must list exactly the Instruction's fields."""
    from agent.verify import _Head
    from pipeline.instructions import Instruction

    assert set(_Head.model_fields) == set(Instruction.model_fields)
