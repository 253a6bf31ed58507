"""Verify an instruction before anything is touched: signature, host, incident, expiry, not already executed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime

from pydantic import ValidationError

from agent.journal import Journal
from pipeline.errors import InstructionRefused
from pipeline.instructions import Instruction, SignedInstruction, verify
from pipeline.queues import check_name


def body_digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8", "surrogateescape")).hexdigest()


def check(body: str, public_key_pem: bytes, host: str, now: datetime, journal: Journal,
          known_incident: Callable[[str], bool]) -> tuple[Instruction, str | None]:
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


def peek(body: str) -> tuple[str, str]:
    """(incident, instruction id) from an instruction that failed verification, for naming its receipt."""
    incident = instruction_id = "unknown"
    try:
        payload = json.loads(json.loads(body)["payload"])
        incident = check_name("incident", str(payload["incident"]))
        instruction_id = check_name("instruction", str(payload["instruction_id"]))
    except (ValueError, KeyError, TypeError):
        pass
    return incident, instruction_id


def _first(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]
