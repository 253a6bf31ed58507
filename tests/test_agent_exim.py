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
        assert {f.sha256 for f in found} == {qm.sha256 for qm in qms}
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
