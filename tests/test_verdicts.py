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
    # the same bounce quoting nothing we know: nothing shows it is a user's own mail, so a human decides
    d = message_decision(0, [r], ctx, None, False, {})
    assert (d.verdict, d.reasons[0].code) == (Verdict.review, "bounce_to_local_unproven")


def _bounce_quoting(received: list[str]) -> bytes:
    hops = "".join(f"Received: {h}\n" for h in received)
    original = (f"{hops}From: Alice <alice@example.org>\nTo: bob@far.example\nSubject: minutes of the meeting\n"
                "Message-ID: <m1@example.org>\n\nHere are the minutes of Tuesday's meeting, as promised.\n")
    return ("From: MAILER-DAEMON@mx1.example.org (Mail Delivery System)\nTo: alice@example.org\n"
            "Subject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\n\n'
            "--b1\nContent-Type: text/plain\n\nYour message could not be delivered.\n\n"
            "--b1\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx1.example.org\n\n"
            f"--b1\nContent-Type: message/rfc822\n\n{original}\n--b1--\n").encode()


def _bounce_record(received: list[str]) -> ParsedRecord:
    """Our bounce to alice@example.org quoting her mail with these Received lines, parsed."""
    from pipeline.models import RawMessage
    from pipeline.parse import parse_found
    from pipeline.readers.base import Found

    data = _bounce_quoting(received)
    r = parse_found(Found(RawMessage(path="b.eml", envelope=Envelope(mail_from="", rcpt_to=["alice@example.org"],
                                                                     client_address="127.0.0.1")),
                          data, "0" * 64, len(data)), POLICY)
    assert r.bounce and len(r.bounced_original_received) == len(received)
    return r


_OURS = "by mx1.example.org (Postfix) with ESMTP id 1; Tue, 1 Dec 2026 10:00:00 +0000"


def test_bounce_to_local_address_is_valid_only_when_the_quoted_mail_came_from_our_side() -> None:
    def bounce_decision(received: list[str]) -> tuple[Verdict, str]:
        return decide(_bounce_record(received))

    ours = _OURS
    assert bounce_decision([f"from pc.example.org (pc.example.org [192.0.2.40]) {ours}"]) == (
        Verdict.valid, "bounce_to_local")
    assert bounce_decision([f"from laptop (laptop [198.51.100.7]) (Authenticated sender: alice) {ours}"]) == (
        Verdict.valid, "bounce_to_local")
    # a botnet client handed it to us; the spammer's own hops below ours (even one claiming our name and an
    # authenticated sender) are not evidence
    forged = "from x (x [198.51.100.9]) (Authenticated sender: alice) " + ours
    assert bounce_decision([f"from bot (bot [203.0.113.9]) {ours}", forged]) == (
        Verdict.review, "bounce_to_local_unproven")
    assert bounce_decision([]) == (Verdict.review, "bounce_to_local_unproven")


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


def test_a_campaign_of_our_users_mail_with_no_account_recorded_is_review_not_spam() -> None:
    """Our users' replies in one thread, through a queue that records no SMTP AUTH account: local senders from
    home addresses, no account. The queue shows the same senders submitting from the office (a trusted
    network), so nothing is evidence of spam; made-up local senders from a botnet are."""
    from pipeline.verdicts import campaign_decision, senders_seen_ours

    users = ["alice", "bob", "carol", "dave"]
    thread = [rec(mail_from=f"{u}@example.org", rcpt_to=[f"partner{i}@far.example"],
                  client_address=f"198.51.100.{i + 1}") for i, u in enumerate(users * 2)]
    office = [rec(mail_from=f"{u}@example.org", rcpt_to=["x@far.example"], client_address="192.0.2.20")
              for u in users]
    recs = thread + office
    ctxs = [context(r, POLICY) for r in recs]
    ours = senders_seen_ours(recs, ctxs)
    assert ours == {f"{u}@example.org" for u in users}
    d = campaign_decision(range(8), recs, ctxs, POLICY, {}, ours)
    assert (d.verdict, d.reasons[0].code) == (Verdict.review, "relayed_unattributed")
    assert d.reasons[0].text.startswith("relayed with no account recorded")
    # without the queue showing them as ours, the same copies are a run forging our domain
    assert campaign_decision(range(8), recs, ctxs, POLICY, {}).verdict is Verdict.spam
    forged = [rec(mail_from=f"q{i}x@example.org", rcpt_to=[f"v{i}@else.example"], client_address=f"203.0.113.{i + 1}")
              for i in range(8)]
    recs2 = forged + office
    ctxs2 = [context(r, POLICY) for r in recs2]
    d = campaign_decision(range(8), recs2, ctxs2, POLICY, {}, senders_seen_ours(recs2, ctxs2))
    assert (d.verdict, d.reasons[0].code) == (Verdict.spam, "relayed_campaign")


