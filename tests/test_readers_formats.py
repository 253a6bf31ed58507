"""mbox, maildir and sendmail queues, made with Python's mailbox module or to the documented format, read back."""

from __future__ import annotations

import io
import json
import mailbox
import subprocess
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.manifest_io import manifest_bytes, read_manifest
from pipeline.policy import Limits
from pipeline.readers import read_snapshot
from pipeline.readers.sendmail import parse_qf

ROOT = Path(__file__).resolve().parent.parent

MSGS = [
    b"From: alice@example.org\nTo: bob@partner.example\nSubject: one\n\nFrom here on, a line that needs escaping\n"
    b">From an already quoted line\nbye\n",
    b"From: spam@bad.example\nTo: x@victim.example\nSubject: two\nDelivered-To: x@victim.example\n\nbuy\n",
    "From: café@example.org\nSubject: =?utf-8?q?caf=C3=A9?=\n\n8-bit body: ünïcödé\n".encode(),
]


def tar_of(tmp: Path, files: dict[str, bytes], name: str = "snap.tar.gz") -> Path:
    out = tmp / name
    with tarfile.open(out, "w:gz") as tf:
        for path, data in files.items():
            ti = tarfile.TarInfo(path)
            ti.size, ti.mtime = len(data), 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
    return out


def read_all(src: Path, fmt: str | None = None):
    name, found, report = read_snapshot(src, Limits(), fmt=fmt)
    return name, list(found), report


