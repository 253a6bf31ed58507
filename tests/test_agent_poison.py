"""Poison on the channel never stops the agent: each unreadable body becomes a refusal receipt and a dead letter."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings

from agent.journal import Journal
from agent.mta.pickup import PickupQueue
from agent.runner import UNVERIFIED, Agent
from pipeline.instructions import Receipt, canonical_json
from pipeline.store import LocalChannel, LocalStore
from tests.support import agent as support
from tests.support.agent import instruction, signed_body
from tests.support.fuzz import bodies, payloads, sign_payload

keys = support.keys
INC, HOST = "inc-poison", "mx1"


@pytest.fixture
def rig(tmp_path, keys):
    out = tmp_path / "Out"
    out.mkdir()
    q = PickupQueue(out)
    q.freeze()
    store = LocalStore(tmp_path / "store")
    agent = Agent(host=HOST, queue=q, journal=Journal(tmp_path / "state" / "journal.sqlite"), store=store,
                  public_key_pem=keys.public, known_incident=lambda _: True)
    return agent, store, LocalChannel(tmp_path / "channel", visibility_timeout=60), tmp_path


def _naive_expiry(keys) -> str:
    ins = instruction(INC, HOST, [], [], iid="naive")
    payload = json.loads(canonical_json(ins))
    payload["expires_at"] = "2099-01-01T00:00:00"  # no time zone
    return sign_payload(json.dumps(payload), keys.private)


POISON = {
    "deep JSON": lambda keys: '{"payload": ' + "[" * 200_000 + "]" * 200_000 + ', "signature": "", "key_id": ""}',
    "deep JSON in the payload": lambda keys: sign_payload('{"incident": ' + "[" * 100_000 + "]" * 100_000 + "}",
                                                   keys.private),
    "naive expires_at": _naive_expiry,
    "not JSON": lambda keys: "\x00\x01 not json",
}


@pytest.mark.parametrize("kind", [*POISON, "non-UTF-8 bytes"])
def test_poison_is_refused_dead_lettered_and_the_agent_goes_on(kind, rig, keys):
    agent, store, channel, tmp_path = rig
    if kind == "non-UTF-8 bytes":
        (tmp_path / "channel" / HOST).mkdir(parents=True)
        (tmp_path / "channel" / HOST / "0-poison.msg").write_bytes(b'{"payload": "\xff\xfe\xc0"}')
    else:
        channel.send(HOST, POISON[kind](keys), "0-poison")
    good = instruction(INC, HOST, [], [], iid="after-the-poison")
    channel.send(HOST, signed_body(good, keys.private), "1-good")
    receipts = agent.run(channel, once=True)
    assert [r.refused is not None for r in receipts] == [True, False], [r.refused for r in receipts]
    assert receipts[1].instruction_id == "after-the-poison"
    assert channel.receive(HOST) == [], "the poison left the channel instead of coming back forever"
    dead = list((tmp_path / "state" / "dead-letter").glob("*.msg"))
    assert len(dead) == 1 and dead[0].with_suffix(".reason").read_text().strip() == receipts[0].refused
    assert "\n" not in receipts[0].refused
    written = [k for k in store.list("receipts/") if "refused" in k]
    assert len(written) == 1


def test_refusal_of_an_unsigned_body_is_not_named_from_its_claims(rig, keys):
    agent, store, _, _ = rig
    forged = support.forged_body(instruction("inc-victim", HOST, [], [], iid="looks-legit"))
    r = agent.handle(forged)
    assert r.refused == "bad signature"
    assert (r.incident, r.instruction_id) == (UNVERIFIED, UNVERIFIED)
    [key] = store.list("receipts/")
    assert key.startswith(f"receipts/{UNVERIFIED}/{HOST}/{UNVERIFIED}.refused-") and "looks-legit" not in key
    # a signed but expired one is dispatch's own words: its names are kept
    old = instruction(INC, HOST, [], [], iid="stale", issued=datetime.now(UTC) - timedelta(days=9), ttl=60)
    r = agent.handle(signed_body(old, keys.private))
    assert r.refused.startswith("expired") and (r.incident, r.instruction_id) == (INC, "stale")


# -- fuzzing (the 10,000-message run is bench/agent_poison.py) --------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
@pytest.mark.slow
def test_fuzzed_channel_bodies_are_refused_not_fatal(rig, body):
    agent = rig[0]
    r = agent.handle(body)
    assert r.refused, "an unsigned body was carried out"
    assert "\n" not in r.refused


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=payloads)
@pytest.mark.slow
def test_fuzzed_signed_payloads_never_crash_the_agent(rig, keys, payload):
    """Signed with the real key (a bug or a stolen key in the cloud): still checked field by field."""
    agent = rig[0]
    r = agent.handle(sign_payload(payload, keys.private))
    assert isinstance(r, Receipt)
    if r.refused is None:
        assert not r.items or all(i.outcome.value in ("missing", "refused") for i in r.items)
