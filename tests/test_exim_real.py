"""A real Exim spool made by Debian's Exim (unpacked privately), read back by spoolsweep as exim -bp/-Mvh report it."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from pipeline.manifest_io import manifest_bytes, read_manifest
from pipeline.policy import Limits
from pipeline.readers import read_snapshot
from tests.support.exim import available, private_exim
from tests.support.postfix import free_port

pytestmark = pytest.mark.exim
ROOT = Path(__file__).resolve().parent.parent
_BP_HEAD = re.compile(r"^\s*\S+\s+\S+\s+(\S+-\S+-\S+)\s+<(.*)>")
_BP_RCPT = re.compile(r"^\s+(D\s+)?(\S+)\s*$")


class Sink:
    async def handle_DATA(self, server, session, envelope):  # aiosmtpd hook
        return "250 OK"


def parse_bp(text: str) -> dict[str, dict]:
    """`exim -bp`: {id: {sender, rcpt (undelivered), done (delivered, 'D' prefix)}}."""
    out: dict[str, dict] = {}
    cur: dict | None = None
    for line in text.splitlines():
        if m := _BP_HEAD.match(line):
            cur = out[m.group(1)] = {"sender": m.group(2), "rcpt": [], "done": []}
        elif cur is not None and (m := _BP_RCPT.match(line)):
            cur["done" if m.group(1) else "rcpt"].append(m.group(2))
    return out


def mvh_option(mvh: str, name: str) -> str | None:
    for line in mvh.splitlines():
        if line.lstrip("-").startswith(name + " "):
            return line.lstrip("-")[len(name) + 1:]
    return None


@pytest.fixture(scope="module")
def exim_queue(tmp_path_factory: pytest.TempPathFactory):
    if why := available():
        pytest.skip(why)
    sink_port = free_port()
    sink = Controller(Sink(), hostname="127.0.0.1", port=sink_port)
    sink.start()
    try:
        with private_exim(split=True, sink_port=sink_port) as ex:
            sent: dict[str, dict] = {}
            qid = ex.send_smtp("bob@example.org", ["friend@partner.example"],
                               b"From: bob@example.org\r\nSubject: lunch\r\n\r\nsee you\r\n",
                               login=("bob@example.org", "s3cret"))
            sent[qid] = {"name": "sasl"}
            qid = ex.send_bs("ceo@example.org", ["a@victim.example", "b@victim.example", "c@other.example"],
                             "From: ceo@example.org\r\nSubject: Cheap méds\r\n\r\nBuy ünïcödé now\r\n.dot\r\n".encode(),
                             client_address="203.0.113.9", client_name="spam.example.com",
                             helo="spammer.example.com")
            sent[qid] = {"name": "relayed"}
            qid = ex.send_bs("frank@example.org", ["ok@delivered.example", "stuck@partner.example"],
                             b"From: frank@example.org\r\nSubject: half\r\n\r\none got it\r\n",
                             client_address="198.51.100.7", auth_id="carol", protocol="esmtpa")
            sent[qid] = {"name": "partial"}
            ex.deliver(qid)
            qid = ex.send_bs("", ["someone@victim.example"], b"Subject: bounce\r\n\r\nreturned\r\n",
                             client_address="192.0.2.77")
            sent[qid] = {"name": "null-sender"}
            ex.run("-Mf", qid)  # freeze the bounce, as an admin does with backscatter
            bp = parse_bp(ex.bp())
            msglogs = {p.name: p.read_text() for p in (ex.spool / "msglog").rglob("*") if p.is_file()}
            truth = {q: {**s, "bp": bp[q], "mvh": ex.mvh(q), "mvb": ex.mvb(q), "msglog": msglogs.get(q, "")}
                     for q, s in sent.items()}
            tar = ex.tar_spool(tmp_path_factory.mktemp("exim") / "exim-spool.tar.gz")
    finally:
        sink.stop()
    return tar, truth


def test_reader_recovers_what_exim_reports(exim_queue) -> None:
    tar, truth = exim_queue
    fmt, found, report = read_snapshot(tar, Limits())
    assert fmt == "exim"
    got = {f.raw.envelope.queue_id: f for f in found}
    assert set(got) == set(truth)
    for qid, t in truth.items():
        f, env, mvh = got[qid], got[qid].raw.envelope, t["mvh"]
        assert f.raw.defects == [], (t["name"], f.raw.defects)
        assert f.raw.format == "exim" and "/input/" in f.raw.path
        assert (env.mail_from or "") == t["bp"]["sender"]
        assert env.rcpt_to == t["bp"]["rcpt"]
        assert env.done_rcpt_to == t["bp"]["done"]
        assert int(env.arrival_time.timestamp()) == int(mvh.splitlines()[3].split()[0])
        assert env.sasl_username == mvh_option(mvh, "auth_id")
        assert env.sasl_method == mvh_option(mvh, "host_auth")
        assert env.protocol == mvh_option(mvh, "received_protocol")
        assert env.helo == mvh_option(mvh, "helo_name")
        addr = mvh_option(mvh, "host_address")
        assert addr is not None and env.client_address == addr.strip("[").split("]")[0]
        body = t["mvb"].split(b"\n", 1)[1]
        assert f.data is not None and f.data.endswith(b"\n\n" + body)
        assert b"Received: from" in f.data


def test_known_envelopes_come_back(exim_queue) -> None:
    tar, truth = exim_queue
    _, found, _ = read_snapshot(tar, Limits(), fmt="exim")
    by_name = {truth[f.raw.envelope.queue_id]["name"]: f for f in found}
    relayed = by_name["relayed"].raw.envelope
    assert (relayed.client_address, relayed.client_name, relayed.helo, relayed.sasl_username) == (
        "203.0.113.9", "spam.example.com", "spammer.example.com", None)
    assert relayed.rcpt_to == ["a@victim.example", "b@victim.example", "c@other.example"]
    assert "Buy ünïcödé now\n.dot\n".encode() in (by_name["relayed"].data or b"")
    sasl = by_name["sasl"].raw.envelope
    assert (sasl.client_address, sasl.sasl_method, sasl.sasl_username) == ("127.0.0.1", "plain", "bob@example.org")
    partial = by_name["partial"].raw.envelope
    assert partial.done_rcpt_to == ["ok@delivered.example"]
    assert partial.rcpt_to == ["stuck@partner.example"]
    assert partial.sasl_username == "carol"
    assert by_name["null-sender"].raw.envelope.mail_from == ""
    assert (by_name["null-sender"].raw.envelope.deferred_reason or "").startswith("frozen")
    # msglog/ sorts after input/: the reader waited for it
    reason = partial.deferred_reason or ""
    assert "stuck@partner.example" in reason and "defer" in reason, reason
    assert "ok@delivered.example" not in reason


def _rewrite(tar: Path, dest: Path, edit) -> Path:  # edit(name, data) -> bytes | None
    with tarfile.open(tar) as src, tarfile.open(dest, "w:gz") as out:
        for ti in src:
            data = src.extractfile(ti).read() if ti.isfile() else None  # type: ignore[union-attr]
            if data is not None:
                new = edit(ti.name, data)
                if new is None:
                    continue
                ti.size = len(new)
                out.addfile(ti, io.BytesIO(new))
            else:
                out.addfile(ti)
    return dest


def test_orphans_and_lying_line_count_are_review(exim_queue, tmp_path: Path, policy_file: Path) -> None:
    tar, truth = exim_queue
    names = {t["name"]: q for q, t in truth.items()}

    def edit(name: str, data: bytes) -> bytes | None:
        if name.endswith(names["sasl"] + "-D") or name.endswith(names["relayed"] + "-H"):
            return None
        if name.endswith(names["partial"] + "-H"):
            return re.sub(rb"-body_linecount \d+", b"-body_linecount 9999", data)
        if name.endswith(names["null-sender"] + "-H"):
            return data[: len(data) - 10]
        return data

    broken = _rewrite(tar, tmp_path / "broken.tar.gz", edit)
    _, found, _ = read_snapshot(broken, Limits())
    defects = {truth[f.raw.envelope.queue_id]["name"]: " | ".join(f.raw.defects) for f in found}
    assert set(defects) == set(names), "nothing dropped"
    assert "without its -D" in defects["sasl"]
    assert "without its -H" in defects["relayed"]
    assert "9999 lines" in defects["partial"]
    assert "truncated" in defects["null-sender"] or "claims" in defects["null-sender"]
    out = tmp_path / "out"
    cp = subprocess.run([sys.executable, "-m", "spoolsweep", "triage", str(broken), "--policy", str(policy_file),
                         "--out", str(out), "-q"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    manifest = json.loads(manifest_bytes(read_manifest(out)))
    assert manifest["snapshot"]["format"] == "exim"
    assert all(m["verdict"] == "review" for m in manifest["messages"]), [m["verdict"] for m in manifest["messages"]]


def test_unsplit_spool(tmp_path: Path) -> None:
    if why := available():
        pytest.skip(why)
    with private_exim(split=False) as ex:
        qid = ex.send_bs("s@example.org", ["r@partner.example"], b"Subject: x\r\n\r\nbody\r\n",
                         client_address="192.0.2.5")
        tar = ex.tar_spool(tmp_path / "unsplit.tgz")
    fmt, found, _ = read_snapshot(tar, Limits())
    (f,) = list(found)
    assert fmt == "exim" and f.raw.path.endswith(f"input/{qid}-H")
    assert (f.raw.envelope.queue_id, f.raw.envelope.mail_from, f.raw.envelope.client_address) == (
        qid, "s@example.org", "192.0.2.5")


def test_journal_marks_recipients_delivered(exim_queue, tmp_path: Path) -> None:
    """A -J journal (delivery interrupted before -H was rewritten) moves its addresses to done."""
    tar, truth = exim_queue
    qid = next(q for q, t in truth.items() if t["name"] == "partial")
    dest = tmp_path / "journal.tar.gz"
    with tarfile.open(tar) as src, tarfile.open(dest, "w:gz") as out:
        for ti in src:
            out.addfile(ti, src.extractfile(ti) if ti.isfile() else None)
            if ti.name.endswith(f"{qid}-H"):
                data = b"stuck@partner.example\n"
                jt = tarfile.TarInfo(ti.name[:-1] + "J")
                jt.size = len(data)
                out.addfile(jt, io.BytesIO(data))
    _, found, report = read_snapshot(dest, Limits())
    env = next(f.raw.envelope for f in found if f.raw.envelope.queue_id == qid)
    assert env.rcpt_to == [] and env.done_rcpt_to == ["ok@delivered.example", "stuck@partner.example"]
    assert not report.defects


@pytest.mark.parametrize("back_in", ["pipe", "smtp"])
def test_a_queue_behind_spamassassins_pipe_is_judged_by_who_handed_us_each_message(tmp_path: Path,
                                                                                 back_in: str) -> None:
    """Exim's SpamAssassin recipe pipes each message through spamc back into `exim -oMr spam-scanned -bS`: every
    queued message is then a submission on the host, with no client, and our hop "from <login> by mx1 with
    spam-scanned", which read as a host named "root" (neither on the host nor from a client), so the relayed run
    was the host's own mail (trusted_bulk, valid). Our hop below names who handed it to us; cron's mail, with
    nothing below, stays the host's own. The same behind amavis, which hands each message back over SMTP on
    loopback (`smtp`: the queue's client is 127.0.0.1)."""
    if why := available():
        pytest.skip(why)

    def reinject(ex, qid: str, mail_from: str, rcpts: list[str]) -> None:
        # what the filter does: the message as delivered (our hop on top), back in as batched SMTP, or over SMTP
        whole = ex.run("-Mvc", qid).stdout.replace(b"\r\n", b"\n")
        ex.run("-Mrm", qid)
        if back_in == "smtp":
            ex.send_bs(mail_from, rcpts, whole, client_address="127.0.0.1", client_name="localhost",
                       helo="localhost")
            return
        bsmtp = (f"MAIL FROM:<{mail_from}>\n".encode() + b"".join(f"RCPT TO:<{r}>\n".encode() for r in rcpts)
                 + b"DATA\n" + whole.replace(b"\n.", b"\n..") + b".\nQUIT\n")
        ex.run("-oMr", "spam-scanned", "-bS", input=bsmtp)

    spam = b"From: deals@far.example\r\nSubject: Cheap meds today\r\n\r\nBuy now http://pills.example/x\r\n"
    with private_exim(split=False) as ex:
        for i in range(6):
            qid = ex.send_bs("deals@far.example", [f"v{i}@victim.example"], spam, client_address=f"203.0.113.{10 + i}",
                             client_name="bot.example", helo="bot.example")
            reinject(ex, qid, "deals@far.example", [f"v{i}@victim.example"])
        ex.run("-odq", "-f", "root@example.org", "ops@far.example",
               input=b"From: root@example.org\nSubject: cron: backup done\n\nall good\n")
        tar = ex.tar_spool(tmp_path / "spool.tar.gz")
    policy = tmp_path / "site.toml"
    policy.write_text('local_domains = ["example.org"]\nserver_names = ["mx1.example.org"]\n'
                      'trusted_networks = ["127.0.0.0/8", "192.0.2.0/24"]\n')
    manifests = []
    for shard_size in ("0", "2"):  # in one process, and in shards as the functions run it
        out = tmp_path / f"out{shard_size}"
        cp = subprocess.run([sys.executable, "-m", "spoolsweep", "triage", str(tar), "--policy", str(policy),
                             "--out", str(out), "-q", "--shard-size", shard_size], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
        assert cp.returncode == 0, cp.stderr
        manifests.append(manifest_bytes(read_manifest(out)))
    assert manifests[0] == manifests[1]
    msgs = json.loads(manifests[0])["messages"]
    got = {(m["envelope"]["mail_from"], m["envelope"]["client_address"], m["verdict"]) for m in msgs}
    assert got == {*{("deals@far.example", f"203.0.113.{10 + i}", "spam") for i in range(6)},
                   ("root@example.org", None, "valid")}, got
