"""A real Postfix queue made by Debian's Postfix, read back by spoolsweep without Postfix, as postcat reports it."""

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

from pipeline.generator import find_corpus, load_corpus
from pipeline.manifest_io import manifest_bytes, read_manifest
from pipeline.policy import Limits
from pipeline.readers import read_snapshot
from tests.support.postfix import POSTFIX, PostfixInstance, available, free_port, main_cf, private_postfix

pytestmark = pytest.mark.postfix
ROOT = Path(__file__).resolve().parent.parent


def corpus_sample(n: int) -> list[bytes]:
    """A few real messages, spread over the corpus sample the package ships."""
    ham, spam = load_corpus(find_corpus())
    pool = ham + spam
    return pool[:: len(pool) // n][:n]


class Sink:
    async def handle_DATA(self, server, session, envelope):  # aiosmtpd hook
        return "250 OK"


def postcat_envelope(pf: PostfixInstance, qid: str) -> dict[str, list[str]]:
    """`postcat -e -q ID` as {record name: [values]}, named attributes as 'attr:NAME'."""
    out: dict[str, list[str]] = {}
    for line in pf.postcat(qid, "-e").splitlines():
        key, sep, value = line.partition(": ")
        if not sep or line.startswith("***"):
            continue
        if key == "named_attribute":
            key, _, value = value.partition("=")
            key = "attr:" + key
        out.setdefault(key, []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def real_queue(tmp_path_factory: pytest.TempPathFactory):
    """Inject known mail into a private Postfix, then return (spool tarball, what Postfix's own tools say)."""
    if why := available():
        pytest.skip(why)
    sink_port = free_port()
    sink = Controller(Sink(), hostname="127.0.0.1", port=sink_port)
    sink.start()
    extra = {"transport_maps": f"inline:{{delivered.example=smtp:[127.0.0.1]:{sink_port}}}"}
    try:
        with private_postfix(extra=extra) as pf:
            sent: dict[str, dict] = {}

            def send(name: str, mail_from: str, rcpts: list[str], data: bytes, **kw) -> None:
                qid = pf.send(mail_from, rcpts, data, **kw)
                sent[qid] = {"name": name, "mail_from": mail_from, "rcpts": rcpts, **kw}

            send("relayed", "ceo@example.org", ["a@victim.example", "b@victim.example", "c@other.example"],
                 b"From: ceo@example.org\r\nSubject: Cheap meds\r\n\r\nBuy now http://spam.example/x\r\n",
                 xclient={"ADDR": "203.0.113.9", "NAME": "spam.example.com", "HELO": "spammer.example.com"})
            send("sasl", "bob@example.org", ["friend@partner.example"],
                 b"From: bob@example.org\r\nSubject: lunch\r\n\r\nsee you\r\n", login=("bob@example.org", "s3cret"))
            send("xclient-login", "carol@example.org", ["x@partner.example"],
                 b"From: carol@example.org\r\nSubject: report\r\n\r\nattached\r\n",
                 xclient={"ADDR": "198.51.100.7", "NAME": "[UNAVAILABLE]", "LOGIN": "carol"})
            send("8bit", "dave@example.org", ["y@partner.example", "z@partner.example"],
                 "From: dave@example.org\r\nSubject: café\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 "Content-Transfer-Encoding: 8bit\r\n\r\nSpëcial chàrs: ünïcödé ✓\r\n".encode()
                 + b"latin1 \xe9\xe8\r\n")
            send("null-sender", "", ["someone@victim.example"],
                 b"From: MAILER-DAEMON@example.org\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\nbounce\r\n")
            send("long-line", "erin@example.org", ["w@partner.example"],
                 b"From: erin@example.org\r\nSubject: long\r\n\r\n" + b"0123456789" * 1500 + b"\r\nend\r\n")
            send("partial", "frank@example.org", ["ok@delivered.example", "stuck@partner.example"],
                 b"From: frank@example.org\r\nSubject: half\r\n\r\none got it\r\n")
            for i, raw in enumerate(corpus_sample(12)):
                body = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                if body.startswith(b"From "):
                    body = body.split(b"\r\n", 1)[1]
                send(f"corpus-{i}", f"sender{i}@corpus.example", [f"rcpt{i}@victim.example"], body,
                     xclient={"ADDR": f"192.0.2.{100 + i}"}, mail_options=["BODY=8BITMIME"])
            pf.submit_local("gina@example.org", [], b"To: t1@partner.example, t2@partner.example\n"
                            b"Subject: sendmail -t\n\nlocal\n", extract=True)
            pf.wait_queued(len(sent) + 1)
            local = next(m["queue_id"] for m in pf.postqueue_json() if m["queue_id"] not in sent)
            sent[local] = {"name": "sendmail-t", "mail_from": "gina@example.org", "rcpts": []}
            held = next(q for q, s in sent.items() if s["name"] == "sasl")
            pf.postsuper("-h", held)
            queue = {m["queue_id"]: m for m in pf.wait_queued(len(sent))}
            truth = {qid: {"sent": sent[qid], "postqueue": queue[qid], "postcat_e": postcat_envelope(pf, qid),
                           "content": pf.postcat_bytes(qid, "-bh")} for qid in sent}
            tar = pf.tar_spool(tmp_path_factory.mktemp("spool") / "postfix-spool.tar.gz")
    finally:
        sink.stop()
    return tar, truth


def test_reader_recovers_what_postfix_reports(real_queue) -> None:
    tar, truth = real_queue
    fmt, found, report = read_snapshot(tar, Limits())
    assert fmt == "postfix"
    got = {f.raw.envelope.queue_id: f for f in found}
    assert set(got) == set(truth), "every queued message is read, nothing else"
    assert not report.defects
    assert any("/pid/" in p for p in report.skipped) and any("/defer/" in p for p in report.skipped)
    for qid, t in truth.items():
        f, pq, pc, sent = got[qid], t["postqueue"], t["postcat_e"], t["sent"]
        env = f.raw.envelope
        assert f.raw.format == "postfix"
        assert f.raw.defects == [], (sent["name"], f.raw.defects)
        assert env.queue_name == pq["queue_name"]
        assert env.mail_from == sent["mail_from"]
        assert (env.mail_from or "MAILER-DAEMON") == pq["sender"]  # postqueue shows <> as MAILER-DAEMON
        assert sorted(env.rcpt_to) == sorted(r["address"] for r in pq["recipients"])  # showq reorders
        assert env.orig_rcpt_to == pc.get("original_recipient", [])
        assert env.done_rcpt_to == pc.get("done_recipient", [])
        assert env.arrival_time is not None and int(env.arrival_time.timestamp()) == pq["arrival_time"]
        for ours, theirs in ((env.client_address, "client_address"), (env.client_name, "client_name"),
                             (env.helo, "helo_name"), (env.protocol, "protocol_name")):
            assert ours == (pc.get(f"attr:{theirs}") or [None])[0], (sent["name"], theirs)
        assert env.sasl_method == (pc.get("attr:sasl_method") or [None])[0]
        assert env.sasl_username == (pc.get("attr:sasl_username") or [None])[0]
        assert f.data == t["content"], sent["name"]
        for r in pq["recipients"]:
            if r.get("delay_reason"):
                assert env.deferred_reason and r["delay_reason"] in env.deferred_reason


def test_known_envelopes_come_back(real_queue) -> None:
    """The values the test chose (not only what Postfix says) are there: XCLIENT, SASL, hold, done recipients."""
    tar, truth = real_queue
    _, found, _ = read_snapshot(tar, Limits(), fmt="postfix")
    by_name = {truth[f.raw.envelope.queue_id]["sent"]["name"]: f for f in found}
    relayed = by_name["relayed"].raw.envelope
    assert (relayed.client_address, relayed.client_name, relayed.helo) == (
        "203.0.113.9", "spam.example.com", "spammer.example.com")
    assert relayed.rcpt_to == ["a@victim.example", "b@victim.example", "c@other.example"]
    assert relayed.sasl_username is None
    sasl = by_name["sasl"].raw.envelope
    assert (sasl.sasl_method, sasl.sasl_username, sasl.queue_name) == ("PLAIN", "bob@example.org", "hold")
    login = by_name["xclient-login"].raw.envelope
    assert (login.client_address, login.sasl_method, login.sasl_username) == ("198.51.100.7", "XCLIENT", "carol")
    partial = by_name["partial"].raw.envelope
    assert partial.done_rcpt_to == ["ok@delivered.example"] and partial.rcpt_to == ["stuck@partner.example"]
    assert by_name["null-sender"].raw.envelope.mail_from == ""
    eight = by_name["8bit"].data or b""
    assert "ünïcödé ✓".encode() in eight and b"latin1 \xe9\xe8" in eight
    assert b"0123456789" * 1500 in (by_name["long-line"].data or b"")
    extracted = by_name["sendmail-t"].raw.envelope
    assert sorted(extracted.rcpt_to) == ["t1@partner.example", "t2@partner.example"]
    assert extracted.client_address is None and extracted.mail_from == "gina@example.org"
    assert relayed.deferred_reason and "Connection refused" in relayed.deferred_reason


def test_triage_cli_on_spool_tarball(real_queue, tmp_path: Path, policy_file: Path) -> None:
    tar, truth = real_queue
    out = tmp_path / "out"
    cp = subprocess.run([sys.executable, "-m", "spoolsweep", "triage", str(tar), "--policy", str(policy_file),
                         "--out", str(out), "-q"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    manifest = json.loads(manifest_bytes(read_manifest(out)))
    assert manifest["snapshot"]["format"] == "postfix"
    assert {m["queue_id"] for m in manifest["messages"]} == set(truth)
    by_qid = {m["queue_id"]: m for m in manifest["messages"]}
    relayed = next(q for q, t in truth.items() if t["sent"]["name"] == "relayed")
    assert by_qid[relayed]["verdict"] != "valid"


def test_long_queue_ids(tmp_path: Path) -> None:
    if why := available():
        pytest.skip(why)
    with private_postfix(extra={"enable_long_queue_ids": "yes"}) as pf:
        qids = [pf.send(f"s{i}@example.org", [f"r{i}@partner.example"], b"Subject: x\r\n\r\nbody\r\n")
                for i in range(2)]
        pf.wait_queued(2)
        tar = pf.tar_spool(tmp_path / "long.tgz")
    assert all(len(q) > 12 and "z" in q for q in qids), qids
    _, found, _ = read_snapshot(tar, Limits())
    got = {f.raw.envelope.queue_id: f.raw.envelope.mail_from for f in found}
    assert got == {qids[0]: "s0@example.org", qids[1]: "s1@example.org"}


def test_maildrop_and_unsorted_tar(tmp_path: Path) -> None:
    """Local submissions stuck in maildrop/ (pickup down) are read; defer/ logs after deferred/ still count."""
    if why := available():
        pytest.skip(why)
    with private_postfix() as pf:
        qid = pf.send("a@example.org", ["b@partner.example"], b"Subject: d\r\n\r\nx\r\n",
                      xclient={"ADDR": "203.0.113.50"})
        reason = pf.wait_queued(1)[0]["recipients"][0]["delay_reason"]
        pf.stop()
        pf.submit_local("local@example.org", ["r@partner.example"], b"Subject: via sendmail\n\nhello\n",
                        full_name="Local User")
        files = [(p.relative_to(pf.spool).as_posix(), p.read_bytes()) for p in sorted(pf.spool.rglob("*"))
                 if p.is_file() and p.parts[len(pf.spool.parts)] in ("deferred", "maildrop", "defer")]
    # deferred/ first, defer/ last: the order GNU tar may produce from readdir
    files.sort(key=lambda f: (not f[0].startswith("deferred/"), f[0]))
    tar = tmp_path / "unsorted.tar"
    with tarfile.open(tar, "w") as tf:
        for name, data in files:
            ti = tarfile.TarInfo("spool/" + name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    fmt, found, _ = read_snapshot(tar, Limits())
    got = {f.raw.envelope.queue_name: f for f in found}
    assert fmt == "postfix" and set(got) == {"deferred", "maildrop"}
    deferred, maildrop = got["deferred"].raw.envelope, got["maildrop"].raw.envelope
    assert deferred.queue_id == qid and deferred.deferred_reason and reason in deferred.deferred_reason
    assert (maildrop.mail_from, maildrop.rcpt_to, maildrop.client_address) == (
        "local@example.org", ["r@partner.example"], None)
    assert got["maildrop"].raw.defects == [] and got["maildrop"].data == b"Subject: via sendmail\n\nhello\n"


def test_lab_settings_replace_defaults_and_no_process_warns_at_start(tmp_path: Path) -> None:
    """A setting given to the lab replaces the default in place: a parameter twice in main.cf makes every
    Postfix process warn as it starts, postlogd too, which logs that through its own socket and, with the
    datagram queue full, waits on itself while every process that logs waits on it (CI saw MAIL FROM
    and `postfix stop` hang). No process may warn about the configuration, and one that would is refused."""
    if why := available():
        pytest.skip(why)
    extra = {"mydestination": "$myhostname, localhost", "mynetworks": "127.0.0.0/8 192.0.2.0/24"}
    cf = main_cf(tmp_path, 2525, 2526, None, extra=extra)
    keys = [line.split("=", 1)[0].strip() for line in cf.splitlines()]
    assert len(keys) == len(set(keys)) and "mynetworks = 127.0.0.0/8 192.0.2.0/24" in cf.splitlines()
    with private_postfix(users={}, extra=extra) as pf:
        pf.send("a@example.org", ["b@far.example"], b"Subject: q\r\n\r\nquiet\r\n")
        pf.wait_queued(1)
        # warnings about its configuration, each process's at start-up (not the ones a running system may
        # give, such as a file system clock ahead of the local one)
        warned = [x for x in pf.log().splitlines() if "warning:" in x and "main.cf" in x]
        assert not warned
        quiet = (pf.etc / "main.cf").read_text()
        (pf.etc / "main.cf").write_text(quiet + "mynetworks = 127.0.0.0/8\n")
        with pytest.raises(RuntimeError, match="not quiet: .*overriding earlier entry: mynetworks"):
            pf.check_quiet()
        (pf.etc / "main.cf").write_text(quiet)


def _wait_listening(port: int, timeout: float = 20) -> None:
    import socket
    import time

    end = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


class Refilter:
    """A content filter as amavisd-new runs one: Postfix hands it each message (content_filter), it hands the
    message back unchanged on loopback to a second smtpd, which queues it again from 127.0.0.1. For the list's
    address it is the list server instead (Mailman): the post goes out again to the members, from the list's
    bounce address, with a List-Id; for alice's, her Sieve redirect to her own address elsewhere."""

    def __init__(self, port: int, pf: PostfixInstance | None = None, xforward: bool = False) -> None:
        self.port, self.pf, self.done, self.xforward = port, pf, 0, xforward

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd hook
        import smtplib

        data, mail_from, rcpts = envelope.original_content, envelope.mail_from, envelope.rcpt_tos
        # amavis forwards the client Postfix handed the message over from (XFORWARD): the one our topmost hop names;
        # the list server and a Sieve redirect hand theirs over on loopback
        m = re.search(rb"^Received: from \S+ \(\S+ \[([0-9a-fA-F:.]+)\]\)", data)
        client = m.group(1).decode() if m else "127.0.0.1"
        if rcpts == ["python-list@example.org"] or rcpts == ["alice@example.org"]:
            client = "127.0.0.1"
        if rcpts == ["python-list@example.org"]:
            data = b"List-Id: Python list <python-list.example.org>\r\n" + data
            mail_from, rcpts = "python-list-bounces@example.org", ["m1@member.example", "m2@member.example"]
        elif rcpts == ["alice@example.org"]:  # her Sieve script redirects her mail (Dovecot over SMTP)
            rcpts = ["alice.home@gmail.example"]
        if self.pf is not None:  # SpamAssassin's spamc piped to Postfix's sendmail: queued again through pickup
            self.pf.submit_local(mail_from, rcpts, data)
        else:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=20) as s:
                if self.xforward:
                    s.ehlo("localhost")
                    s.docmd("XFORWARD", f"ADDR={client} NAME=[UNAVAILABLE] PROTO=ESMTP")
                s.sendmail(mail_from, rcpts, data)
        self.done += 1
        return "250 OK"


@pytest.mark.parametrize("back_in", ["smtp", "sendmail", "xforward"])
def test_a_queue_behind_a_content_filter_is_judged_by_who_handed_us_each_message(tmp_path: Path,
                                                                                 back_in: str) -> None:
    # Behind amavis without XFORWARD every queued message's client is 127.0.0.1, a trusted network, and the
    # relayed spam of a 3,000-message queue came out valid (2,280 of 2,520); behind spamc piped to sendmail every
    # message was submitted on the host. Our own hop below the re-injection names who handed it to us.
    if why := available():
        pytest.skip(why)
    back, to_filter = free_port(), free_port()
    refilter = Refilter(back, xforward=back_in == "xforward")
    flt = Controller(refilter, hostname="127.0.0.1", port=to_filter)
    flt.start()
    try:
        with private_postfix(users={"bob@example.org": "s3cret"},
                             extra={"content_filter": f"smtp:[127.0.0.1]:{to_filter}"}) as pf:
            master = (pf.etc / "master.cf").read_text()
            if back_in in ("smtp", "xforward"):
                master += (f"127.0.0.1:{back} inet n - n - - smtpd -o content_filter= "
                           "-o smtpd_authorized_xclient_hosts= -o smtpd_authorized_xforward_hosts=127.0.0.0/8\n")
            else:  # what pickup queues is not filtered again
                refilter.pf = pf
                master = re.sub(r"(?m)^(pickup .*pickup)$", r"\1 -o content_filter=", master)
            (pf.etc / "master.cf").write_text(master)
            pf.run(POSTFIX, "-c", str(pf.etc), "reload")
            if back_in != "sendmail":
                _wait_listening(back)
            spam = b"From: deals@far.example\r\nSubject: Cheap meds today\r\n\r\nBuy now http://pills.example/x\r\n"
            for i in range(6):
                pf.send("deals@far.example", [f"v{i}@victim.example"], spam,
                        xclient={"ADDR": f"203.0.113.{10 + i}", "NAME": "[UNAVAILABLE]", "HELO": "bot.example"})
            pf.send("bob@example.org", ["friend@partner.example"],
                    b"From: bob@example.org\r\nSubject: lunch\r\n\r\nsee you\r\n", login=("bob@example.org", "s3cret"))
            # bob's password, stolen: a run from a botnet, signed in; Postfix's hop says "with ESMTPSA" and (without
            # smtpd_sasl_authenticated_header) not as whom. And bob himself from home
            stolen = (b"From: promo@bulk.example\r\nSubject: Rolex replicas\r\n\r\n"
                      b"Best prices http://watch.example/r\r\n")
            for i in range(6):
                pf.send("promo@bulk.example", [f"w{i}@victim.example"], stolen, login=("bob@example.org", "s3cret"),
                        xclient={"ADDR": f"203.0.113.{30 + i}", "NAME": "[UNAVAILABLE]", "HELO": "pc.example"})
            pf.send("bob@example.org", ["mum@partner.example"],
                    b"From: bob@example.org\r\nSubject: hi mum\r\n\r\nsee you sunday\r\n",
                    login=("bob@example.org", "s3cret"), xclient={"ADDR": "198.51.100.70", "NAME": "[UNAVAILABLE]"})
            pf.send("carol@example.org", ["x@partner.example"],
                    b"From: carol@example.org\r\nSubject: report\r\n\r\nattached\r\n", xclient={"ADDR": "192.0.2.20"})
            pf.send("poster@far.example", ["python-list@example.org"],
                    b"From: poster@far.example\r\nSubject: a question\r\n\r\nhello list\r\n",
                    xclient={"ADDR": "198.51.100.50", "NAME": "[UNAVAILABLE]"})
            pf.send("news@shop.example", ["alice@example.org"],
                    b"From: news@shop.example\r\nSubject: your order\r\n\r\nit has shipped\r\n",
                    xclient={"ADDR": "198.51.100.60", "NAME": "[UNAVAILABLE]"})
            queue = pf.wait_queued(17)
            assert refilter.done == 17
            tar = pf.tar_spool(tmp_path / "spool.tar.gz")
    finally:
        flt.stop()
    policy = tmp_path / "site.toml"
    policy.write_text('local_domains = ["example.org"]\nserver_names = ["mx1.example.org"]\n'
                      'trusted_networks = ["127.0.0.0/8", "192.0.2.0/24"]\n')
    out = tmp_path / "out"
    cp = subprocess.run([sys.executable, "-m", "spoolsweep", "triage", str(tar), "--policy", str(policy),
                         "--out", str(out), "-q"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    manifest = json.loads(manifest_bytes(read_manifest(out)))
    msgs = manifest["messages"]
    assert {m["queue_id"] for m in msgs} == {q["queue_id"] for q in queue}
    # bob's own login from home and the 6 of the stolen run: the admin is told why they carry no account
    assert "7 messages were signed in (SMTP AUTH) as an account that neither" in " ".join(manifest["warnings"])
    got = {(m["envelope"]["mail_from"], m["envelope"]["client_address"], m["verdict"]) for m in msgs}
    ours = None if back_in == "sendmail" else "127.0.0.1"
    # with XFORWARD the queue keeps the client amavis forwards, and a login our hop below shows from that client
    assert got == {*{("deals@far.example", f"203.0.113.{10 + i}", "spam") for i in range(6)},
                   *{("promo@bulk.example", f"203.0.113.{30 + i}", "spam") for i in range(6)},
                   # signed in from outside as an account no hop names: ours, or a thief's, held
                   ("bob@example.org", "198.51.100.70", "review"),
                   ("bob@example.org", ours, "valid"),
                   ("carol@example.org", "192.0.2.20" if back_in == "xforward" else ours, "valid"),
                   ("python-list-bounces@example.org", ours, "valid"),
                   # a redirect looks relayed, from a client that sent no spam: held, never purged
                   ("news@shop.example", "198.51.100.60", "review")}, got
