"""Dispatch an approval: approvals/<incident>/<id>.json -> signed instructions on the host's channel.

An SQS message holds at most 256 KiB, so a big approval becomes several instructions, each signed,
each a disjoint part of the replay and purge lists, ids <instruction-id>-0001, -0002, ...
Each is first written once to instructions/<host>/<id>.json; a duplicate or retried event
re-sends that same copy (same bytes, same dedup id), never a newly signed one.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from pipeline import queues
from pipeline.errors import ManifestError, NotReady, PoisonEvent
from pipeline.instructions import (
    Approval,
    ApprovedMessage,
    Instruction,
    SignedInstruction,
    approval_differences,
    approval_from_manifest,
    instruction_from_approval,
    sign,
)
from pipeline.manifest_io import ManifestReader
from pipeline.models import Manifest
from pipeline.service import StepResult
from pipeline.store import Channel, Store

MAX_BODY = 250_000  # SQS's limit is 262,144 bytes; leave room for the envelope


def split(ins: Instruction, budget: int = MAX_BODY) -> list[Instruction]:
    """Cut an instruction into parts whose signed JSON fits one SQS message (replays first)."""
    items = [("replay", m) for m in ins.replay] + [("purge", m) for m in ins.purge]
    parts: list[list[tuple[str, ApprovedMessage]]] = [[]]
    size = 0
    for kind, m in items:
        # the size it takes inside the signed body, where the payload is a JSON string escaped again
        n = len(json.dumps(m.model_dump_json(), ensure_ascii=False)) + 1
        if parts[-1] and size + n > budget - 2_000:
            parts.append([])
            size = 0
        parts[-1].append((kind, m))
        size += n
    if len(parts) == 1:
        return [ins]
    return [ins.model_copy(update={"instruction_id": f"{ins.instruction_id}-{i:04d}",
                                   "replay": [m for k, m in part if k == "replay"],
                                   "purge": [m for k, m in part if k == "purge"]})
            for i, part in enumerate(parts, 1)]


def check_approval(store: Store, key: str, approval: Approval, manifest: Manifest | ManifestReader) -> None:
    """Sign only what the manifest and the recorded decisions say: the approval's decision log must be what
    state/<incident>/decisions.json recorded (the start of it: review may go on after approving), its host
    one the manifest names, and its replay, purge and hold lists exactly what they make. PoisonEvent if not."""
    changes = approval.changes
    if changes:
        dkey = queues.decisions_key(approval.incident)
        try:
            recorded = json.loads(store.get(dkey)).get("log", []) if store.exists(dkey) else []
        except (ValueError, AttributeError):
            raise PoisonEvent(f"{key}: {dkey} is unreadable; the approval's changes cannot be checked") from None
        if recorded[:len(changes)] != changes:
            raise PoisonEvent(f"{key}: its {len(changes)} verdict changes are not the decisions recorded in {dkey}")
    hosts = (manifest if isinstance(manifest, Manifest) else manifest.summary).snapshot.hosts
    if hosts and approval.host not in hosts:
        raise PoisonEvent(f"{key}: is for host {approval.host!r}; the manifest's snapshot is from {hosts}")
    try:
        expected = approval_from_manifest(manifest, approval.manifest_sha256, approval.host, approval.approved_by,
                                          approval.approved_at, approval.approval_id, changes=changes)
    except ValueError as e:
        raise PoisonEvent(f"{key}: {e}") from None
    diff = approval_differences(approval, expected)
    if diff:
        raise PoisonEvent(f"{key}: not what the manifest and the recorded decisions say: {'; '.join(diff[:5])}")


def dispatch(store: Store, channel: Channel, key: str, private_pem: bytes, key_id: str,
             ttl: timedelta = timedelta(hours=48), now: datetime | None = None, budget: int = MAX_BODY) -> StepResult:
    """Sign an approval's instruction (in parts that fit one SQS message each) and send it to the host, once."""
    try:
        incident, name = queues.parts_of(key, queues.APPROVALS, 2)
    except ValueError as e:
        raise PoisonEvent(str(e)) from None
    try:
        approval = Approval.model_validate_json(store.get(key))
    except ValidationError as e:
        raise PoisonEvent(f"{key}: not an approval: {str(e).splitlines()[0]}") from None
    if approval.incident != incident or f"{approval.approval_id}.json" != name:
        raise PoisonEvent(f"{key}: names incident {approval.incident!r}, approval {approval.approval_id!r}")
    mkey = queues.manifest_key(incident)
    if not store.exists(mkey):
        raise NotReady(f"{mkey} (approval {approval.approval_id})")
    try:
        manifest = ManifestReader(store, incident)
    except ManifestError as e:
        raise PoisonEvent(f"{key}: {e}") from None
    if manifest.sha256 != approval.manifest_sha256:
        raise PoisonEvent(f"{key}: approves a manifest other than {mkey}'s current one; review again")
    try:
        check_approval(store, key, approval, manifest)
    except ManifestError as e:  # a part missing or changed since: nothing is signed from a manifest read short
        raise PoisonEvent(f"{key}: {e}") from None
    whole = instruction_from_approval(approval, issued_at=now or datetime.now(UTC), ttl=ttl)
    pieces = split(whole, budget)
    for ins in pieces:
        ikey = queues.instruction_key(approval.host, ins.instruction_id)
        body = sign(ins, private_pem, key_id).model_dump_json()
        if len(body) > budget:
            raise PoisonEvent(f"{key}: instruction {ins.instruction_id} is {len(body)} bytes, over {budget}")
        if not store.put_if_absent(ikey, body.encode()):
            body = SignedInstruction.model_validate_json(store.get(ikey)).model_dump_json()
        channel.send(approval.host, body, dedup_id=ins.instruction_id)
    return StepResult(f"instruction {whole.instruction_id} in {len(pieces)} part(s) ({len(whole.replay)} replay, "
                      f"{len(whole.purge)} purge) -> {approval.host}", len(pieces))
