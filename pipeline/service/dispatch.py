"""Dispatch an approval: approvals/<incident>/<id>.json -> signed instructions on the host's channel.

An SQS message holds at most 256 KiB, so a big approval becomes several instructions, each signed,
each a disjoint part of the replay and purge lists, ids <instruction-id>-0001, -0002, ...
Each is first written once to instructions/<host>/<id>.json; a duplicate or retried event
re-sends that same copy (same bytes, same dedup id), never a newly signed one.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from pipeline import queues
from pipeline.approval_stream import approved_lists, digest, head_of, instruction_id_of, instructions
from pipeline.errors import ManifestError, NotReady, PoisonEvent
from pipeline.instructions import (
    Approval,
    ApprovedMessage,
    Instruction,
    SignedInstruction,
    approval_differences,
    approval_from_manifest,
    effective_verdicts,
    sign,
)
from pipeline.manifest_io import ManifestReader
from pipeline.models import Manifest
from pipeline.service import StepResult
from pipeline.store import Channel, Store

MAX_BODY = 250_000  # SQS's limit is 262,144 bytes; leave room for the envelope
WHOLE_LIMIT = 32 * 2**20  # an approval that is not what it should be is read whole, to say how, up to this size


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
    _check_head(store, key, approval, manifest)
    try:
        expected = approval_from_manifest(manifest, approval.manifest_sha256, approval.host, approval.approved_by,
                                          approval.approved_at, approval.approval_id, changes=approval.changes)
    except ValueError as e:
        raise PoisonEvent(f"{key}: {e}") from None
    diff = approval_differences(approval, expected)
    if diff:
        raise PoisonEvent(f"{key}: not what the manifest and the recorded decisions say: {'; '.join(diff[:5])}")


def _check_head(store: Store, key: str, approval: Approval, manifest: Manifest | ManifestReader) -> None:
    """The approval's decision log is what was recorded (the start of it), and its host one the manifest names."""
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


def _whole(data: bytes, key: str) -> Approval:
    try:
        return Approval.model_validate_json(data)
    except ValidationError as e:
        raise PoisonEvent(f"{key}: not an approval: {str(e).splitlines()[0]}") from None


def dispatch(store: Store, channel: Channel, key: str, private_pem: bytes, key_id: str,
             ttl: timedelta = timedelta(hours=48), now: datetime | None = None, budget: int = MAX_BODY) -> StepResult:
    """Sign an approval's instruction (in parts that fit one SQS message each) and send it to the host, once.

    The approval is checked by making it again from the manifest and the recorded decisions (as a stream, its
    lists in temporary files) and comparing digests; only one that differs is read whole, to say how."""
    try:
        incident, name = queues.parts_of(key, queues.APPROVALS, 2)
    except ValueError as e:
        raise PoisonEvent(str(e)) from None
    data = store.get(key)
    head = head_of(data)
    approval = head if head is not None else _whole(data, key)
    if approval.incident != incident or f"{approval.approval_id}.json" != name:
        raise PoisonEvent(f"{key}: names incident {approval.incident!r}, approval {approval.approval_id!r}")
    mkey = queues.manifest_key(incident)
    if not store.exists(mkey):
        raise NotReady(f"{mkey} (approval {approval.approval_id})")
    try:
        manifest = ManifestReader(store, incident)
        if manifest.sha256 != approval.manifest_sha256:
            raise PoisonEvent(f"{key}: approves a manifest other than {mkey}'s current one; review again")
        _check_head(store, key, approval, manifest)
        try:
            overrides = effective_verdicts(manifest, approval.changes)
        except ValueError as e:
            raise PoisonEvent(f"{key}: {e}") from None
        with approved_lists(manifest, overrides) as lists:
            if head is None or digest(head, lists) != hashlib.sha256(data).hexdigest():
                if head is not None and len(data) > WHOLE_LIMIT:
                    raise PoisonEvent(f"{key}: not what the manifest and the recorded decisions say")
                # raises, saying what differs; passes for a right one in another layout (an older version's)
                check_approval(store, key, approval if head is None else _whole(data, key), manifest)
            n = 0
            for ins in instructions(approval, lists, now or datetime.now(UTC), ttl, budget):
                ikey = queues.instruction_key(approval.host, ins.instruction_id)
                body = sign(ins, private_pem, key_id).model_dump_json()
                if len(body) > budget:
                    raise PoisonEvent(f"{key}: instruction {ins.instruction_id} is {len(body)} bytes, over {budget}")
                if not store.put_if_absent(ikey, body.encode()):
                    body = SignedInstruction.model_validate_json(store.get(ikey)).model_dump_json()
                channel.send(approval.host, body, dedup_id=ins.instruction_id)
                n += 1
            counts = lists.counts
    except ManifestError as e:  # a part missing or changed: nothing is signed from a manifest read short
        raise PoisonEvent(f"{key}: {e}") from None
    return StepResult(f"instruction {instruction_id_of(approval)} in {n} part(s) ({counts['replay']} replay, "
                      f"{counts['purge']} purge) -> {approval.host}", n)
