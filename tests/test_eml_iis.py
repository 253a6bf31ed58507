"""IIS/Exchange folders: x-sender / x-receiver lines are the envelope, not part of the message."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.policy import SitePolicy
from pipeline.readers.eml import split_iis_envelope
from pipeline.triage import triage

BODY = b"Received: from x\r\nFrom: <a@partner.example>\r\nTo: <bob@example.org>\r\nSubject: invoice 42\r\n\r\nhi\r\n"


def test_split_envelope() -> None:
    env, msg = split_iis_envelope(b"x-sender: a@partner.example\r\nx-receiver: bob@example.org\r\n"
                                  b"X-Receiver: <carol@example.org>\r\n" + BODY)
    assert env is not None
    assert env.mail_from == "a@partner.example"
    assert env.rcpt_to == ["bob@example.org", "carol@example.org"]
    assert msg == BODY


def test_header_named_x_sender_in_a_normal_message_stays() -> None:
    data = b"X-Sender: someone@example.com\r\n" + BODY
    env, msg = split_iis_envelope(data)
    assert env is None and msg == data


def test_folder_triage_uses_envelope(tmp_path: Path) -> None:
    q = tmp_path / "Queue"
    q.mkdir()
    (q / "NTFS_0001.EML").write_bytes(b"x-sender: a@partner.example\r\nx-receiver: bob@example.org\r\n" + BODY)
    (q / "NTFS_0002.BDR").write_bytes(b"reason: bad mail")
    (q / "raw").write_bytes(BODY)  # Imcdata\Out style: no extension, no envelope lines
    m = triage(q, SitePolicy(local_domains=["example.org"]))
    first = next(x for x in m.messages if x.path == "NTFS_0001.EML")
    assert first.envelope.mail_from == "a@partner.example"
    assert first.envelope.rcpt_to == ["bob@example.org"]
    assert first.sha256 == hashlib.sha256(BODY).hexdigest()
    assert first.subject == "invoice 42"
    raw = next(x for x in m.messages if x.path == "raw")
    assert "rcpt_to" in raw.envelope_inferred and raw.envelope.rcpt_to == ["bob@example.org"]
    assert m.snapshot.skipped == ["NTFS_0002.BDR"]


def test_iis_netbios_name_of_a_server_name_is_our_hop(tmp_path: Path) -> None:
    q = tmp_path / "Queue"
    q.mkdir()
    msg = (b"x-sender: spammer@far.example\r\nx-receiver: victim@else.example\r\n"
           b"Received: from bot ([203.0.113.9]) by MX1 with Microsoft SMTPSVC(6.0.3790.4675);"
           b" Fri, 27 Nov 2026 19:30:35 +0000\r\nFrom: <spammer@far.example>\r\nTo: <victim@else.example>\r\n"
           b"Subject: pills\r\n\r\nbuy\r\n")
    (q / "a.eml").write_bytes(msg)
    m = triage(q, SitePolicy(local_domains=["example.org"], server_names=["mx1.example.org"]))
    x = m.messages[0]
    assert x.envelope.client_address == "203.0.113.9"  # MX1 is mx1.example.org's NetBIOS name: our hop
    assert x.envelope_inferred[-1] == "client_address (our Received hop, by mx1)"
    # a lone relayed message from a client that sent nothing else: perhaps our own application
    assert x.verdict.value == "review" and x.reasons[0].code == "relayed_unknown_source"


def test_envelope_lines_that_are_wrong_hold_the_message_with_what_is_wrong(tmp_path: Path) -> None:
    # The x-sender/x-receiver lines were read without a word about what was wrong with them: an empty
    # x-receiver became a recipient "", of two x-senders the last was taken, bytes not UTF-8 were replaced.
    q = tmp_path / "Pickup"
    q.mkdir()
    (q / "empty.eml").write_bytes(b"x-sender: a@partner.example\r\nx-receiver: \r\n" + BODY)
    (q / "two.eml").write_bytes(b"x-sender: a@partner.example\r\nx-sender: b@else.example\r\n"
                                b"x-receiver: bob@example.org\r\n" + BODY)
    (q / "latin.eml").write_bytes(b"x-sender: a\xe9@partner.example\r\nx-receiver: bob@example.org\r\n" + BODY)
    (q / "bounce.eml").write_bytes(b"x-sender: <>\r\nx-receiver: bob@example.org\r\n" + BODY)
    (q / "header.eml").write_bytes(b"X-Sender: a@partner.example\r\n" + BODY)
    m = triage(q, SitePolicy(local_domains=["example.org"]))
    by = {x.path: x for x in m.messages}
    assert by["empty.eml"].defects == ["an x-receiver line names no address"]
    assert by["empty.eml"].envelope.rcpt_to == ["bob@example.org"] and by["empty.eml"].envelope_inferred == ["rcpt_to"]
    assert by["two.eml"].defects == ["2 x-sender lines that differ ('a@partner.example', 'b@else.example'): "
                                     "the last is taken as the envelope sender"]
    assert by["two.eml"].envelope.mail_from == "b@else.example"
    assert by["latin.eml"].defects == ["x-sender line is not UTF-8: 'a\ufffd@partner.example'"]
    for name in ("empty.eml", "two.eml", "latin.eml"):
        assert by[name].verdict.value == "review" and by[name].reasons[0].code == "defect"
    # a bounce's empty sender, and an X-Sender header of a message without envelope lines, are no defects
    assert by["bounce.eml"].defects == [] and by["bounce.eml"].envelope.mail_from == ""
    assert by["header.eml"].defects == [] and by["header.eml"].sha256 == hashlib.sha256(
        b"X-Sender: a@partner.example\r\n" + BODY).hexdigest()
