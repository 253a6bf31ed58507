"""Verdicts that never fail open: `valid` needs positive evidence, a foreign hop never names the client, and a
policy that finds our own hop in too little of the queue is said out loud (issue 13)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.journal import Journal
from agent.mta.pickup import PickupQueue
from agent.take import take
from agent.upload import parse_destination
from pipeline.generator import POLICY_TOML, generate, write_eml_folder
from pipeline.models import Envelope, ParsedRecord, ReceivedHop, Verdict
from pipeline.policy import SitePolicy, policy_from_toml
from pipeline.triage import triage
from pipeline.verdicts import context, message_decision, resolve_origin

DATA = Path(__file__).resolve().parent / "data"
POLICY = SitePolicy(local_domains=["example.org"], trusted_networks=["192.0.2.0/24", "127.0.0.0/8"],
                    server_names=["mx1.example.org"])
# the generated incidents' policy as an admin who never found out the server's HELO name would write it
NO_SERVER_NAMES = "\n".join(ln for ln in POLICY_TOML.splitlines() if not ln.startswith("server_names"))


def rec(fmt: str, mta: str | None = None, hops: list[ReceivedHop] | None = None, **env: object) -> ParsedRecord:
    r = ParsedRecord(path="p", sha256="0" * 64, size=1, format=fmt, mta=mta, envelope=Envelope(**env),
                     received=hops or [])
    resolve_origin(r, POLICY)
    return r


def verdict(r: ParsedRecord) -> tuple[Verdict, str]:
    d = message_decision(0, [r], [context(r, POLICY)], None, False, {})
    return d.verdict, d.reasons[-1].code


def test_no_client_and_no_hop_of_ours_is_not_local_submission() -> None:
    # a pickup-folder snapshot stores no client address: its absence says nothing
    r = rec("canonical", "pickup-dir", mail_from="x@far.example", rcpt_to=["v@else.example"],
            hops=[ReceivedHop(from_name="bot", from_ip="203.0.113.9", by="exch01")])
    assert verdict(r) == (Verdict.review, "origin_unknown")
    # a canonical snapshot that does not say which MTA it came from: the same
    r = rec("canonical", None, mail_from="x@far.example", rcpt_to=["v@else.example"])
    assert verdict(r) == (Verdict.review, "origin_unknown")


def test_local_submission_needs_evidence() -> None:
    # Postfix stores every network client's address: none stored is evidence of local submission
    assert verdict(rec("canonical", "postfix", mail_from="cron@example.org", rcpt_to=["ops@far.example"]))[0] \
        is Verdict.valid
    # our own hop with no "from" part says so for a queue that stores nothing
    hop = ReceivedHop(by="mx1.example.org")
    assert verdict(rec("eml", hops=[hop], mail_from="cron@example.org", rcpt_to=["ops@far.example"])) == (
        Verdict.valid, "trusted_origin")


def test_a_foreign_hop_never_supplies_the_client() -> None:
    foreign = ReceivedHop(from_name="x", from_ip="198.51.100.7", by="mail.sourceforge.example")
    r = rec("eml", hops=[foreign], mail_from="a@far.example", rcpt_to=["b@else.example"])
    assert r.envelope.client_address is None and r.our_hop is None
    assert verdict(r) == (Verdict.review, "origin_unknown")
    ours = ReceivedHop(from_name="x", from_ip="198.51.100.7", by="MX1")  # IIS writes its NetBIOS name
    r = rec("eml", hops=[ours, foreign], mail_from="a@far.example", rcpt_to=["b@else.example"])
    assert r.envelope.client_address == "198.51.100.7"
    assert r.envelope_inferred == ["client_address (our Received hop, by MX1)"]


@pytest.mark.parametrize("fmt", [None, "eml"])
def test_spamassassin_nice_ham_from_outside_is_never_spam(tmp_path: Path, fmt: str | None) -> None:
    """SpamAssassin's own t/data/nice (61 ham messages, Apache-2.0): in an .eml folder with no stored envelope,
    the top Received hop is some other server's. Before: read as eml, 17 of 59 came out spam (that hop's client
    taken as ours) and the two .txt messages were skipped; detected, 43 of the 61 files were skipped."""
    q = tmp_path / "Queue"
    shutil.copytree(DATA / "sa-nice", q)
    m = triage(q, POLICY, fmt=fmt, workers=1)
    assert m.totals.messages == 61 and not m.snapshot.skipped  # the .txt messages too
    assert m.totals.spam == 0, [(x.path, x.reasons[-1].text) for x in m.messages if x.verdict is Verdict.spam]
    for x in m.messages:
        if x.verdict is Verdict.valid:  # only on positive evidence
            assert {r.code for r in x.reasons} & {"inbound", "bounce_to_local", "trusted_origin", "authenticated"}
    assert any("match no Received hop" in w for w in m.warnings)


def _score(manifest, truth: Path) -> dict[str, int]:
    labels = {json.loads(ln)["path"]: json.loads(ln)["label"] for ln in truth.read_text().splitlines()}
    out = {"spam": 0, "valid": 0, "spam_as_valid": 0, "valid_as_spam": 0, "review": 0, "junk_out": 0}
    for x in manifest.messages:
        label = labels[x.path.rsplit("/", 1)[-1]]
        out[label] += 1
        out["review"] += x.verdict is Verdict.review
        out["spam_as_valid"] += label == "spam" and x.verdict is Verdict.valid
        out["valid_as_spam"] += label == "valid" and x.verdict is Verdict.spam
        # junk that would be replayed to someone outside (a bounce to a made-up local address stays here)
        out["junk_out"] += label == "spam" and x.verdict is Verdict.valid and any(
            not r.endswith(("@example.org", "@example.net")) for r in x.envelope.rcpt_to)
    return out


def _agent_snapshot(queue: Path, tmp_path: Path, site: dict | None = None) -> Path:
    dest = parse_destination(None, tmp_path / "store", "inc1", "mx1")
    take(PickupQueue(queue), "pickup-dir", dest, Journal(tmp_path / "state/journal.sqlite"), tmp_path / "state",
         site=site)
    return tmp_path / "store/incoming/inc1/mx1/snapshot.tar.zst"


@pytest.mark.slow
def test_agent_pickup_route_without_server_names_replays_no_junk(tmp_path: Path, corpus) -> None:
    """The issue's case: an IIS pickup queue snapshotted by the agent, a site.toml without server_names.
    Before: 90 % of the junk came out valid ("submitted from a trusted network or locally")."""
    ham, spam = corpus
    queue = write_eml_folder(generate(ham, spam, n=800, seed=13), tmp_path / "Queue")
    truth = tmp_path / "Queue.truth.jsonl"
    snap = _agent_snapshot(queue, tmp_path)
    m = triage(snap, policy_from_toml(NO_SERVER_NAMES), workers=1)
    s = _score(m, truth)
    assert s["valid_as_spam"] == 0, s
    assert s["spam_as_valid"] <= 0.005 * s["spam"], s
    # the server's name came from the queue itself, and the manifest says so
    assert m.policy is not None and m.policy.values["server_names"] == ["mx1.example.org"]
    assert m.policy.origins["server_names"].startswith("queue: the topmost Received line")
    assert s["review"] <= 0.05 * len(m.messages), s


@pytest.mark.slow
def test_agent_pickup_route_warns_when_no_hop_is_ours(tmp_path: Path, corpus) -> None:
    """A wrong server name (not a missing one): nothing is inferred, every message whose origin rests on our
    hop is held for review, and triage says why before anyone approves."""
    ham, spam = corpus
    queue = write_eml_folder(generate(ham, spam, n=300, seed=5), tmp_path / "Queue")
    snap = _agent_snapshot(queue, tmp_path)
    pol = policy_from_toml(NO_SERVER_NAMES + '\nserver_names = ["smtp.example.org"]\n')
    m = triage(snap, pol, workers=1)
    s = _score(m, tmp_path / "Queue.truth.jsonl")
    assert s["junk_out"] == 0 and s["valid_as_spam"] == 0, s
    [w] = [w for w in m.warnings if "match no Received hop" in w]
    assert "mx1.example.org" in w and "smtp.example.org" in w


def test_console_shows_the_warning_before_approval(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from console.app import create_app
    from pipeline.manifest_io import write_manifest
    from pipeline.queues import manifest_key

    q = tmp_path / "Queue"
    shutil.copytree(DATA / "sa-nice", q)
    m = triage(q, POLICY, incident="inc-w", workers=1)
    assert m.warnings
    store = tmp_path / "store"
    write_manifest(m, (store / manifest_key("inc-w")).parent)
    got = TestClient(create_app(store, "tok")).get("/api/incidents/inc-w",
                                                   headers={"Authorization": "Bearer tok"}).json()
    assert got["warnings"] == m.warnings and got["policy"]["source"] == "the policy given"
    js = (Path(__file__).resolve().parent.parent / "console/static/app.js").read_text()
    assert 'role: "alert", text: "Warning: " + w' in js  # shown at the top of the incident page
