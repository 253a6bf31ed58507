"""Hostile text shown to the admin: a SASL login with bidi or control characters cannot garble the advice."""

from __future__ import annotations

from pipeline.models import Envelope, ParsedRecord, SnapshotInfo
from pipeline.policy import SitePolicy
from pipeline.text import has_unsafe, neutral
from pipeline.triage import assign_ids, decide

POLICY = SitePolicy(local_domains=["example.org"], trusted_networks=["192.0.2.0/24", "127.0.0.0/8"],
                    server_names=["mx1.example.org"])
LOGIN = "bob\u202egnp.exe\u202c\nlooks fine"


def test_account_advice_shows_the_login_with_its_marks_escaped():
    recs = [ParsedRecord(path=f"m{i}", sha256=f"{i:064x}", size=1, format="postfix", text=f"hello {i}",
                         envelope=Envelope(mail_from="bob@example.org", rcpt_to=[f"x{i}@example.net"],
                                           sasl_username=LOGIN, client_address=f"198.51.100.{i}"))
            for i in range(5)]
    assign_ids(recs)
    m = decide(recs, POLICY, "inc1", SnapshotInfo(source="x", format="postfix"))
    [acct] = m.accounts
    assert not has_unsafe(acct.summary) and not has_unsafe(acct.account)
    assert "bob\\u202egnp.exe\\u202c\\u000alooks fine" in acct.summary
    assert m.messages[0].envelope.sasl_username == LOGIN  # the evidence itself is kept as it was


def test_neutral_escapes_controls_bidi_and_lone_surrogates():
    assert neutral("a\nb\u2066c\udcff") == "a\\u000ab\\u2066c\\udcff"
    assert neutral("plain ascii, ümlaut, 日本") == "plain ascii, ümlaut, 日本"
