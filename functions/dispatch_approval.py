"""dispatch_approval: approvals/<incident>/<id>.json -> a signed instruction on the host's channel.

The signed instruction is first written once to instructions/<host>/<id>.json; a duplicate or
retried event re-sends that same copy (same bytes, same dedup id), never a newly signed one.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from functools import cache

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from pydantic import ValidationError

from functions.common import Powertools, key_parts
from functions.errors import NotReady, PoisonEvent
from functions.events import ObjectRef
from functions.root import build_channel, build_store, signing_key
from functions.settings import DispatchSettings, load
from pipeline import queues
from pipeline.instructions import Approval, SignedInstruction, instruction_from_approval, sign
from pipeline.store import Channel, Store

pt = Powertools("dispatch")


def dispatch(store: Store, channel: Channel, key: str, private_pem: bytes, key_id: str,
             ttl: timedelta = timedelta(hours=48), now: datetime | None = None) -> str:
    incident, name = key.split("/")[1:]
    try:
        approval = Approval.model_validate_json(store.get(key))
    except ValidationError as e:
        raise PoisonEvent(f"{key}: not an approval: {str(e).splitlines()[0]}") from None
    if approval.incident != incident or f"{approval.approval_id}.json" != name:
        raise PoisonEvent(f"{key}: names incident {approval.incident!r}, approval {approval.approval_id!r}")
    mkey = queues.manifest_key(incident)
    if not store.exists(mkey):
        raise NotReady(f"{mkey} (approval {approval.approval_id})")
    if hashlib.sha256(store.get(mkey)).hexdigest() != approval.manifest_sha256:
        raise PoisonEvent(f"{key}: approves a manifest other than {mkey}'s current one; review again")
    ins = instruction_from_approval(approval, issued_at=now or datetime.now(UTC), ttl=ttl)
    ikey = queues.instruction_key(approval.host, ins.instruction_id)
    signed = sign(ins, private_pem, key_id)
    if not store.put_if_absent(ikey, signed.model_dump_json().encode()):
        signed = SignedInstruction.model_validate_json(store.get(ikey))
    channel.send(approval.host, signed.model_dump_json(), dedup_id=ins.instruction_id)
    pt.metrics.add_metric(name="InstructionsSent", unit="Count", value=1)
    return f"instruction {ins.instruction_id} ({len(ins.replay)} replay, {len(ins.purge)} purge) -> {approval.host}"


@cache
def deps() -> tuple[DispatchSettings, Store, Channel, bytes, str]:
    s = load(DispatchSettings)
    pem, kid = signing_key(s)
    return s, build_store(s), build_channel(s), pem, kid


def on_object(ref: ObjectRef, record: SQSRecord) -> str:
    s, store, channel, pem, kid = deps()
    key_parts(ref, queues.APPROVALS, 2)
    return dispatch(store, channel, ref.key, pem, kid, timedelta(hours=s.ttl_hours))


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    deps()  # cold start: fail fast on bad settings
handler = pt.handler(on_object)
