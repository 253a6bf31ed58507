"""Verdict rules on hand-made records: each rule, and the cases that must stay out of `spam`."""

from __future__ import annotations

from pipeline.models import Envelope, ParsedRecord, ReceivedHop, Verdict
from pipeline.policy import SitePolicy
from pipeline.verdicts import context, message_decision

POLICY = SitePolicy(local_domains=["example.org"], trusted_networks=["192.0.2.0/24", "127.0.0.0/8"],
                    server_names=["mx1.example.org"])


def rec(fmt: str = "postfix", hop: ReceivedHop | None = None, **env: object) -> ParsedRecord:
    return ParsedRecord(path="p", sha256="0" * 64, size=1, format=fmt, envelope=Envelope(**env), our_hop=hop)


def decide(r: ParsedRecord) -> tuple[Verdict, str]:
    d = message_decision(0, [r], [context(r, POLICY)], None, False, {})
    return d.verdict, d.reasons[0].code


def test_relayed_is_spam() -> None:
    assert decide(rec(mail_from="a@far.example", rcpt_to=["b@else.example"], client_address="203.0.113.9")) == (
        Verdict.spam, "relayed")


def test_local_pickup_without_client_is_trusted() -> None:
    hop = ReceivedHop(by="mx1.example.org")  # "Received: by mx1.example.org (Postfix, from userid 0) id …"
    v, code = decide(rec(hop=hop, mail_from="cron@example.org", rcpt_to=["ops@far.example"]))
    assert (v, code) == (Verdict.valid, "trusted_origin")


def test_forwarding_is_not_relaying() -> None:
    r = rec(mail_from="a@far.example", rcpt_to=["me@gmail.example"], orig_rcpt_to=["alice@example.org"],
            client_address="203.0.113.9")
    assert decide(r)[0] is not Verdict.spam


def test_forged_local_sender_from_outside_is_review() -> None:
    # outside a campaign this may be one of our users whose client never authenticated: a human decides
    r = rec(mail_from="ceo@example.org", rcpt_to=["b@else.example"], client_address="203.0.113.9")
    assert decide(r) == (Verdict.review, "forged_local_sender")
    r2 = rec(mail_from="ceo@example.org", rcpt_to=["alice@example.org"], client_address="203.0.113.9")
    assert decide(r2) == (Verdict.review, "forged_local_sender")


def test_inbound_and_authenticated_are_valid() -> None:
    assert decide(rec(mail_from="x@far.example", rcpt_to=["alice@example.org"], client_address="203.0.113.9"))[0] \
        is Verdict.valid
    assert decide(rec(mail_from="alice@example.org", rcpt_to=["b@far.example"], client_address="198.51.100.1",
                      sasl_username="alice"))[0] is Verdict.valid


def test_defect_forces_review_even_when_relayed() -> None:
    r = rec(mail_from="a@far.example", rcpt_to=["b@else.example"], client_address="203.0.113.9")
    r.defects.append("postfix: truncated record")
    assert decide(r) == (Verdict.review, "defect")


def test_mixed_recipients_are_review() -> None:
    r = rec(mail_from="a@far.example", rcpt_to=["alice@example.org", "b@else.example"], client_address="203.0.113.9")
    assert decide(r) == (Verdict.review, "mixed_recipients")
