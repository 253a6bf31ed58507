"""Triage an incident once the last of its shards is parsed -> manifests/<incident>/manifest.json.

Every parsed shard's event asks "is the set complete?"; the first one that finds it so claims a
write-once marker, so a late or duplicated event cannot run triage twice. The claim names the event
that made it: when that same event is retried after a crash, it may finish the work.
"""

from __future__ import annotations

import json

import zstandard
from pydantic import BaseModel, ConfigDict, Field

from pipeline import queues
from pipeline.errors import StoreError, TriageStepError
from pipeline.manifest_io import manifest_bytes
from pipeline.models import ParsedRecord, SnapshotInfo
from pipeline.policy import SitePolicy
from pipeline.service import StepResult
from pipeline.shards import ShardMeta, missing, parse_shard
from pipeline.sitepolicy import effective_policy
from pipeline.store import Store
from pipeline.triage import decide, prepare


def parsed_shards(store: Store, incident: str) -> list[str]:
    """The shards of an incident parsed so far, in part order."""
    found = (queues.shard_of_parsed_key(k) for k in store.list(queues.parsed_prefix(incident)))
    return sorted((s for s in found if s is not None), key=_order)


def _order(shard: str) -> tuple[str, int]:
    n = parse_shard(shard)
    return n.group, n.part


def load_records(store: Store, incident: str, shards: list[str]) -> list[ParsedRecord]:
    out: list[ParsedRecord] = []
    for shard in shards:
        data = zstandard.ZstdDecompressor().decompressobj().decompress(store.get(queues.parsed_key(incident, shard)))
        out.extend(ParsedRecord.model_validate_json(line) for line in data.splitlines() if line.strip())
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


# ---- the five triage steps (issue 19) -------------------------------------------------------------
# INTERIM, to be replaced by 19b's steps at merge: `plan` checks the fan-in and names the shards,
# `facts`/`verdicts` write a marker per shard, `decide` does nothing and `summary` runs the whole
# triage above. Only the signature and StepOutput are what the callers (the state machine's
# handlers, the embedded runner, the CLI) rely on.

STEPS = ("plan", "facts", "decide", "verdicts", "summary")
MAP_STEPS = ("facts", "verdicts")


class StepOutput(BaseModel):
    """What one triage step hands on: the map's items (from plan) and a line for the log."""

    model_config = ConfigDict(frozen=True)

    step: str
    incident: str
    shard: str | None = None
    shards: list[str] = Field(default_factory=list, description="plan: the shards the map steps run over")
    message: str = ""
    count: int = 0


def run_step(step: str, store: Store, incident: str, shard: str | None, policy: SitePolicy,
             policy_source: str | None) -> StepOutput:
    """Run one triage step of an incident; idempotent (deterministic keys, a re-run rewrites the same bytes)."""
    if step not in STEPS:
        raise TriageStepError(f"unknown triage step {step!r}; steps: {', '.join(STEPS)}")
    if (shard is not None) != (step in MAP_STEPS):
        raise TriageStepError(f"triage step {step!r} {'needs' if step in MAP_STEPS else 'takes no'} shard")
    if step == "plan":
        shards = parsed_shards(store, incident)
        todo = missing(shards)
        if todo:
            raise TriageStepError(f"incident {incident}: {len(todo)} shard(s) not parsed yet, e.g. {todo[0]}")
        return StepOutput(step=step, incident=incident, shards=shards, message=f"{len(shards)} shard(s)")
    if step in MAP_STEPS:
        assert shard is not None
        store.put(f"{queues.STATE}/{queues.check_name('incident', incident)}/triage/{step}/"
                  f"{queues.check_name('shard', shard)}.done", b"interim\n")
        return StepOutput(step=step, incident=incident, shard=shard, message=f"{step} {shard}")
    if step == "decide":
        return StepOutput(step=step, incident=incident, message="decide: nothing yet")
    r = triage_incident(store, incident, policy, f"workflow:{incident}", policy_source)
    return StepOutput(step=step, incident=incident, message=r.summary, count=r.count)
