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

from pydantic import BaseModel, Field

from pipeline import plan as plans
from pipeline import queues, staged
from pipeline.columnar import read_records
from pipeline.errors import StoreError
from pipeline.manifest_io import write_manifest_tables
from pipeline.models import ParsedRecord, SnapshotInfo, Verdict
from pipeline.policy import SitePolicy
from pipeline.service import StepResult
from pipeline.service.plan import first_site, parsed_shards, plan_incident, shard_data, shard_metas
from pipeline.shards import ShardMeta, missing
from pipeline.staged import Decisions, Facts, Verdicts
from pipeline.store import Store
from pipeline.triage import paused_gc

__all__ = ["StepOutput", "load_records", "parsed_shards", "run_step", "snapshot_info", "triage_incident"]


def load_records(store: Store, incident: str, shards: list[str]) -> list[ParsedRecord]:
    out: list[ParsedRecord] = []
    for shard in shards:
        out.extend(read_records(shard_data(store, incident, shard)))
    return out


def snapshot_info(metas: list[ShardMeta]) -> SnapshotInfo:
    """The manifest's account of the snapshot, over all its shards: its digest when every shard names the
    same one (the parts of one snapshot file cut by the CLI or the upload), none when they are files of
    their own; a part cut from a file is named by that file."""
    digests = {m.sha256 for m in metas}
    return SnapshotInfo(
        source=", ".join(sorted({m.snapshot or m.source.rsplit("/", 1)[-1] for m in metas}))[:500],
        format=", ".join(sorted({m.format for m in metas})),
        sha256=digests.pop() if len(digests) == 1 else None,
        hosts=sorted({m.host for m in metas if m.host}),
        members_read=sum(m.members_read for m in metas),
        skipped=[s for m in metas for s in m.skipped])


class StepOutput(BaseModel):
    """What a triage step did: the map's items (from `plan`: the parsed shards) and a line for the log."""

    shards: list[str] = Field(default_factory=list)
    message: str
    count: int = 0


def _shard_records(store: Store, incident: str, shard: str, stored: plans.Plan) -> list[ParsedRecord]:
    """A shard's records with the ids and duplicate-name defects the plan gave them."""
    records = read_records(shard_data(store, incident, shard))
    plans.apply(records, stored.rows[shard])
    return records


def run_step(step: str, store: Store, incident: str, shard: str | None, policy: SitePolicy,
             policy_source: str | None = None) -> StepOutput:
    """Run one triage step of an incident: `plan`, `facts` (per shard), `decide`, `verdicts` (per shard),
    `summary` (writes the manifest, last). Each reads what the steps before it wrote.

    The cyclic collector is off meanwhile: a map step holds a shard's records (tens of objects each, none
    in a cycle), and the collector walked them again and again for nothing (half a map step's CPU). It is
    on again once the step's frame, and all it held, is gone: the step leaves nothing for it to walk."""
    with paused_gc(freeze=False):
        return _run_step(step, store, incident, shard, policy, policy_source)


def _run_step(step: str, store: Store, incident: str, shard: str | None, policy: SitePolicy,
              policy_source: str | None) -> StepOutput:
    if step not in queues.TRIAGE_STEPS:
        raise ValueError(f"{step!r} is not a triage step ({', '.join(queues.TRIAGE_STEPS)})")
    if (shard is None) == (step in ("facts", "verdicts")):
        raise ValueError(f"triage step {step!r} " + ("needs a shard" if shard is None else "takes no shard"))
    if step == "plan":
        p = plan_incident(store, incident, policy, policy_source)
        return StepOutput(shards=p.shards, message=f"planned {p.total} messages in {len(p.shards)} shard(s), "
                          f"{len(p.campaign_labels)} campaign(s)", count=p.total)
    # a map step needs its shard's rows of the plan; `decide` every shard's; `summary` none
    stored = plans.load_plan(store, incident, [shard] if shard else () if step == "summary" else None)
    plan = staged.Plan.of(stored)
    shards = plan.names
    if step == "facts":
        assert shard is not None
        out = staged.facts(_shard_records(store, incident, shard, stored), plan, shard)
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
        v = staged.verdicts(_shard_records(store, incident, shard, stored), plan, shard, dec)
        store.put(queues.triage_step_key(incident, "verdicts", shard), v.to_bytes())
        return StepOutput(message=f"verdicts of {len(v.pos)} messages of {shard}", count=len(v.pos))
    vs = [Verdicts.from_bytes(store.get(queues.triage_step_key(incident, "verdicts", s))) for s in shards]
    metas = shard_metas(store, incident, shards)
    defects = [d for m in metas for d in m.defects] + first_site(metas)[1]
    s = staged.summarize(vs, dec, plan, incident, snapshot_info(metas), defects)
    # the message parts streamed in global order, then manifest.json, last
    out_key = write_manifest_tables(store, s.manifest, staged.tables_of(vs, s))
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
