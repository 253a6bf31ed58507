"""Triage an incident once the last of its shards is parsed -> manifests/<incident>/manifest.json.

Every parsed shard's event asks "is the set complete?"; the first one that finds it so claims a
write-once marker, so a late or duplicated event cannot run triage twice. The claim names the event
that made it: when that same event is retried after a crash, it may finish the work.
"""

from __future__ import annotations

import json

from pipeline import queues
from pipeline.columnar import read_records
from pipeline.errors import StoreError
from pipeline.manifest_io import manifest_bytes
from pipeline.models import ParsedRecord, SnapshotInfo
from pipeline.policy import SitePolicy
from pipeline.service import StepResult
from pipeline.service.plan import parsed_shards, shard_data
from pipeline.shards import ShardMeta, missing
from pipeline.sitepolicy import effective_policy
from pipeline.store import Store
from pipeline.triage import decide, prepare


def load_records(store: Store, incident: str, shards: list[str]) -> list[ParsedRecord]:
    out: list[ParsedRecord] = []
    for shard in shards:
        out.extend(read_records(shard_data(store, incident, shard)))
    return out


def snapshot_info(metas: list[ShardMeta]) -> SnapshotInfo:
    """The manifest's account of the snapshot, over all its shards."""
    return SnapshotInfo(
        source=", ".join(sorted({m.source.rsplit("/", 1)[-1] for m in metas}))[:500],
        format=", ".join(sorted({m.format for m in metas})),
        sha256=metas[0].sha256 if len(metas) == 1 else None,
        hosts=sorted({m.host for m in metas}),
        members_read=sum(m.members_read for m in metas),
        skipped=[s for m in metas for s in m.skipped])


def triage_incident(store: Store, incident: str, policy: SitePolicy, claimant: str,
                    policy_source: str | None = None) -> StepResult:
    """Decide over all shards of an incident once they are all parsed; idempotent and safe to race."""
    out = queues.manifest_key(incident)
    if store.exists(out):
        return StepResult(f"already triaged: {out}", done=False)
    shards = parsed_shards(store, incident)
    todo = missing(shards)
    if todo:
        return StepResult(f"waiting for {len(todo)} shard(s), e.g. {todo[0]}", done=False)
    claim = queues.claim_key(incident)
    if not store.put_if_absent(claim, claimant.encode()):
        try:
            holder = store.get(claim).decode()
        except StoreError:
            holder = ""
        if holder != claimant:
            return StepResult(f"skipped: triage already claimed by {holder or 'another event'}", done=False)
    metas = [ShardMeta.model_validate_json(store.get(queues.shard_meta_key(incident, s))) for s in shards]
    records = load_records(store, incident, shards)
    prepare(records)
    defects = [d for m in metas for d in m.defects]
    sites = [m.site for m in metas if m.site]
    if len({json.dumps(x, sort_keys=True) for x in sites}) > 1:
        defects.append(f"{len(sites)} shards recorded different MTA configurations; the first one's is used")
    used, pinfo = effective_policy(policy, policy_source, sites[0] if sites else None, records)
    manifest = decide(records, used, incident, snapshot_info(metas), defects, policy_info=pinfo, consume=True)
    store.put(out, manifest_bytes(manifest))
    return StepResult(f"{len(records)} messages from {len(shards)} shard(s) -> {out}", len(records))
