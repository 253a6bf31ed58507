"""Verify an instruction before anything is touched: signature, host, incident, expiry, not already executed.

The payload is checked against pipeline.instructions' models item by item and kept as compact records:
an instruction for 100,000 messages held as pydantic models would take about 4 KB a message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from agent.journal import Journal
from pipeline.errors import InstructionRefused
from pipeline.instructions import ApprovedMessage, SignedInstruction, check_signature
from pipeline.queues import check_name


@dataclass(slots=True)
class Item:
    """One message of an instruction: both identities, and the envelope's sender and recipients."""

    id: str
    path: str
    sha256: str
    queue_id: str | None
    mail_from: str | None
    rcpt_to: tuple[str, ...] | None  # None when the instruction carries no envelope


@dataclass
class Lean:
    instruction_id: str
    incident: str
    host: str
    expires_at: datetime
    quarantine: bool
    replay: list[Item]
    purge: list[Item]


class _Head(BaseModel):
    """pipeline.instructions.Instruction with its message lists left as dicts, validated one at a time."""

    model_config = ConfigDict(extra="forbid")
    instruction_id: str
    incident: str
    host: str
    approval_id: str
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    replay: list[dict[str, Any]]
    purge: list[dict[str, Any]]
    quarantine: bool = True


def parse_payload(payload: str) -> Lean:
    """The payload as compact records; raises InstructionRefused if any part of it is malformed."""
    try:
        head = _Head.model_validate_json(payload)
    except (ValidationError, ValueError) as e:
        raise InstructionRefused(f"malformed payload: {_first(e)}") from None
    lists: dict[str, list[Item]] = {}
    for name in ("replay", "purge"):
        raw: list[Any] = getattr(head, name)
        out: list[Item] = []
        for i, d in enumerate(raw):
            try:
                m = ApprovedMessage.model_validate(d)
            except ValidationError as e:
                raise InstructionRefused(f"malformed payload: {name}[{i}]: {_first(e)}") from None
            env = m.envelope
            out.append(Item(m.id, m.path, m.sha256, m.queue_id, env.mail_from if env else None,
                            tuple(env.rcpt_to) if env else None))
            raw[i] = None  # let the dict go as soon as it is converted
        lists[name] = out
    return Lean(head.instruction_id, head.incident, head.host, head.expires_at, head.quarantine,
                lists["replay"], lists["purge"])


def verify(signed: SignedInstruction, public_key_pem: bytes, host: str, now: datetime) -> Lean:
    """As pipeline.instructions.verify (signature, then payload, host, expiry), returning compact records."""
    check_signature(signed, public_key_pem)
    ins = parse_payload(signed.payload)
    if ins.host != host:
        raise InstructionRefused(f"it is for host {ins.host!r}, this is {host!r}")
    if now >= ins.expires_at:
        raise InstructionRefused(f"expired at {ins.expires_at.isoformat()}")
    return ins


def body_digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8", "surrogateescape")).hexdigest()


def check(body: str, public_key_pem: bytes, host: str, now: datetime, journal: Journal,
          known_incident: Callable[[str], bool]) -> tuple[Lean, str | None]:
    """(instruction, state in the journal or None if new); raises InstructionRefused with the reason."""
    try:
        signed = SignedInstruction.model_validate_json(body)
    except (ValidationError, ValueError) as e:
        raise InstructionRefused(f"malformed instruction: {_first(e)}") from None
    ins = verify(signed, public_key_pem, host, now)  # signature, payload, host, expiry
    for kind, value in (("incident", ins.incident), ("instruction", ins.instruction_id)):
        try:
            check_name(kind, value)
        except ValueError as e:
            raise InstructionRefused(f"malformed payload: {e}") from None
    state = journal.instruction_state(ins.instruction_id)
    if state is not None and state[0] == "done":
        raise InstructionRefused(f"already executed (instruction {ins.instruction_id} finished {state[1]})")
    if state is None and not known_incident(ins.incident):
        raise InstructionRefused(f"unknown incident {ins.incident!r}: this host has no snapshot for it")
    seen: set[tuple[str, str]] = set()
    for action, items in (("replay", ins.replay), ("purge", ins.purge)):
        for m in items:
            if (m.id, action) in seen:
                raise InstructionRefused(f"malformed payload: message {m.id} listed twice for {action}")
            seen.add((m.id, action))
    both = {m.id for m in ins.replay} & {m.id for m in ins.purge}
    if both:
        raise InstructionRefused(f"malformed payload: {len(both)} messages both to replay and to purge")
    return ins, None if state is None else state[0]


def signed_names(body: str, public_key_pem: bytes) -> tuple[str, str] | None:
    """(incident, instruction id) of a refused instruction, only if its signature is good (dispatch wrote them);
    None for anything unsigned, forged or unreadable, whose claims must not name a receipt."""
    try:
        signed = SignedInstruction.model_validate_json(body)
        check_signature(signed, public_key_pem)
        head = json.loads(signed.payload)
        return check_name("incident", str(head["incident"])), check_name("instruction", str(head["instruction_id"]))
    except Exception:  # whatever went wrong, the names are not trustworthy
        return None


def _first(e: Exception) -> str:
    if isinstance(e, ValidationError) and e.errors():
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        return f"{loc}: {err.get('msg', '')}" if loc else str(err.get("msg", ""))
    return (str(e).splitlines() or [type(e).__name__])[0]