def test_a_bounce_about_our_users_own_mail_grouped_with_spam_is_review_unless_the_run_went_through_its_account(
) -> None:
    """A bounce to alice about mail our own side sent (our hop in the quote: her account, or a trusted
    network), grouped with a spam campaign: the run may have copied her mail (its subject, its Reply-To) or
    gone out through her account or network. Held for review, not purged, unless the campaign names the
    account in our hop stolen. A quote our hop got from a botnet client stays backscatter."""
    from pipeline.models import ReasonCode
    from pipeline.verdicts import Decision, R

    def in_spam(received: list[str], stolen: frozenset[str] = frozenset()) -> tuple[Verdict, list[str]]:
        r = _bounce_record(received)
        run = Decision(Verdict.spam, 0.95, [R(ReasonCode.relayed_campaign, "a relayed run", "spam")],
                       accounts=set(stolen))
        d = message_decision(0, [r], [context(r, POLICY)], run, True, {})
        return d.verdict, [x.code for x in d.reasons]

    authed = f"from laptop (laptop [198.51.100.7]) (Authenticated sender: alice) {_OURS}"
    trusted = f"from pc.example.org (pc.example.org [192.0.2.40]) {_OURS}"
    assert in_spam([authed]) == (Verdict.review, ["relayed_campaign", "own_bounce_in_spam_campaign"])
    assert in_spam([trusted]) == (Verdict.review, ["relayed_campaign", "own_bounce_in_spam_campaign"])
    assert in_spam([authed], stolen=frozenset({"alice"})) == (Verdict.spam, ["backscatter_local"])
    assert in_spam([authed], stolen=frozenset({"bob"}))[0] is Verdict.review
    assert in_spam([f"from bot (bot [203.0.113.9]) {_OURS}"]) == (Verdict.spam, ["backscatter_local"])


def test_a_one_client_run_that_breaks_its_words_to_evade_filters_is_spam_on_both_routes() -> None:
    """Our own shop relaying from an address missing from trusted_networks and a phish relayed by one hijacked
    server look alike by where they come from; only the phish breaks its words (vi<!--x-->agra) to slip past
    filters. A third of the relayed copies doing so is evidence; fewer is not (a shop may relay a customer's
    text). The same decision from the records and from the columns of the map-reduce route."""
    import numpy as np

    from pipeline.staged import decide_campaigns, facts, plan_records
    from pipeline.verdicts import campaign_decision

    def run(evasive: int) -> list[tuple[Verdict, str, str]]:
        copies = [rec(mail_from="orders@shop.example", rcpt_to=[f"buyer{i}@far{i}.example"],
                      client_address="198.51.100.80") for i in range(9)]
        for i, r in enumerate(copies):
            r.id = f"m{i}"
            r.evasion = ["comment_in_word"] if i < evasive else []
        d = campaign_decision(range(9), copies, [context(r, POLICY) for r in copies], POLICY, {})
        plan = plan_records(copies, POLICY, None, labels=np.ones(9, dtype=np.int64))
        c = decide_campaigns([facts(copies, plan, "0")], plan).campaigns[1]
        return [(x.verdict, x.reasons[0].code, x.reasons[0].text) for x in (d, c)]

    held = (Verdict.review, "relayed_single_source")
    for evasive, want in ((0, held), (2, held), (3, (Verdict.spam, "relayed_campaign"))):
        got = run(evasive)
        assert got[0] == got[1], f"{evasive} evasive: the routes differ: {got}"
        assert got[0][:2] == want, f"{evasive} evasive: {got[0]}"
    assert "3 of those 9 copies break words" in run(3)[0][2]


