"""Parsing: the fast path and the careful path agree, and what the fast parser refuses is still read."""

from __future__ import annotations

import pytest

from pipeline import parse
from pipeline.models import Envelope, RawMessage
from pipeline.policy import SitePolicy
from pipeline.readers.base import Found

POLICY = SitePolicy(local_domains=["example.org"], server_names=["mx1.example.org"])


def _found(data: bytes, mail_from: str | None = None) -> Found:
    return Found(RawMessage(path="m.eml", envelope=Envelope(mail_from=mail_from)), data, "0" * 64, len(data))


@pytest.fixture
def careful(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parse, "_fast", None)


@pytest.fixture(params=["fast", "careful"])
def either_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test runs twice: with the fast parser, and with the standard library's (the careful path)."""
    if request.param == "careful":
        monkeypatch.setattr(parse, "_fast", None)


@pytest.mark.slow
def test_paths_agree_on_real_mail(corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    ham, spam = corpus
    sample = ham[:150] + spam[:150]
    fast = [parse.parse_found(_found(d), POLICY) for d in sample]
    monkeypatch.setattr(parse, "_fast", None)
    slow = [parse.parse_found(_found(d), POLICY) for d in sample]
    same_subject = sum(a.subject == b.subject for a, b in zip(fast, slow, strict=True))
    same_text = sum(a.text == b.text for a, b in zip(fast, slow, strict=True))
    assert same_subject >= 0.95 * len(sample)
    assert same_text >= 0.9 * len(sample)
    assert [a.message_id for a in fast] == [b.message_id for b in slow]


BOUNCE = (b"From: MAILER-DAEMON@mx1.example.org (Mail Delivery System)\nSubject: Undelivered Mail Returned to "
          b"Sender\nTo: victim@far.example\nMIME-Version: 1.0\nContent-Type: multipart/report; "
          b"report-type=delivery-status; boundary=\"B\"\n\n--B\nContent-Type: text/plain\n\nsorry\n--B\n"
          b"Content-Type: message/rfc822\n\nFrom: forged@far.example\nSubject: Cheap pills\n\nBuy cheap pills "
          b"now at our pharmacy\n--B--\n")


def test_bounce_quotes_original(either_path: None) -> None:
    r = parse.parse_found(_found(BOUNCE, mail_from=""), POLICY)
    assert r.bounce
    assert r.bounced_original_sender == "forged@far.example"
    assert "cheap pills" in r.bounced_original_text and r.text == r.bounced_original_text


def test_fast_parser_refusal_falls_back() -> None:
    data = b"Subject: broken\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n@@@not base64!!\n"
    r = parse.parse_found(_found(data), POLICY)
    assert r.subject == "broken" and not any(d.startswith("unparseable") for d in r.defects)


def test_received_chain_and_auth(careful: None) -> None:
    data = (b"Received: from laptop (host.isp.example [198.51.100.7])\n\t(Authenticated sender: alice)\n\tby "
            b"mx1.example.org (Postfix) with ESMTPSA id ABC\nReceived: from x by y with SMTP\n"
            b"From: alice@example.org\nTo: bob@far.example\nSubject: hi\n\nbody\n")
    r = parse.parse_found(_found(data), POLICY)
    assert r.our_hop is not None and r.our_hop.from_ip == "198.51.100.7" and r.our_hop.authenticated
    # the client and the account come from our hop at triage, once the whole policy is known
    from pipeline.verdicts import resolve_origin

    assert r.envelope.client_address is None
    resolve_origin(r, POLICY)
    assert r.envelope.sasl_username == "alice" and r.envelope.client_address == "198.51.100.7"
    assert r.envelope.rcpt_to == ["bob@far.example"]


def test_exims_hop_of_a_submission_on_the_host_names_no_host() -> None:
    # Exim writes the login of whoever ran it ("from root by", "from Debian-exim by" for SpamAssassin's pipe
    # handing each message back with -oMr spam-scanned -bS): a submission on the host, like Postfix's hop
    # without a "from" part (pipeline.origin.on_host); a client on the network always comes with its address
    from pipeline.origin import on_host

    for login, proto in (("root", "local"), ("Debian-exim", "spam-scanned")):
        hop = parse.parse_received(f"from {login}\n\tby mx1.example.org with {proto} (Exim 4.96)\n\t(envelope-from "
                                   "<a@far.example>)\n\tid 1xZh4R-0000ee-0z; Sat, 05 Dec 2026 04:08:23 +0000")
        assert (hop.from_name, hop.from_ip, hop.by) == (None, None, "mx1.example.org") and on_host(hop), login
    net = parse.parse_received("from bot.example ([203.0.113.10] ident=root)\n\tby mx1.example.org with esmtp "
                               "(Exim 4.96)\n\tid 1xZh4R-0000eS-0r")
    assert (net.from_name, net.from_ip) == ("bot.example", "203.0.113.10") and not on_host(net)
    # another MTA's "from x by y" is left as it reads
    assert parse.parse_received("from x by y.example with SMTP id 1").from_name == "x"


_EVASIVE = (b"From: a@far.example\nSubject: hi\nMIME-Version: 1.0\nContent-Type: multipart/alternative; "
            b"boundary=\"A\"\n\n--A\nContent-Type: text/plain; charset=utf-8\n\nCheap pills now\n--A\n"
            b"Content-Type: text/html; charset=utf-8\n\n<p>Cheap vi<!--k3j9-->agra now</p>\n--A--\n")


def test_words_broken_to_evade_filters_are_recorded_on_both_paths(either_path: None) -> None:
    assert parse.parse_found(_found(_EVASIVE), POLICY).evasion == ["comment_in_word"]
    # React's empty separator between two text nodes is a renderer's, not an evasion
    assert parse.parse_found(_found(_EVASIVE.replace(b"<!--k3j9-->", b"<!-- -->")), POLICY).evasion == []
    # a bounce's words are the notice's; what it quotes is not its own writing
    bounce = BOUNCE.replace(b"Buy cheap pills now", b"<p>Buy che<!--x-->ap pills now</p>").replace(
        b"Content-Type: message/rfc822\n\n", b"Content-Type: message/rfc822\n\nContent-Type: text/html\n")
    assert parse.parse_found(_found(bounce, mail_from=""), POLICY).evasion == []


def test_only_words_broken_as_no_writer_but_an_evader_breaks_them_count() -> None:
    from pipeline.normalise import evasion

    assert evasion("<p>vi<!-- x -->agra</p>") == ["comment_in_word"]
    assert evasion("<!--x-->agra and vi<!--x-->") == []  # no letter on one side
    assert evasion("<p>Hello <!-- name -->Ann</p><!--[if mso]><table><![endif]-->") == []
    assert evasion("<p>Dear Ann<!--[if mso]>&nbsp;<![endif]-->Smith</p>") == []  # Outlook's, not an evader's
    # templates break addresses and dates with zero-width non-joiners so that mail apps do not link them
    assert evasion("<p>123 Add&zwnj;ress line, St\u200cate, Coun\u200ctry</p>") == []


def _cut_bounce(i: int, quote: bytes) -> bytes:
    return (b"From: MAILER-DAEMON@mx1.example.org (Mail Delivery System)\n"
            b"Subject: Undelivered Mail Returned to Sender\nTo: user%d@example.org\nMIME-Version: 1.0\n"
            b"Content-Type: multipart/report; report-type=delivery-status; "
            b"boundary=\"B\"\n\n--B\nContent-Type: text/plain\n\nThis is the mail system at host mx1.example.org.\n\n"
            b"I'm sorry to have to inform you that your message could not\nbe delivered to one or more recipients. "
            b"See https://help.example.org/bounces for help.\n\n<victim%d@far%d.example>: host mx.far%d.example said: "
            b"550 5.1.1 user unknown\n--B\nContent-Type: message/rfc822\n\n%s--B--\n") % (i, i, i, i, quote)


def test_a_bounce_quoting_nothing_to_compare_is_not_grouped_by_its_notice(either_path: None) -> None:
    """Bounces of unrelated runs, each quoting a copy cut inside its headers, share only our own notice: its
    words and its links are the same in every bounce this server writes, so they must not group them."""
    import hashlib

    import numpy as np

    from pipeline.staged import group_labels

    def found(data: bytes, mail_from: str | None = None) -> Found:
        return Found(RawMessage(path="m.eml", envelope=Envelope(mail_from=mail_from)), data,
                     hashlib.sha256(data).hexdigest(), len(data))

    bounces = [parse.parse_found(found(_cut_bounce(i, b"Received: from bot%d.far.example (bot%d.far.example "
                                                      b"[203.0.113.%d])\n\tby mx1.example.org (Postfix) with ESMTP id "
                                                      b"A%d\nFrom: \"Someone %d\" <x%d@far.example>\n"
                                                      % ((i,) * 6)), mail_from=""), POLICY)
               for i in range(8)]
    assert all(r.bounce and r.text == "" and r.keys == [] for r in bounces), [(r.text, r.keys) for r in bounces[:1]]
    labels = group_labels(bounces, POLICY)
    assert len(np.unique(labels)) == len(bounces), labels
    # the same bounce twice in the queue is still one message twice
    assert len(np.unique(group_labels([*bounces, bounces[0]], POLICY))) == len(bounces)
    # quoting nothing at all: no words, no links of the notice either
    bare = parse.parse_found(_found(_cut_bounce(9, b"").replace(b"--B\nContent-Type: message/rfc822\n\n--B--",
                                                                 b"--B--")), POLICY)
    assert bare.bounce and (bare.text, bare.keys) == ("", [])


def test_a_mailing_lists_copy_is_known_by_its_list_id_on_both_paths(either_path: None) -> None:
    # what tells a list server's resend on loopback from a content filter's (pipeline.verdicts._behind_filter)
    post = (b"From: poster@far.example\nTo: python-list@example.org\nSubject: a question\n"
            b"List-Id: General discussion <python-list.example.org>\n\nHello list\n")
    assert parse.parse_found(_found(post), POLICY).list_id == "python-list.example.org"
    assert parse.parse_found(_found(post.replace(b"List-Id", b"X-List")), POLICY).list_id == ""
    bare = post.replace(b"General discussion <python-list.example.org>", b"Python-List.Example.org")
    assert parse.parse_found(_found(bare), POLICY).list_id == "python-list.example.org"
    assert parse.parse_found(_found(post.replace(b"<python-list.example.org>", b"")), POLICY).list_id == ""
