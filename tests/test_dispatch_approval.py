"""Dispatch signs only what the manifest and the recorded decisions say: any other approval is refused, unsent."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from pipeline import queues
from pipeline.errors import PoisonEvent
from pipeline.instructions import ApprovedMessage, approval_from_manifest, generate_keypair
from pipeline.models import Envelope, Manifest, ManifestMessage, SnapshotInfo, Totals, Verdict
from pipeline.service.dispatch import dispatch
from pipeline.store import LocalChannel, LocalStore

INC, HOST = "inc-disp", "mx1"


def _msg(i: int, verdict: Verdict, campaign: int | None = None) -> ManifestMessage:
    sha = hashlib.sha256(f"m{i}".encode()).hexdigest()
    env = Envelope(mail_from=f"s{i}@example.net", rcpt_to=["r@example.org"])
    return ManifestMessage(id=f"id{i}", path=f"messages/{i}.eml", sha256=sha, size=10, format="eml",
                           queue_id=f"Q{i}", envelope=env,
                           subject=f"s{i}", campaign=campaign, verdict=verdict, confidence=0.9, reasons=[])


@pytest.fixture
def rig(tmp_path):
    msgs = [_msg(0, Verdict.valid), _msg(1, Verdict.spam, 7), _msg(2, Verdict.spam, 7), _msg(3, Verdict.review)]
    m = Manifest(incident=INC, snapshot=SnapshotInfo(source="x", format="eml", host=HOST), policy_sha256="0" * 64,
                 totals=Totals(messages=4, valid=1, spam=2, review=1, bytes=40, campaigns=1), campaigns=[],
                 accounts=[], sources=[], messages=msgs)
    store = LocalStore(tmp_path / "store")
    data = m.model_dump_json().encode()
    store.put(queues.manifest_key(INC), data)
    priv, _ = generate_keypair()
    return store, LocalChannel(tmp_path / "channel"), m, hashlib.sha256(data).hexdigest(), priv


def _put(store, approval) -> str:
    key = queues.approval_key(INC, approval.approval_id)
    store.put(key, approval.model_dump_json().encode())
    return key


def _approval(m, sha, changes=None, aid="a1"):
    return approval_from_manifest(m, sha, HOST, "alice", datetime.now(UTC), aid, changes=changes)


def test_an_honest_approval_is_signed(rig):
    store, channel, m, sha, priv = rig
    assert "1 replay, 2 purge" in dispatch(store, channel, _put(store, _approval(m, sha)), priv, "k").summary
    assert len(channel.receive(HOST)) == 1


def _forged(kind: str, m: Manifest, sha: str):
    a = _approval(m, sha)
    if kind == "a message not in the manifest, to replay":
        stranger = ApprovedMessage(id="evil", path="messages/evil.eml", sha256="e" * 64, queue_id="EVIL",
                                   envelope=Envelope(mail_from="x@evil.test", rcpt_to=["ceo@example.org"]))
        return a.model_copy(update={"replay": [*a.replay, stranger]})
    if kind == "a valid message to purge, no changes":
        return a.model_copy(update={"replay": [], "purge": [*a.purge, *a.replay]})
    if kind == "a review message to replay":
        return a.model_copy(update={"replay": [*a.replay, *a.hold], "hold": []})
    if kind == "a changed envelope":
        r0 = a.replay[0].model_copy(update={"envelope": Envelope(mail_from="x@y", rcpt_to=["all@example.org"])})
        return a.model_copy(update={"replay": [r0]})
    if kind == "changes that were never recorded":
        ch = [{"kind": "campaign", "target": "7", "verdict": "valid", "by": "mallory", "at": "2026-01-01", "note": ""}]
        return _approval(m, sha, changes=ch)
    if kind == "another host":
        return a.model_copy(update={"host": "mx2"})
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["a message not in the manifest, to replay", "a valid message to purge, no changes",
                                  "a review message to replay", "a changed envelope",
                                  "changes that were never recorded", "another host"])
def test_an_approval_that_differs_is_refused_and_nothing_is_sent(kind, rig):
    store, channel, m, sha, priv = rig
    key = _put(store, _forged(kind, m, sha))
    with pytest.raises(PoisonEvent):
        dispatch(store, channel, key, priv, "k")
    assert channel.receive("mx1") == [] and channel.receive("mx2") == []
    assert not list(store.list("instructions/"))


def test_recorded_decisions_are_applied_and_may_continue_after_approval(rig):
    store, channel, m, sha, priv = rig
    ch = [{"kind": "campaign", "target": "7", "verdict": "valid", "by": "bob", "at": "t1", "note": ""},
          {"kind": "message", "target": "id2", "verdict": "spam", "by": "bob", "at": "t2", "note": "still spam"}]
    later = {"kind": "message", "target": "id0", "verdict": "spam", "by": "bob", "at": "t3", "note": ""}
    store.put(queues.decisions_key(INC), json.dumps({"campaigns": {}, "messages": {}, "log": [*ch, later]}).encode())
    a = _approval(m, sha, changes=ch)
    assert sorted(x.id for x in a.replay) == ["id0", "id1"] and [x.id for x in a.purge] == ["id2"]
    assert "2 replay, 1 purge" in dispatch(store, channel, _put(store, a), priv, "k").summary


def test_an_approval_written_by_the_console_after_flips_is_signed(rig):
    """The console's own path (decide, then approve) makes exactly what dispatch computes again."""
    from console.data import Incidents

    store, channel, m, sha, priv = rig
    inc = Incidents(store)
    loaded = inc.load(INC)
    inc.decide(INC, "campaign", "7", Verdict.valid, "carol", "newsletter after all")
    inc.decide(INC, "message", "id0", Verdict.spam, "carol", "")
    key, new = inc.approve(INC, loaded, "carol", inc.summary(INC, loaded)["digest"])
    assert new
    assert "2 replay, 1 purge" in dispatch(store, channel, key, priv, "k").summary
    [msg] = channel.receive(HOST)
    payload = json.loads(json.loads(msg.body)["payload"])
    assert sorted(x["id"] for x in payload["replay"]) == ["id1", "id2"] and [x["id"] for x in payload["purge"]] == [
        "id0"]