def test_a_queue_behind_a_local_content_filter_is_judged_by_the_client_that_handed_mail_to_us() -> None:
    # Postfix with amavis (or a milter that resubmits) queues every message again from 127.0.0.1: the queue's
    # client is loopback, trusted, and the relayed spam of a 3,000-message spamware queue came out valid
    # (2,280 of 2,520, `trusted_bulk`). Our own hop below the re-injection names the real client.
    from pipeline.verdicts import resolved

    reinjected = ReceivedHop(from_name="localhost", from_ip="127.0.0.1", by="mx1.example.org", protocol="ESMTP")
    amavis = ReceivedHop(from_name="mx1.example.org", from_ip="127.0.0.1", by="localhost", protocol="ESMTP")
    spam_hop = ReceivedHop(from_name="bot.example", from_ip="203.0.113.9", by="mx1.example.org", protocol="ESMTP")
    user_hop = ReceivedHop(from_name="laptop", from_ip="198.51.100.7", by="mx1.example.org", protocol="ESMTPSA",
                           authenticated=True)
    office = ReceivedHop(from_name="pc", from_ip="192.0.2.20", by="mx1.example.org", protocol="ESMTP")
    forged = ReceivedHop(from_name="x", from_ip="198.51.100.1", by="mx1.example.org", protocol="ESMTP")
    foreign = ReceivedHop(from_name="y", from_ip="192.0.2.200", by="relay.far.example", protocol="SMTP")

    def via(received: list[ReceivedHop], fmt: str = "postfix", list_id: str = "", **env: object) -> ParsedRecord:
        client = {"client_address": "127.0.0.1", "client_name": "localhost"} if fmt == "postfix" else {}
        r = rec(fmt, **client, **env)
        r.received, r.list_id = received, list_id
        return resolved(r, POLICY)

    relayed = {"mail_from": "a@far.example", "rcpt_to": ["b@else.example"]}
    spam = via([reinjected, spam_hop], **relayed)
    assert spam.envelope.client_address == "203.0.113.9" and decide(spam) == (Verdict.spam, "relayed")
    assert spam.envelope_inferred[0].startswith("client_address (our Received hop by mx1.example.org, below the "
                                                "re-injection from 127.0.0.1")
    # amavisd-new writes a hop of its own ("by localhost") between; an IIS or .eml queue reads the client from
    # our hop alone, and the same filter stands between
    assert decide(via([reinjected, amavis, spam_hop], **relayed)) == (Verdict.spam, "relayed")
    assert decide(via([reinjected, amavis, spam_hop], fmt="eml", **relayed)) == (Verdict.spam, "relayed")
    # a hop that names the account hands its client and account on, for the account's analysis (a stolen
    # password sends from everywhere)
    named = via([reinjected, user_hop.model_copy(update={"auth_user": "alice"})], mail_from="alice@example.org",
                rcpt_to=["b@far.example"])
    assert (named.envelope.client_address, named.envelope.sasl_username) == ("198.51.100.7", "alice")
    assert decide(named) == (Verdict.valid, "authenticated")
    # one that only says "ESMTPSA" (Postfix's default) hands on its client, and no account: a user of ours, or a
    # stolen password's run from a botnet, which as the loopback client's was the host's own mail (trusted_bulk)
    user = via([reinjected, user_hop], mail_from="alice@example.org", rcpt_to=["b@far.example"])
    assert (user.envelope.client_address, user.envelope.sasl_username) == ("198.51.100.7", None)
    assert user.envelope_inferred[1].startswith("sasl_username unknown (the same hop, by mx1.example.org, says")
    assert decide(user) == (Verdict.review, "forged_local_sender")
    assert decide(via([reinjected, user_hop], **relayed)) == (Verdict.spam, "relayed")
    assert decide(via([reinjected, office], mail_from="bob@example.org", rcpt_to=["b@far.example"]))[0] \
        is Verdict.valid
    # inbound mail behind the filter is still inbound
    assert decide(via([reinjected, spam_hop], mail_from="a@far.example", rcpt_to=["alice@example.org"]))[0] \
        is Verdict.valid
    # a list server on the host (Mailman) resends each post on loopback from the list's local address: its own
    # sending, not a forged local sender from the poster's server
    post = {"mail_from": "python-list-bounces@example.org", "rcpt_to": ["b@far.example", "c@else.example"]}
    assert decide(via([reinjected, forged], list_id="python-list.example.org", **post)) == (Verdict.valid,
                                                                                             "trusted_origin")
    # and so is one with VERP (a bounce address per member), or a list server naming its addresses otherwise
    for sender in ("python-list-bounces+b=far.example@example.org", "bounce+b==far.example@example.org"):
        assert decide(via([reinjected, forged], list_id="python-list.example.org", mail_from=sender,
                          rcpt_to=["b@far.example"])) == (Verdict.valid, "trusted_origin")
    # a relayed spam carrying some other list's List-Id (a tenth of the public corpus's spam_2 does) and forging
    # a local sender is no post a list of ours sends on
    for list_id, sender in (("offers.lists.bulk.example", "python-list-bounces@example.org"),
                            ("python-list.example.org.far.example", "ceo@example.org"),
                            ("example.org", "python-list-bounces@example.org")):
        spam = via([reinjected, forged], list_id=list_id, mail_from=sender, rcpt_to=post["rcpt_to"])
        assert spam.envelope.client_address == "198.51.100.1", list_id
        assert decide(spam) == (Verdict.review, "forged_local_sender"), list_id
    # an application on the host that sends through SMTP on loopback: nothing below, still our own mail
    app = via([reinjected], mail_from="shop@example.org", rcpt_to=["b@far.example"])
    assert app.envelope.client_address == "127.0.0.1" and decide(app) == (Verdict.valid, "trusted_origin")
    # a hop "by" us below a foreign one is anyone's to write: the walk ends at the foreign hop
    written = via([reinjected, foreign, forged], **relayed)
    assert written.envelope.client_address == "127.0.0.1"
    # SpamAssassin's spamc piped to the MTA's sendmail submits every message again on the host: no client,
    # our hop without a "from" part on top; still in maildrop/ when the queue was frozen before pickup read it
    on_host = ReceivedHop(by="mx1.example.org")
    for where in ({}, {"queue_name": "maildrop"}):
        r = rec(mail_from="a@far.example", rcpt_to=["b@else.example"], **where)
        r.received = [on_host, spam_hop]
        assert decide(resolved(r, POLICY)) == (Verdict.spam, "relayed"), where
    cron = rec(hop=on_host, mail_from="cron@example.org", rcpt_to=["ops@far.example"], queue_name="maildrop")
    cron.received = [on_host]
    assert decide(resolved(cron, POLICY)) == (Verdict.valid, "trusted_origin")