def triage_cli(src: Path, policy_file: Path, out: Path) -> dict:
    cp = subprocess.run([sys.executable, "-m", "spoolsweep", "triage", str(src), "--policy", str(policy_file),
                         "--out", str(out), "-q"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    return json.loads(manifest_bytes(read_manifest(out)))


# -- mbox -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_mbox_written_by_python_mailbox(tmp_path: Path, policy_file: Path) -> None:
    box = mailbox.mbox(tmp_path / "queue.mbox")
    senders = ["alice@example.org", "spam@bad.example", "MAILER-DAEMON"]
    for raw, sender in zip(MSGS, senders, strict=True):
        msg = mailbox.mboxMessage(raw)
        msg.set_from(sender, time.gmtime(1_700_000_000))
        box.add(msg)
    box.flush()
    box.close()
    fmt, found, _ = read_all(tar_of(tmp_path, {"export/queue.mbox": (tmp_path / "queue.mbox").read_bytes()}))
    assert fmt == "mbox"
    assert [f.raw.path for f in found] == [f"export/queue.mbox#{i}" for i in (1, 2, 3)]
    assert [f.raw.envelope.mail_from for f in found] == ["alice@example.org", "spam@bad.example", ""]
    assert all(f.raw.envelope.arrival_time == datetime.fromtimestamp(1_700_000_000, UTC) for f in found)
    assert found[1].raw.envelope.rcpt_to == ["x@victim.example"]
    # the body line Python escaped as '>From here' comes back as it was sent
    assert b"\nFrom here on, a line" in (found[0].data or b"")
    assert all(f.raw.defects == [] and f.raw.format == "mbox" for f in found)
    manifest = triage_cli(tmp_path / "snap.tar.gz", policy_file, tmp_path / "out")
    assert manifest["snapshot"]["format"] == "mbox" and len(manifest["messages"]) == 3


def test_mboxrd_unescapes_one_level_and_flags_junk(tmp_path: Path) -> None:
    data = (b"junk before any message\n"
            b"From a@example.org Tue Nov 14 22:13:20 2023\nSubject: a\n\n>From x\n>>From y\n\n"
            b"From b@example.org Tue Nov 14 22:13:21 2023\nSubject: b\n\nbody\n")
    fmt, found, _ = read_all(tar_of(tmp_path, {"mbox": data}), fmt="mbox")
    assert len(found) == 3
    assert found[0].raw.defects == ["text before the first From_ line"]
    assert found[1].data == b"Subject: a\n\nFrom x\n>From y\n"
    assert found[2].raw.envelope.mail_from == "b@example.org"


# -- maildir --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_maildir_written_by_python_mailbox(tmp_path: Path, policy_file: Path) -> None:
    md = mailbox.Maildir(tmp_path / "Maildir", create=True)
    keys = []
    for raw in MSGS:
        msg = mailbox.MaildirMessage(b"Return-Path: <sender@example.net>\nX-Original-To: rcpt@example.org\n" + raw)
        keys.append(md.add(msg))
    seen = md[keys[0]]
    seen.set_subdir("cur")
    seen.add_flag("S")
    md[keys[0]] = seen
    (tmp_path / "Maildir" / "tmp" / "1700000000.M1P1.host").write_bytes(b"Subject: half\n\nhalf-written")
    (tmp_path / "Maildir" / "dovecot-uidlist").write_text("3 V1 N4\n")
    fmt, found, report = read_all(tmp_path / "Maildir")
    assert fmt == "maildir"
    assert len(found) == 4
    by_folder = sorted(f.raw.envelope.queue_name or "" for f in found)
    assert by_folder == ["cur", "new", "new", "tmp"]
    full = [f for f in found if f.raw.envelope.queue_name != "tmp"]
    assert all(f.raw.envelope.mail_from == "sender@example.net" for f in full)
    assert sorted(tuple(f.raw.envelope.rcpt_to) for f in full) == [("rcpt@example.org",)] * 2 + [
        ("rcpt@example.org", "x@victim.example")]
    assert sorted(f.data for f in full) == sorted(
        b"Return-Path: <sender@example.net>\nX-Original-To: rcpt@example.org\n" + m for m in MSGS)
    tmp_msg = next(f for f in found if f.raw.envelope.queue_name == "tmp")
    assert "incomplete" in tmp_msg.raw.defects[0]
    assert any(p.endswith("dovecot-uidlist") for p in report.skipped)
    manifest = triage_cli(tmp_path / "Maildir", policy_file, tmp_path / "out")
    assert manifest["snapshot"]["format"] == "maildir"
    assert next(m for m in manifest["messages"] if m["path"].startswith("tmp/"))["verdict"] == "review"


# -- sendmail -------------------------------------------------------------------------------------
QF = (b"V8\nT1700000000\nK1700000100\nN2\nP120453\nI8/1/1234\n"
      b"MDeferred: Connection refused by mx.victim.example.\nFbs8\n"
      b"$_spam.example.com [203.0.113.9]\n$rESMTPA\n$sspammer.example.com\n${daemon_flags}\n"
      b"${auth_type}LOGIN\n${auth_authen}bob\n"
      b"Sceo@example.org\nAceo@example.org\nrRFC822; a@victim.example\nRPFD:a@victim.example\n"
      b"QRFC822; orig-b@victim.example\nRPFD:b@victim.example\n"
      b"H?P?Return-Path: <\x01g>\nH??Received: from spammer.example.com (spam.example.com [203.0.113.9])\n"
      b"\tby mx1.example.org (8.17.1/8.17.1) with ESMTPA id 3AMDXa01234567\n"
      b"H?F?From: ceo@example.org\nH??Subject: Cheap meds\n.\n")


def test_sendmail_auth_account_from_the_a_line_of_an_authenticated_session() -> None:
    """Sendmail 8.17 keeps no ${auth_authen} in the qf: an authenticated session shows as $rESMTPA, its account in
    the A line; an unauthenticated client's AUTH= claim is kept as A<> (trust_auth), and an A line in a session
    that did not authenticate names nobody."""
    base = QF.replace(b"${auth_type}LOGIN\n${auth_authen}bob\n", b"")
    assert parse_qf(base.replace(b"Aceo@example.org\n", b"Abob+2Bsales\n"))[0].sasl_username == "bob+sales"
    assert parse_qf(base.replace(b"Aceo@example.org\n", b"A<>\n"))[0].sasl_username is None
    unauth = base.replace(b"$rESMTPA\n", b"$rESMTP\n")
    assert parse_qf(unauth)[0].sasl_username is None, "an A line without an authenticated session is a claim"
    assert parse_qf(QF)[0].sasl_username == "bob", "${auth_authen} when the qf has it"


@pytest.mark.slow
def test_sendmail_qf_df_pairs(tmp_path: Path, policy_file: Path) -> None:
    files = {
        "var/spool/mqueue/df3AMDXa01234567": b"Buy now\n",
        "var/spool/mqueue/qf3AMDXa01234567": QF,
        "var/spool/mqueue/xf3AMDXa01234567": b"transcript\n",
        "var/spool/mqueue/dfOrphanData0001": b"body without control file\n",
        "var/spool/mqueue/qfOrphanCtrl0001": QF.replace(b"3AMDXa01234567", b"OrphanCtrl0001"),
        "var/spool/mqueue/qfBrokenCtrl0001": QF[:200],
        "var/spool/mqueue/dfBrokenCtrl0001": b"x\n",
    }
    fmt, found, report = read_all(tar_of(tmp_path, files))
    assert fmt == "sendmail"
    by_id = {f.raw.envelope.queue_id: f for f in found}
    assert set(by_id) == {"3AMDXa01234567", "OrphanData0001", "OrphanCtrl0001", "BrokenCtrl0001"}
    ok = by_id["3AMDXa01234567"]
    env = ok.raw.envelope
    assert ok.raw.defects == []
    assert (env.mail_from, env.rcpt_to, env.orig_rcpt_to) == (
        "ceo@example.org", ["a@victim.example", "b@victim.example"], ["orig-b@victim.example"])
    assert (env.client_address, env.client_name, env.helo, env.protocol) == (
        "203.0.113.9", "spam.example.com", "spammer.example.com", "ESMTPA")
    assert (env.sasl_method, env.sasl_username) == ("LOGIN", "bob")
    assert env.arrival_time == datetime.fromtimestamp(1_700_000_000, UTC)
    assert env.deferred_reason == "Deferred: Connection refused by mx.victim.example."
    assert ok.data is not None and ok.data.endswith(b"Subject: Cheap meds\n\nBuy now\n")
    assert b"\tby mx1.example.org" in ok.data
    assert "without its control file" in by_id["OrphanData0001"].raw.defects[0]
    assert "without its data file" in by_id["OrphanCtrl0001"].raw.defects[0]
    assert any("truncated" in d for d in by_id["BrokenCtrl0001"].raw.defects)
    assert any(p.endswith("xf3AMDXa01234567") for p in report.skipped)
    manifest = triage_cli(tmp_path / "snap.tar.gz", policy_file, tmp_path / "out")
    verdicts = {m["queue_id"]: m["verdict"] for m in manifest["messages"]}
    assert verdicts["OrphanData0001"] == verdicts["OrphanCtrl0001"] == verdicts["BrokenCtrl0001"] == "review"


@pytest.mark.parametrize("fmt", ["mbox", "maildir", "sendmail", "postfix", "exim"])
def test_forced_format_on_wrong_input_loses_nothing(tmp_path: Path, fmt: str) -> None:
    """--format naming the wrong reader: every file still comes out as a message or a named skip."""
    files = {"a/new/1700000000.M1.host": MSGS[0], "b/qfAAAAAAAA01": QF}
    _, found, report = read_all(tar_of(tmp_path, files), fmt=fmt)
    accounted = {f.raw.path.split("#")[0] for f in found} | set(report.skipped)
    assert set(files) <= accounted


def test_postfix_spool_whose_first_members_are_defer_logs(tmp_path: Path) -> None:
    """A big /var/spool/postfix tar: hundreds of defer/ logs before any queue file ('defer' < 'deferred')."""
    from tests.test_hostile_queues import GOOD, queue_file

    n = 300
    files = {f"var/spool/postfix/defer/A/A{i:05d}BCDEF": b"recipient=b@victim.example\nstatus=4.4.1\n"
             b"reason=connect to mx.victim.example: Connection refused\n\n" for i in range(n)}
    files |= {f"var/spool/postfix/deferred/A/A{i:05d}BCDEF": queue_file(*GOOD) for i in range(n)}
    files["var/spool/postfix/pid/master.pid"] = b"  1234\n"
    fmt, found, report = read_all(tar_of(tmp_path, files))
    assert fmt == "postfix"
    assert len(found) == n and all(f.raw.defects == [] for f in found)
    assert all("4.4.1 connect to mx.victim.example" in (f.raw.envelope.deferred_reason or "") for f in found)
    assert len(report.skipped) == n + 1


def test_postfix_after_content_filter_keeps_the_origin() -> None:
    """Re-injected from amavis with XFORWARD: client_* is 127.0.0.1, log_* the real client; the origin wins."""
    from pipeline.readers.postfix import parse_queue_file
    from tests.test_hostile_queues import GOOD, queue_file, rec

    attrs = [rec("A", b"log_client_address=203.0.113.9"), rec("A", b"log_client_name=spam.example.com"),
             rec("A", b"log_helo_name=spammer"), rec("A", b"client_address=127.0.0.1"),
             rec("A", b"client_name=localhost"), rec("A", b"helo_name=amavis.example.org")]
    qf = parse_queue_file(queue_file(*GOOD[:3], *attrs, *GOOD[4:]), "deferred")
    assert qf.defects == []
    env = qf.envelope
    assert (env.client_address, env.client_name, env.helo) == ("203.0.113.9", "spam.example.com", "spammer")
