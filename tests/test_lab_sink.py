"""The demo's byte-for-byte check ignores only what an MTA adds or removes on the way in, never the body."""

from __future__ import annotations

from spoolsweep.lab.sink import body_of


def test_final_delivery_headers_and_leading_trace_are_ignored_the_body_is_not() -> None:
    sent = b"To: a@example.org\nDelivery-Date: Fri Sep  6 03:41:13 2002\nSubject: s\n\nDelivery-Date: kept\n"
    # Exim drops Delivery-date/Envelope-to/Return-path on receipt (its *_remove options) and adds Received:
    got = (b"Received: from x\r\n\tby mx1 with esmtp\r\nTo: a@example.org\r\nSubject: s\r\n\r\n"
           b"Delivery-Date: kept\r\n")
    assert body_of(sent) == body_of(got)
    assert body_of(sent) != body_of(sent.replace(b"kept", b"changed"))
    assert body_of(b"To: a\nEnvelope-To: b\n  c\nReturn-Path: <x>\nX: y\n\nbody") == b"To: a\nX: y\n\nbody\n"