def test_behind_a_filter_that_forwards_its_client_a_login_our_hop_shows_from_that_client_is_its_own() -> None:
    # amavis with XFORWARD (as Debian sets it up): the queue keeps the client, loses its SMTP AUTH login, and our
    # topmost hop still says loopback; our hop below from that same client says whether it signed in, and as whom
    from pipeline.verdicts import resolved

    reinjected = ReceivedHop(from_name="localhost", from_ip="127.0.0.1", by="mx1.example.org", protocol="ESMTP")
    login = ReceivedHop(from_name="laptop", from_ip="198.51.100.7", by="mx1.example.org", protocol="ESMTPSA",
                        authenticated=True)

    def via(below: ReceivedHop, client: str = "198.51.100.7", **env: object) -> ParsedRecord:
        r = rec(client_address=client, **env)
        r.received = [reinjected, below]
        return resolved(r, POLICY)

    mail = {"mail_from": "alice@example.org", "rcpt_to": ["b@far.example"]}
    named = via(login.model_copy(update={"auth_user": "alice"}), **mail)
    assert named.envelope.sasl_username == "alice" and decide(named) == (Verdict.valid, "authenticated")
    assert "forwarded with XFORWARD" in named.envelope_inferred[0]
    unnamed = via(login, **mail)
    assert unnamed.envelope.sasl_username is None and context(unnamed, POLICY).signed_in
    assert decide(unnamed) == (Verdict.review, "forged_local_sender")
    # the hop below from another client, or not signed in: nothing to add (a relay is judged as ever)
    assert via(login, client="203.0.113.9", **mail).envelope_inferred == []
    relay = via(ReceivedHop(from_name="bot", from_ip="203.0.113.9", by="mx1.example.org", protocol="ESMTP"),
                client="203.0.113.9", mail_from="a@far.example", rcpt_to=["b@else.example"])
    assert relay.envelope_inferred == [] and decide(relay) == (Verdict.spam, "relayed")