def test_a_group_decision_and_an_undo_from_the_console_are_signed(tmp_path):
    """Review groups (and undoing a decision) mean the same to dispatch as to the console that recorded them."""
    from console.data import Incidents
    from pipeline.models import ReviewGroup

    msgs = [_msg(0, Verdict.review), _msg(1, Verdict.review), _msg(2, Verdict.review, 7), _msg(3, Verdict.valid)]
    for x in msgs[:3]:
        x.review_group = 1
    none = {"distinct": 0, "top": []}
    group = ReviewGroup.model_validate({"id": 1, "rule": "origin_unknown", "shared": {}, "summary": "three",
                                        "messages": 3, "campaigns": [7], "client_ips": none, "sender_domains": none,
                                        "recipient_domains": none, "accounts": none, "sample_ids": ["id0"],
                                        "sample_subjects": ["s0"], "suggested": "review",
                                        "suggested_reason": "test"})
    m = Manifest(incident=INC, snapshot=SnapshotInfo(source="x", format="eml", host=HOST), policy_sha256="0" * 64,
                 totals=Totals(messages=4, valid=1, spam=0, review=3, bytes=40, campaigns=1), campaigns=[],
                 accounts=[], sources=[], messages=msgs, review_groups=[group])
    store = LocalStore(tmp_path / "store")
    store.put(queues.manifest_key(INC), m.model_dump_json().encode())
    priv, _ = generate_keypair()
    channel = LocalChannel(tmp_path / "channel")
    inc = Incidents(store)
    loaded = inc.load(INC)
    inc.decide(INC, "group", "1", Verdict.spam, "dana", "all junk")
    inc.decide(INC, "message", "id1", Verdict.valid, "dana", "")
    inc.decide(INC, "message", "id1", None, "dana", "undo")  # undone: id1 goes with its group again
    inc.decide(INC, "campaign", "7", Verdict.valid, "dana", "")  # the group's decision is the narrower one
    assert inc.summary(INC, loaded)["purge"] == 3
    key, new = inc.approve(INC, loaded, "dana", inc.summary(INC, loaded)["digest"])
    assert new
    assert "1 replay, 3 purge" in dispatch(store, channel, key, priv, "k").summary
