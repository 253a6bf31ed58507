"""Models cross to and from triage's parse workers by pickle, by their own short form: what comes back is
the model that went, field for field, with the same fields set (what `exclude_unset` dumps)."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

from pydantic import PrivateAttr

from pipeline.models import Envelope, Model, ParsedRecord, RawMessage, ReceivedHop
from pipeline.parse import parse_found
from pipeline.policy import SitePolicy
from pipeline.readers.base import Found


def _same(a: Model, b: Model) -> None:
    assert type(a) is type(b) and a == b
    assert a.__pydantic_fields_set__ == b.__pydantic_fields_set__
    assert a.model_dump(exclude_unset=True) == b.model_dump(exclude_unset=True)
    assert list(a.__dict__) == list(b.__dict__)  # the fields in their order: a dump's keys keep it


def test_a_model_with_some_fields_set_comes_back_with_those_set() -> None:
    env = Envelope(mail_from="", rcpt_to=["a@example.org"], arrival_time=datetime(2026, 1, 2, tzinfo=UTC))
    back = pickle.loads(pickle.dumps(env))
    _same(env, back)
    assert back.__pydantic_fields_set__ == {"mail_from", "rcpt_to", "arrival_time"}
    assert back.model_dump(exclude_unset=True) == {"mail_from": "", "rcpt_to": ["a@example.org"],
                                                   "arrival_time": datetime(2026, 1, 2, tzinfo=UTC)}
    back.rcpt_to.append("b@example.org")  # a copy, not the sender's list
    assert env.rcpt_to == ["a@example.org"]


def test_a_parsed_record_and_the_found_it_came_from_cross_whole() -> None:
    data = (b"Received: from mx.example.net (mx.example.net [192.0.2.7]) by mx1.example.org with ESMTP\r\n"
            b"From: Ann <ann@example.net>\r\nTo: bob@example.org\r\nSubject: the invoice\r\n"
            b"Message-ID: <1@example.net>\r\n\r\nPlease find the invoice at https://pay.example.net/i/123 today.\r\n")
    found = Found(RawMessage(path="q/1.eml", envelope=Envelope(rcpt_to=["bob@example.org"])), data, "ab" * 32,
                  len(data))
    f2 = pickle.loads(pickle.dumps(found))
    _same(found.raw, f2.raw)
    _same(found.raw.envelope, f2.raw.envelope)
    assert (f2.data, f2.sha256, f2.size) == (found.data, found.sha256, found.size)
    rec = parse_found(found, SitePolicy())
    assert rec.received and rec.keys
    back = pickle.loads(pickle.dumps([rec, rec]))
    _same(rec, back[0])
    assert back[0] is back[1]  # one object twice stays one object
    for hop, hop2 in zip(rec.received, back[0].received, strict=True):
        _same(hop, hop2)


class WithPrivate(Model):
    a: int = 1
    _note: str = PrivateAttr(default="")


def test_a_model_with_private_state_is_pickled_the_default_way() -> None:
    m = WithPrivate(a=2)
    m._note = "kept"
    back = pickle.loads(pickle.dumps(m))
    assert back == m and back._note == "kept" and back.__pydantic_fields_set__ == {"a"}


def test_a_hop_built_by_validation_and_one_with_every_field_set_cross() -> None:
    hop = ReceivedHop.model_validate({"from_name": "a.example", "by": "mx1.example.org"})
    _same(hop, pickle.loads(pickle.dumps(hop)))
    full = ParsedRecord.model_construct(**{k: f.get_default(call_default_factory=True)
                                           for k, f in ParsedRecord.model_fields.items()
                                           if not f.is_required()},
                                        path="p", sha256="s", size=1, format="eml", envelope=Envelope())
    _same(full, pickle.loads(pickle.dumps(full)))