def test_a_bounce_quoting_a_filtered_relay_is_not_of_our_own_mail() -> None:

    reinjected = ReceivedHop(from_name="localhost", from_ip="127.0.0.1", by="mx1.example.org", protocol="ESMTP")
    spam_hop = ReceivedHop(from_name="bot.example", from_ip="203.0.113.9", by="mx1.example.org", protocol="ESMTP")
    user_hop = ReceivedHop(from_name="laptop", from_ip="198.51.100.7", by="mx1.example.org", protocol="ESMTPA",
                           authenticated=True)

    def bounce(quoted: list[ReceivedHop]) -> str | None:
        r = rec(mail_from="", rcpt_to=["alice@example.org"], client_address="198.51.100.50")
        r.bounce, r.bounced_original_received = True, quoted
        return context(r, POLICY).bounced_ours

    assert bounce([reinjected, spam_hop]) is None
    # a signed-in user's mail behind the filter, or an application's on the host, is ours as before
    assert bounce([reinjected, user_hop]) == "authenticated as a local account on mx1.example.org"
    assert bounce([reinjected]) == "from 127.0.0.1 (a trusted network) to mx1.example.org"


def _one_campaign_on_both_routes(copies: list[ParsedRecord]) -> list[tuple[Verdict, str]]:
    """The decision for copies that are one campaign: from the records, and from the columns of the map-reduce."""
    import numpy as np

    from pipeline.staged import decide_campaigns, facts, plan_records
    from pipeline.verdicts import campaign_decision, senders_seen_ours

    ctxs = [context(r, POLICY) for r in copies]
    d = campaign_decision(range(len(copies)), copies, ctxs, POLICY, {}, senders_seen_ours(copies, ctxs))
    plan = plan_records(copies, POLICY, None, labels=np.ones(len(copies), dtype=np.int64))
    c = decide_campaigns([facts(copies, plan, "0")], plan).campaigns[1]
    return [(x.verdict, x.reasons[0].code) for x in (d, c)]


def test_a_stolen_password_behind_a_filter_whose_hop_names_no_account_is_not_the_hosts_own_mail() -> None:
    """Postfix names the account in its Received line only with smtpd_sasl_authenticated_header = yes; behind a
    content filter that hands mail back on loopback, "with ESMTPSA" is all the queue keeps of a login. A stolen
    password's run from a botnet then came out as the loopback client's: valid (`trusted_bulk`; 240 of a
    3,000-message spamware queue). Its clients are the ones our hop names now, with no account: the run relayed
    for senders not ours is spam, and our own users' run from their own local addresses is held, never purged
    (one account for every such login would call a newsletter five users forward a stolen password's run). The
    same on both routes: the records', and the columns' of the map-reduce."""
    from pipeline.verdicts import resolved

    reinjected = ReceivedHop(from_name="localhost", from_ip="127.0.0.1", by="mx1.example.org", protocol="ESMTP")

    def run(senders: list[str]) -> list[tuple[Verdict, str]]:
        copies = []
        for i, sender in enumerate(senders):
            r = rec(mail_from=sender, rcpt_to=[f"x{i}@far{i}.example"], client_address="127.0.0.1",
                    client_name="localhost")
            r.id = f"m{i}"
            r.received = [reinjected, ReceivedHop(from_name="h", from_ip=f"198.51.100.{10 + i}", by="mx1.example.org",
                                                  protocol="ESMTPSA", authenticated=True)]
            copies.append(resolved(r, POLICY))
        return _one_campaign_on_both_routes(copies)

    stolen = run([f"promo{i}@bulk{i % 3}.example" for i in range(12)])
    assert stolen == [(Verdict.spam, "relayed_campaign")] * 2
    ours = run([f"{u}@example.org" for u in ("alice", "bob", "carol", "dave", "erin")])
    assert ours == [(Verdict.review, "relayed_unattributed")] * 2


