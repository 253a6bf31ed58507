"""Hypothesis strategies for what reaches the agent: channel bodies (anything) and instruction payloads."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from hypothesis import strategies as st

from pipeline.instructions import SignedInstruction

INC, HOST = "inc-poison", "mx1"


def sign_payload(payload: str, private: bytes) -> str:
    """A channel body carrying `payload` under a good signature of `private` (as dispatch would sign it)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    sig = load_pem_private_key(private, None).sign(payload.encode("utf-8", "surrogatepass"))
    return SignedInstruction(payload=payload, signature=base64.b64encode(sig).decode(), key_id="k").model_dump_json()


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                     max_leaves=20)
_fields = {"instruction_id": st.text(max_size=40) | st.just("fz"), "incident": st.text(max_size=20) | st.just(INC),
           "host": st.just(HOST) | st.text(max_size=10), "approval_id": st.text(max_size=10),
           "issued_at": st.datetimes().map(datetime.isoformat) | _json,
           "expires_at": st.datetimes(timezones=st.none() | st.just(UTC)).map(datetime.isoformat) | _json,
           "replay": st.lists(st.fixed_dictionaries({}, optional={
               "id": st.text(max_size=10), "path": st.text(max_size=30), "sha256": st.text(max_size=70),
               "queue_id": st.text(max_size=30) | st.none(), "envelope": _json}), max_size=3) | _json,
           "purge": st.lists(_json, max_size=3) | _json, "quarantine": _json}
payloads = st.fixed_dictionaries({}, optional=_fields).map(json.dumps)
bodies = (st.binary(max_size=300).map(lambda b: b.decode("utf-8", "surrogateescape"))
          | _json.map(json.dumps)
          | st.builds(lambda p, s: json.dumps({"payload": p, "signature": s, "key_id": "k"}),
                      payloads | st.text(), st.text(max_size=100)))


