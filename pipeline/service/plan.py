"""The plan step over a store: every parsed shard's small columns -> state/<incident>/triage/plan…

Run once every shard of the incident is parsed (pipeline.shards.missing says none is to come); a
re-run rewrites the same bytes. The map steps read the plan back with pipeline.plan.load_plan.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline import queues
from pipeline.errors import NotReady
from pipeline.plan import Plan, plan_step, write_plan
from pipeline.policy import SitePolicy
from pipeline.shards import ShardMeta, missing, parse_shard
from pipeline.store import Store


def parsed_shards(store: Store, incident: str) -> list[str]:
    """The shards of an incident parsed so far, in part order."""
    found = {queues.shard_of_parsed_key(k) for k in store.list(queues.parsed_prefix(incident))}
    return sorted((s for s in found if s is not None), key=_order)


def _order(shard: str) -> tuple[str, int]:
    n = parse_shard(shard)
    return n.group, n.part


def shard_data(store: Store, incident: str, shard: str) -> bytes:
    """A parsed shard's bytes: its Parquet file, or the JSON lines of a shard parsed before (pipeline.columnar
    reads both)."""
    key = queues.parsed_key(incident, shard)
    if not store.exists(key):
        legacy = queues.legacy_parsed_key(incident, shard)
        if store.exists(legacy):
            key = legacy
    return store.get(key)


def shard_metas(store: Store, incident: str, shards: list[str]) -> list[ShardMeta]:
    return [ShardMeta.model_validate_json(store.get(queues.shard_meta_key(incident, s))) for s in shards]


def first_site(metas: list[ShardMeta]) -> tuple[dict[str, Any] | None, list[str]]:
    """The MTA configuration the policy is derived from (the first shard's that recorded one), and
    the defect to report when shards recorded different ones."""
    sites = [m.site for m in metas if m.site]
    defects = []
    if len({json.dumps(x, sort_keys=True) for x in sites}) > 1:
        defects.append(f"{len(sites)} shards recorded different MTA configurations; the first one's is used")
    return (sites[0] if sites else None), defects


def plan_incident(store: Store, incident: str, policy: SitePolicy, policy_source: str | None = None) -> Plan:
    """Plan an incident whose shards are all parsed, and store the plan."""
    shards = parsed_shards(store, incident)
    todo = missing(shards)
    if not shards or todo:
        raise NotReady(f"{incident}: {len(todo)} shard(s) still to parse, e.g. {todo[0]}" if todo
                       else f"{incident}: no parsed shard")
    site, _ = first_site(shard_metas(store, incident, shards))
    plan = plan_step(incident, shards, lambda s: shard_data(store, incident, s), policy, policy_source, site)
    write_plan(store, plan)
    return plan
