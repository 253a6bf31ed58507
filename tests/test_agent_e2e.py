"""End to end with a real Postfix: flood it with a generated incident, snapshot with the agent, triage, approve,
run the agent, and check the sink got exactly the valid mail (byte for byte but for trace headers) and the
queue holds none of the spam."""

from __future__ import annotations

import hashlib
import tarfile
from datetime import UTC, datetime

import pytest
import zstandard

from agent.journal import Journal
from agent.mta.postfix import PostfixQueue
from agent.runner import Agent
from agent.take import take
from agent.upload import parse_destination
from pipeline.generator import generate
from pipeline.instructions import approval_from_manifest, instruction_from_approval, sign
from pipeline.models import Verdict
from pipeline.store import LocalStore
from pipeline.triage import triage
from tests.support import agent as support
from tests.support.postfix import available, private_postfix
from tests.test_agent_postfix import body_of, relay_to, wait_for

keys, mail_corpus, sink = support.keys, support.mail_corpus, support.sink
pytestmark = [pytest.mark.postfix, pytest.mark.slow]
INC, HOST = "inc-e2e", "mx1"


def _xtext(v: str) -> str:
    return "".join(c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}" for c in v)


def test_flood_snapshot_triage_approve_replay(tmp_path, mail_corpus, keys, sink, policy):
    if why := available():
        pytest.skip(why)
    ham, spam = mail_corpus
    inc = generate(ham, spam, n=200, seed=3)
    with private_postfix(users={}) as pf:
        for m in inc.messages:
            e = m.envelope
            xclient = {"ADDR": e.client_address or "127.0.0.1", "NAME": e.client_name or "[UNAVAILABLE]",
                       "HELO": e.helo or "localhost"}
            if e.sasl_username:
                xclient["LOGIN"] = _xtext(e.sasl_username)
            pf.send(e.mail_from or "", e.rcpt_to, m.data, xclient={k: _xtext(v) for k, v in xclient.items()})
        pf.wait_queued(len(inc.messages), timeout=120)

        q = PostfixQueue(pf.etc)
        journal = Journal(tmp_path / "state" / "journal.sqlite")
        s = take(q, "postfix", parse_destination(None, tmp_path / "store", INC, HOST), journal,
                 tmp_path / "state", keep_local=True)
        assert s.messages == len(inc.messages)

        manifest = triage(s.destination, policy, incident=INC, workers=1)
        assert manifest.totals.messages == len(inc.messages)
        assert manifest.snapshot.sha256 == s.archive_sha256, "the snapshot's digest goes into the manifest"
        approval = approval_from_manifest(manifest, "0" * 64, HOST, "tester", datetime.now(UTC), "appr-1")
        ins = instruction_from_approval(approval, datetime.now(UTC))
        valid = {m.message_id for m in manifest.messages if m.verdict is Verdict.valid}
        review = {m.queue_id for m in manifest.messages if m.verdict is Verdict.review}
        spam_ids = {m.queue_id for m in manifest.messages if m.verdict is Verdict.spam}
        assert valid and spam_ids

        # the snapshot's own bytes, to compare with what arrives
        snap = {}
        with open(s.archive, "rb") as fh, tarfile.open(
                fileobj=zstandard.ZstdDecompressor().stream_reader(fh), mode="r|") as tf:
            for ti in tf:
                if ti.name.startswith("messages/"):
                    snap[ti.name] = tf.extractfile(ti).read()

        relay_to(pf, sink.port)
        agent = Agent(host=HOST, queue=q, journal=journal, store=LocalStore(tmp_path / "store"),
                      public_key_pem=keys.public)
        r = agent.handle(sign(ins, keys.private, "k").model_dump_json())
        assert r.refused is None
        assert r.counts()["replayed"] == len(ins.replay) and r.counts()["purged"] == len(ins.purge)
        wait_for(sink, len(valid), pf)

        got = sink.message_ids()
        assert set(got) == valid and set(got.values()) == {1}, "exactly the valid mail, once each"
        by_mid = {x.message_id: x for x in sink.received}
        for m in manifest.messages:
            if m.verdict is Verdict.valid:
                arrived = by_mid[m.message_id].data
                assert body_of(arrived) == body_of(snap[m.path]), m.path
                assert hashlib.sha256(snap[m.path]).hexdigest() == m.sha256
        left = {x["queue_id"]: x["queue_name"] for x in pf.postqueue_json()}
        assert set(left) == review and set(left.values()) <= {"hold"}, "review stays frozen, spam is gone"
        assert not spam_ids & set(left)
