"""Triage an incident once the last of its shards is parsed -> manifests/<incident>/manifest.json.

Triage is five steps (pipeline.staged): `plan` once, `facts` per shard, `decide` once, `verdicts` per
shard, `summary` once, each reading the outputs of the ones before from state/<incident>/triage/ and
writing its own under a deterministic key: a re-run rewrites the same bytes. Every route runs them
through `run_step` (the functions' state machine, the embedded runner, `triage_incident`).

Every parsed shard's event asks "is the set complete?"; the first one that finds it so claims a
write-once marker, so a late or duplicated event cannot run triage twice. The claim names the event
that made it: when that same event is retried after a crash, it may finish the work.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import zstandard
from pydantic import BaseModel, Field

from pipeline import queues, staged
from pipeline.errors import StoreError
from pipeline.manifest_io import write_manifest_parts
from pipeline.models import ParsedRecord, SnapshotInfo, Verdict
from pipeline.policy import SitePolicy
from pipeline.service import StepResult
from pipeline.shards import ShardMeta, missing, parse_shard
from pipeline.sitepolicy import effective_policy
from pipeline.staged import Decisions, Facts, Plan, ShardPlan, Verdicts, apply_plan, campaign_labels, group_labels
from pipeline.store import Store
from pipeline.triage import prepare


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


class StepOutput(BaseModel):
    """What a triage step did: the map's items (from `plan`: the parsed shards) and a line for the log."""

    shards: list[str] = Field(default_factory=list)
    message: str
    count: int = 0


def _plan(store: Store, incident: str, policy: SitePolicy, policy_source: str | None) -> StepOutput:
    """Today's plan over every record of every shard (order, ids, duplicates, the effective policy,
    grouping labels). The one place the records of the whole incident are loaded at once."""
    shards = parsed_shards(store, incident)
    todo = missing(shards)
    if todo:
        return StepOutput(message=f"waiting for {len(todo)} shard(s), e.g. {todo[0]}")
    metas = _metas(store, incident, shards)
    per = [load_records(store, incident, [s]) for s in shards]
    flat = [r for recs in per for r in recs]
    where = {id(r): (k, i) for k, recs in enumerate(per) for i, r in enumerate(recs)}
    prepare(flat)
    sites = [m.site for m in metas if m.site]
    used, pinfo = effective_policy(policy, policy_source, sites[0] if sites else None, flat)
    labels = group_labels(flat, used)
    names = Counter(r.path for r in flat)
    pos = [np.zeros(len(recs), dtype=np.int64) for recs in per]
    lab = [np.zeros(len(recs), dtype=np.int64) for recs in per]
    dup = [np.zeros(len(recs), dtype=np.int64) for recs in per]
    ids: list[list[str]] = [[""] * len(recs) for recs in per]
    for g, r in enumerate(flat):
        k, i = where[id(r)]
        pos[k][i], lab[k][i], ids[k][i] = g, labels[g], r.id
        dup[k][i] = names[r.path] if names[r.path] > 1 else 0
    plan = Plan(len(flat), used, pinfo, campaign_labels(labels, used.thresholds.campaign_min_size),
                {s: ShardPlan(pos[k], lab[k], ids[k], dup[k]) for k, s in enumerate(shards)})
    store.put(queues.triage_step_key(incident, "plan"), plan.to_bytes())
    return StepOutput(shards=shards, message=f"planned {len(flat)} messages in {len(shards)} shard(s), "
                      f"{len(plan.campaign_labels)} campaign(s)", count=len(flat))


def _metas(store: Store, incident: str, shards: list[str]) -> list[ShardMeta]:
    return [ShardMeta.model_validate_json(store.get(queues.shard_meta_key(incident, s))) for s in shards]


def load_plan(store: Store, incident: str) -> Plan:
    return Plan.from_bytes(store.get(queues.triage_step_key(incident, "plan")))


def _shard_records(store: Store, incident: str, shard: str, plan: Plan) -> list[ParsedRecord]:
    records = load_records(store, incident, [shard])
    apply_plan(records, plan.shards[shard])
    return records


def run_step(step: str, store: Store, incident: str, shard: str | None, policy: SitePolicy,
             policy_source: str | None = None) -> StepOutput:
    """Run one triage step of an incident: `plan`, `facts` (per shard), `decide`, `verdicts` (per shard),
    `summary` (writes the manifest, last). Each reads what the steps before it wrote."""
    if step not in queues.TRIAGE_STEPS:
        raise ValueError(f"{step!r} is not a triage step ({', '.join(queues.TRIAGE_STEPS)})")
    if (shard is None) == (step in ("facts", "verdicts")):
        raise ValueError(f"triage step {step!r} " + ("needs a shard" if shard is None else "takes no shard"))
    if step == "plan":
        return _plan(store, incident, policy, policy_source)
    plan = load_plan(store, incident)
    shards = list(plan.shards)
    if step == "facts":
        assert shard is not None
        out = staged.facts(_shard_records(store, incident, shard, plan), plan, shard)
        store.put(queues.triage_step_key(incident, "facts", shard), out.to_bytes())
        return StepOutput(message=f"facts of {len(out.pos)} messages of {shard}", count=len(out.pos))
    if step == "decide":
        parts = [Facts.from_bytes(store.get(queues.triage_step_key(incident, "facts", s))) for s in shards]
        dec = staged.decide_campaigns(parts, plan)
        store.put(queues.triage_step_key(incident, "decide"), dec.to_bytes())
        spam = sum(1 for d in dec.campaigns.values() if d.verdict is Verdict.spam)
        return StepOutput(shards=shards, message=f"{len(dec.campaigns)} campaign(s) decided, {spam} spam")
    dec = Decisions.from_bytes(store.get(queues.triage_step_key(incident, "decide")))
    if step == "verdicts":
        assert shard is not None
        v = staged.verdicts(_shard_records(store, incident, shard, plan), plan, shard, dec)
        store.put(queues.triage_step_key(incident, "verdicts", shard), v.to_bytes())
        return StepOutput(message=f"verdicts of {len(v.pos)} messages of {shard}", count=len(v.pos))
    vs = [Verdicts.from_bytes(store.get(queues.triage_step_key(incident, "verdicts", s))) for s in shards]
    metas = _metas(store, incident, shards)
    defects = [d for m in metas for d in m.defects]
    sites = [m.site for m in metas if m.site]
    if len({json.dumps(x, sort_keys=True) for x in sites}) > 1:
        defects.append(f"{len(sites)} shards recorded different MTA configurations; the first one's is used")
    s = staged.summarize(vs, dec, plan, incident, snapshot_info(metas), defects)
    # the message parts streamed in global order, then manifest.json, last
    out_key = write_manifest_parts(store, s.manifest, staged.messages_of(vs, s))
    return StepOutput(message=f"{plan.n} messages from {len(shards)} shard(s) -> {out_key}", count=plan.n)


def triage_incident(store: Store, incident: str, policy: SitePolicy, claimant: str,
                    policy_source: str | None = None) -> StepResult:
    """Decide over all shards of an incident once they are all parsed; idempotent and safe to race.
    Runs the five steps in order, in this process."""
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
    planned = run_step("plan", store, incident, None, policy, policy_source)
    for s in planned.shards:
        run_step("facts", store, incident, s, policy, policy_source)
    run_step("decide", store, incident, None, policy, policy_source)
    for s in planned.shards:
        run_step("verdicts", store, incident, s, policy, policy_source)
    done = run_step("summary", store, incident, None, policy, policy_source)
    return StepResult(done.message, done.count)
