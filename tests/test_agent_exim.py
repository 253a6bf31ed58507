"""The agent against a real Exim 4 from Debian's packages (unpacked, not installed): freeze with -Mf, snapshot,
release with -Mt + -M into an aiosmtpd sink, purge with -Mrm."""

from __future__ import annotations

import hashlib
import time

import pytest

from agent.journal import Journal
from agent.mta.exim import EximQueue
from agent.runner import Agent
from agent.take import take
from agent.upload import parse_destination
from pipeline.policy import Limits
from pipeline.readers import read_snapshot
from pipeline.store import LocalStore
from tests.support import agent as support
from tests.support.agent import approved, instruction, real_messages, signed_body
from tests.support.exim import available, private_exim

pytestmark = pytest.mark.exim
keys, mail_corpus, sink = support.keys, support.mail_corpus, support.sink
INC, HOST = "inc-exim", "mx1"


def test_exim_freeze_snapshot_release_purge(tmp_path, mail_corpus, keys, sink):
    if why := available():
        pytest.skip(why)
    msgs = [(s, [f"user{i}@delivered.example"], d) for i, (s, _, d) in
            enumerate(real_messages(mail_corpus, 8, tag="ex"))]
    with private_exim(sink_port=sink.port) as ex:
        for sender, rcpts, data in msgs:
            ex.send_smtp(sender, rcpts, data)
        q = EximQueue(command=ex.argv(), env=ex.env())
        journal = Journal(tmp_path / "state" / "journal.sqlite")
        s = take(q, "exim", parse_destination(None, tmp_path / "store", INC, HOST), journal, tmp_path / "state")
        assert s.messages == 8
        assert ex.bp().count("*** frozen ***") == 8
        qms = list(q.list())
        assert sorted(qm.envelope.rcpt_to[0] for qm in qms) == sorted(m[1][0] for m in msgs)
        _, found, _ = read_snapshot(tmp_path / "store/incoming" / INC / HOST / "snapshot.tar.zst", Limits())
        found = list(found)
        assert {f.sha256 for f in found} == {qm.sha256 for qm in qms}
        # Exim's own spool files, read as the spool reader reads them, carry no defect into the snapshot
        assert [f.raw.defects for f in found] == [[]] * 8 and all(not qm.defects for qm in qms)
        for qm in qms:  # the digest is of the message as Exim would send it: -Mvh headers + -Mvb body
            assert hashlib.sha256(q.content(qm)).hexdigest() == qm.sha256
        by_mid = {support.Received("", [], q.content(qm)).message_id: qm for qm in qms}
        rep = [by_mid[f"<ex-{i}@spoolsweep.test>"] for i in range(5)]
        pur = [by_mid[f"<ex-{i}@spoolsweep.test>"] for i in range(5, 8)]
        agent = Agent(host=HOST, queue=q, journal=journal, store=LocalStore(tmp_path / "store"),
                      public_key_pem=keys.public)
        r = agent.handle(signed_body(instruction(INC, HOST, approved(rep), approved(pur)), keys.private))
        assert r.counts()["replayed"] == 5 and r.counts()["purged"] == 3, r.items
        end = time.monotonic() + 20
        while len(sink.received) < 5 and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(0.5)
        got = sink.message_ids()
        assert set(got) == {f"<ex-{i}@spoolsweep.test>" for i in range(5)} and set(got.values()) == {1}
        assert ex.bp().strip() == "", "released mail delivered, purged mail removed"


def test_exim_dry_run_reinjection_and_quarantine(tmp_path, mail_corpus, keys, sink):
    """`--dry-run` freezes nothing; `--deliver smtp://` hands approved mail back to the running Exim over SMTP (which
    relays it to the sink) and the frozen copy leaves the spool; purged mail is quarantined first."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from pipeline.instructions import Receipt
    from pipeline.queues import receipt_key
    from pipeline.store import LocalChannel

    if why := available():
        pytest.skip(why)
    root = Path(__file__).resolve().parent.parent
    with private_exim() as ex:
        for sender, rcpts, data in real_messages(mail_corpus, 4, tag="rx"):
            ex.send_smtp(sender, rcpts, data)
        mta = ["--mta", "exim", "--exim", str(ex.wrapper), "--exim-config", str(ex.conf)]
        store, state = tmp_path / "store", tmp_path / "state"
        snap = [sys.executable, "-m", "spoolsweep", "agent", "snapshot", *mta, "--to", str(store), "--incident", INC,
                "--host", HOST, "--state-dir", str(state)]
        dry = subprocess.run([*snap, "--dry-run"], cwd=root, capture_output=True, text=True, timeout=120)
        assert dry.returncode == 0 and "would freeze 4 messages" in dry.stdout, dry.stdout + dry.stderr
        assert "frozen" not in ex.bp() and not store.exists()
        r = subprocess.run(snap, cwd=root, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert ex.bp().count("*** frozen ***") == 4
        q = EximQueue(command=ex.argv(), env=ex.env())
        qms = sorted(q.list(), key=lambda m: support.Received("", [], q.content(m)).message_id or "")
        ex.relay_to(sink.port)
        LocalChannel(store / "channel").send(HOST, signed_body(instruction(INC, HOST, approved(qms[:3]),
                                                                           approved(qms[3:]), iid="rx"), keys.private),
                                             "rx")
        run = subprocess.run([sys.executable, "-m", "spoolsweep", "agent", "run", *mta, "--host", HOST, "--state-dir",
                              str(state), "--store", str(store), "--public-key", str(keys.public_file), "--deliver",
                              f"smtp://127.0.0.1:{ex.port}", "--once", "--wait", "0"], cwd=root, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        end = time.monotonic() + 20
        while len(sink.received) < 3 and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(0.5)
        assert sorted(sink.message_ids()) == [f"<rx-{i}@spoolsweep.test>" for i in range(3)], ex.bp() + ex.log()[-2500:]
        assert set(sink.message_ids().values()) == {1}
        rec = Receipt.model_validate_json(LocalStore(store).get(receipt_key(INC, HOST, "rx")))
        assert rec.counts()["replayed"] == 3 and rec.counts()["purged"] == 1
        assert [c["state"] for c in map(json.loads, (state / "courier.jsonl").read_text().splitlines())] == \
            ["dot", "ok"] * 3
        kept = list((state / "quarantine").glob("*.eml"))
        assert [p.name for p in kept] == [f"{qms[3].sha256}.eml"]
        assert hashlib.sha256(kept[0].read_bytes()).hexdigest() == qms[3].sha256
        assert ex.bp().strip() == "", "re-injected and purged mail left the spool"