def test_a_login_our_hop_does_not_name_is_no_account_of_its_own() -> None:
    """A queue that stores no client or account (an .eml folder, Maildir, mbox) takes them from our Received hop.
    One that says only "with ESMTPSA" made every such login one account, "(authenticated)": five users forwarding
    one newsletter from five addresses were then a stolen password's run, and purged (16 valid messages of a
    3,000-message queue). No account now: our users' run from their own addresses is held, a run for senders not
    ours is spam, on both routes."""
    from pipeline.verdicts import resolved

    def run(senders: list[str]) -> list[tuple[Verdict, str]]:
        copies = []
        for i, sender in enumerate(senders):
            r = rec("eml", mail_from=sender, rcpt_to=[f"x{i}@far{i}.example"])
            r.id = f"m{i}"
            r.received = [ReceivedHop(from_name="h", from_ip=f"198.51.100.{10 + i}", by="mx1.example.org",
                                      protocol="ESMTPSA", authenticated=True)]
            copies.append(resolved(r, POLICY))
        return _one_campaign_on_both_routes(copies)

    ours = run([f"{u}@example.org" for u in ("alice", "bob", "carol", "dave", "erin", "frank")])
    assert ours == [(Verdict.review, "relayed_unattributed")] * 2
    assert run([f"promo{i}@bulk{i % 3}.example" for i in range(12)]) == [(Verdict.spam, "relayed_campaign")] * 2
    # with the client known already, the manifest still says what the hop said
    r = rec("eml", client_address="198.51.100.7", mail_from="alice@example.org", rcpt_to=["b@far.example"])
    r.received = [ReceivedHop(from_name="h", from_ip="198.51.100.7", by="mx1.example.org", authenticated=True)]
    r = resolved(r, POLICY)
    assert r.envelope_inferred[0].startswith("sasl_username unknown (our Received hop, by mx1.example.org")
    assert context(r, POLICY).signed_in and decide(r) == (Verdict.review, "forged_local_sender")


def test_a_stolen_password_used_from_one_address_is_no_newsletter_for_that() -> None:
    """A run through an account from one or two addresses was a newsletter (`authenticated_bulk`, valid): an
    attacker with a stolen password needs one server, and a quarter of the public corpus's spam_2 carries the
    List-Unsubscribe or Precedence: bulk that counted as a newsletter's too, as did a phish's several accounts.
    Valid only where each account sends from a trusted network or from an address it also uses outside
    campaigns; else held (`authenticated_bulk_unclear`). The same on both routes."""
    import numpy as np

    from pipeline.staged import decide_campaigns, facts, plan_records
    from pipeline.verdicts import AccountProfile, campaign_decision

    def run(ip: str, accounts: tuple[str, ...] = ("carol",), bulk: bool = False) -> list[tuple[Verdict, str]]:
        copies = []
        for i in range(12):
            account = accounts[i % len(accounts)]
            r = rec(mail_from=f"{account}@example.org", rcpt_to=[f"x{i}@far{i}.example"], client_address=ip,
                    sasl_username=account)
            r.id, r.list_unsubscribe = f"m{i}", bulk
            copies.append(r)
        # carol's own mail outside the run, from her home address
        own = rec(mail_from="carol@example.org", rcpt_to=["mum@far.example"], client_address="198.51.100.7",
                  sasl_username="carol")
        own.id = "own"
        recs = [*copies, own]
        ctxs = [context(r, POLICY) for r in recs]
        labels = np.asarray([1] * 12 + [-1], dtype=np.int64)
        profiles = {a: AccountProfile(a, normal_ips={"198.51.100.7"} if a == "carol" else set()) for a in accounts}
        d = campaign_decision(range(12), recs, ctxs, POLICY, profiles)
        plan = plan_records(recs, POLICY, None, labels=labels)
        c = decide_campaigns([facts(recs, plan, "0")], plan).campaigns[1]
        # and each copy: signed in, which alone made it valid, it is held with its run
        copy = message_decision(0, recs, ctxs, d, False, profiles)
        return [(x.verdict, x.reasons[0].code) for x in (d, c, copy)]

    held = [(Verdict.review, "authenticated_bulk_unclear")] * 3
    newsletter = [(Verdict.valid, "authenticated_bulk")] * 3
    assert run("203.0.113.50") == held
    assert run("203.0.113.50", bulk=True) == held
    assert run("203.0.113.50", accounts=("carol", "dave")) == held
    assert run("198.51.100.7") == newsletter  # where carol sends her own mail from
    assert run("192.0.2.30", bulk=True) == newsletter  # the office, a trusted network
