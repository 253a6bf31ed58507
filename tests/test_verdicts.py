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


def test_bounce_to_local_address_quoting_campaign_spam_is_spam() -> None:
    r = rec(mail_from="", rcpt_to=["x7kq@example.org"])
    r.bounce = True
    ctx = [context(r, POLICY)]
    assert message_decision(0, [r], ctx, None, True, {}).verdict is Verdict.spam
    # the same bounce quoting nothing we know is a user's own failed mail: valid
    assert message_decision(0, [r], ctx, None, False, {}).verdict is Verdict.valid


def test_relayed_from_a_client_that_fed_no_campaign_is_review() -> None:
    r = rec(mail_from="orders@shop.example", rcpt_to=["buyer@far.example"], client_address="198.51.100.80")
    ctx = [context(r, POLICY)]
    d = message_decision(0, [r], ctx, None, False, {}, abusive_ips={"203.0.113.9"})
    assert (d.verdict, d.reasons[0].code) == (Verdict.review, "relayed_unknown_source")
    d = message_decision(0, [r], ctx, None, False, {}, abusive_ips={"198.51.100.80"})
    assert (d.verdict, d.reasons[0].code) == (Verdict.spam, "relayed")


def test_a_relayed_campaign_from_one_client_and_one_sender_domain_is_review() -> None:
    from pipeline.verdicts import campaign_decision

    shop = [rec(mail_from="orders@shop.example", rcpt_to=[f"buyer{i}@far{i}.example"],
                client_address="198.51.100.80") for i in range(8)]
    d = campaign_decision(range(8), shop, [context(r, POLICY) for r in shop], POLICY, {})
    assert (d.verdict, d.reasons[0].code) == (Verdict.review, "relayed_single_source")
    botnet = [rec(mail_from=f"x{i}@far{i}.example", rcpt_to=[f"v{i}@else.example"],
                  client_address=f"203.0.113.{i + 1}") for i in range(8)]
    d = campaign_decision(range(8), botnet, [context(r, POLICY) for r in botnet], POLICY, {})
    assert (d.verdict, d.reasons[0].code) == (Verdict.spam, "relayed_campaign")
