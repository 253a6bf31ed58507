"""The plan step: the incident's order, ids, policy and campaign labels, from small columns of every shard.

The first reduce of triage (see pipeline.service.triage), run once every shard is parsed. It reads
only the columns pipeline.columnar names ORDER, GROUPING, POLICY and CLIENTS, never a record, and holds
numpy/Arrow arrays of a few hundred bytes a message, no Python object per message (but the clients'
addresses, one shard's at a time, and a number per distinct address). It gives:

- each message's position in the global (path, sha256) order (`pipeline.triage.prepare`'s, which
  the manifest keeps whatever way the snapshot was cut), its id, and how many members share its
  name (more than one: the duplicate-name defect, added by `apply`);
- the effective policy and its PolicyInfo (pipeline.sitepolicy.effective_policy, over the queue's
  evidence gathered from columns);
- each message's grouping label (pipeline.campaigns: the clusterer's, then bounces quoting too few words
  moved to the group of the client they quote, `attach_quoted`) and campaign number: campaigns are the
  labels with at least `campaign_min_size` members, numbered by size, then label.

Labels depend on the messages only, not on their order or on how they were cut into shards. The
plan is stored as one Parquet file of rows per shard and a JSON summary written last.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from pipeline import queues
from pipeline.campaigns import attach_quoted, client_codes
from pipeline.columnar import CLIENTS, GROUPING, ORDER, POLICY, grouping, ids, queue_evidence, read_columns
from pipeline.errors import NotReady
from pipeline.models import ParsedRecord, PolicyInfo, message_id
from pipeline.policy import SitePolicy
from pipeline.sitepolicy import QueueEvidence, effective_policy
from pipeline.store import Store

DUPLICATE = "duplicate member name in archive"
COLUMNS = ORDER + GROUPING + POLICY + CLIENTS  # all the plan reads of a shard
VERSION = 1

ROWS_SCHEMA = pa.schema([
    ("position", pa.int64()),  # in the global (path, sha256) order
    ("id", pa.string()),
    ("names", pa.int32()),  # members named as this one (itself included)
    ("label", pa.int64()),  # grouping label (pipeline.campaigns), the same for the messages of one group
    ("campaign", pa.int32()),  # campaign number, 0 for none
])


@dataclass
class ShardRows:
    """The plan for one shard's rows, in the shard's own row order."""

    position: np.ndarray  # int64
    id: np.ndarray  # bytes24 (ASCII)
    names: np.ndarray  # int32
    label: np.ndarray  # int64
    campaign: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.position)

    def ids(self) -> list[str]:
        return [i.decode() for i in self.id.tolist()]


@dataclass
class Plan:
    incident: str
    shards: list[str]
    messages: list[int]  # per shard, as `shards`
    policy: SitePolicy  # the effective policy
    policy_info: PolicyInfo
    campaign_sizes: list[int]  # campaign k+1's members
    campaign_labels: list[int]  # campaign k+1's grouping label
    rows: dict[str, ShardRows] = field(default_factory=dict)  # all shards', or those loaded

    @property
    def total(self) -> int:
        return sum(self.messages)


class PlanSummary(BaseModel):
    """state/<incident>/triage/plan.json: what the plan holds besides its rows (written last)."""

    model_config = ConfigDict(extra="forbid")

    version: int = VERSION
    incident: str
    shards: list[str]
    messages: list[int]
    policy: dict[str, Any] = Field(description="the effective policy, the values it sets (SitePolicy)")
    policy_info: PolicyInfo
    campaign_sizes: list[int]
    campaign_labels: list[int]


Reader: TypeAlias = Callable[[str], "pa.Table | bytes"]


def _columns(src: pa.Table | bytes) -> pa.Table:
    return read_columns(src, COLUMNS) if isinstance(src, bytes) else src.select(list(COLUMNS)).combine_chunks()


def plan_step(incident: str, shards: Sequence[str], read: Reader, policy: SitePolicy,
              policy_source: str | None = None, site: dict[str, Any] | None = None) -> Plan:
    """The plan of an incident whose parsed shards are `shards` (in part order), each read once by
    `read` (its Parquet bytes, or an Arrow table with COLUMNS: pipeline.columnar.table_of)."""
    from pipeline.clusterer import CampaignClusterer  # scikit-learn: the one step that fits it loads it

    orders: list[pa.Table] = []
    groups: list[pa.Table] = []
    policies: list[pa.Table] = []
    clients: list[pa.Table] = []
    base: list[np.ndarray] = []
    for s in shards:
        t = _columns(read(s))
        orders.append(t.select(list(ORDER)))
        groups.append(t.select(list(GROUPING)))
        policies.append(t.select(list(POLICY)))
        clients.append(t.select(list(CLIENTS)))
        base.append(np.array(ids(t.column("path").to_pylist(), t.column("sha256").to_pylist()), dtype="S24"))
        del t
    sizes = [len(t) for t in orders]
    offsets = np.r_[0, np.cumsum(sizes, dtype=np.int64)]
    n = int(offsets[-1])

    # the global order: (path, sha256), then the shard and row, as a stable sort of the records would
    order_table = pa.table({
        "path": pa.chunked_array([t.column("path").combine_chunks() for t in orders], pa.string()),
        "sha256": pa.chunked_array([t.column("sha256").combine_chunks() for t in orders], pa.string()),
        "at": pa.array(np.arange(n, dtype=np.int64)),
    })
    del orders
    order = pc.sort_indices(order_table, [("path", "ascending"), ("sha256", "ascending"), ("at", "ascending")])
    order = order.to_numpy().astype(np.int64)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n, dtype=np.int64)
    paths = order_table.column("path").take(order).combine_chunks()
    shas = order_table.column("sha256").take(order).combine_chunks()
    del order_table
    names = np.ones(n, dtype=np.int32)
    id_list = np.concatenate(base) if base else np.empty(0, dtype="S24")  # the shards' ids, concatenated
    del base
    if n > 1:
        same_path = pc.equal(paths[1:], paths[:-1]).to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.r_[True, ~same_path])
        runs = np.diff(np.r_[starts, n])
        names[order] = np.repeat(runs, runs).astype(np.int32)
        # the k-th of identical members (one name, one digest) gets an id of its own, as assign_ids gives
        same = same_path & pc.equal(shas[1:], shas[:-1]).to_numpy(zero_copy_only=False)
        if same.any():
            run_start = np.flatnonzero(np.r_[True, ~same])
            k = np.arange(n) - np.repeat(run_start, np.diff(np.r_[run_start, n]))
            for g in np.flatnonzero(k > 0).tolist():
                id_list[int(order[g])] = message_id(f"{paths[g].as_py()}#{int(k[g]) + 1}", shas[g].as_py()).encode()
    del paths, shas

    # the effective policy, from the queue's evidence: shard by shard, at the rows' global positions
    evidence = QueueEvidence()
    for i, t in enumerate(policies):
        evidence.merge(queue_evidence(t, position[offsets[i]:offsets[i + 1]]))
    del policies
    used, info = effective_policy(policy, policy_source, site, evidence)

    th = used.thresholds
    labels = CampaignClusterer(threshold=th.campaign_similarity).fit_grouping(grouping(groups)).labels_
    del groups
    # bounces quoting too few words follow the client they quote (pipeline.campaigns.attach_quoted)
    if n:  # a shard at a time: Python strings for one shard's rows only
        codes: dict[str, int] = {}
        client, quoted = zip(*(client_codes(t.column("client").to_pylist(), t.column("client_hops").to_pylist(),
                                            t.column("quoted_hops").to_pylist(), used, codes)
                               for t in clients), strict=True)
        labels = attach_quoted(labels, np.concatenate(client), np.concatenate(quoted))
    del clients
    counts = np.bincount(labels) if n else np.zeros(0, dtype=np.int64)
    big = np.flatnonzero(counts >= th.campaign_min_size)
    big = big[np.lexsort((big, -counts[big]))]  # by size, then label
    campaign = np.zeros(len(counts), dtype=np.int32)
    campaign[big] = np.arange(1, len(big) + 1, dtype=np.int32)

    rows = {}
    for i, s in enumerate(shards):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        lab = labels[lo:hi]
        rows[s] = ShardRows(position[lo:hi].copy(), id_list[lo:hi].copy(), names[lo:hi].copy(), lab.copy(),
                            campaign[lab])
    return Plan(incident, list(shards), sizes, used, info, counts[big].astype(int).tolist(), big.astype(int).tolist(),
                rows)


def apply(records: Sequence[ParsedRecord], rows: ShardRows) -> None:
    """Give a shard's records (in their row order) their ids and duplicate-name defects, as
    pipeline.triage.prepare gives them over the whole incident."""
    if len(records) != len(rows):
        raise ValueError(f"{len(records)} records for a plan of {len(rows)} rows")
    for r, rid, n in zip(records, rows.ids(), rows.names.tolist(), strict=True):
        if n > 1:
            r.defects = [d for d in r.defects if d != DUPLICATE]
            r.defects.append(f"{DUPLICATE}: {n} members are named {r.path!r}")
        r.id = rid


def rows_bytes(rows: ShardRows) -> bytes:
    table = pa.table({"position": rows.position, "id": pa.array(rows.ids(), pa.string()), "names": rows.names,
                      "label": rows.label, "campaign": rows.campaign}, schema=ROWS_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=max(1, len(rows)))
    return sink.getvalue()


def rows_of(data: bytes) -> ShardRows:
    t = pq.read_table(pa.BufferReader(data))
    return ShardRows(t.column("position").to_numpy(), np.array(t.column("id").to_pylist(), dtype="S24"),
                     t.column("names").to_numpy(),
                     t.column("label").to_numpy(), t.column("campaign").to_numpy())


def summary_bytes(plan: Plan) -> bytes:
    return PlanSummary(incident=plan.incident, shards=plan.shards, messages=plan.messages,
                       policy=plan.policy.model_dump(mode="json", exclude_unset=True), policy_info=plan.policy_info,
                       campaign_sizes=plan.campaign_sizes, campaign_labels=plan.campaign_labels
                       ).model_dump_json(indent=1).encode()


def plan_of(summary: bytes, rows: dict[str, ShardRows] | None = None) -> Plan:
    s = PlanSummary.model_validate_json(summary)
    return Plan(s.incident, s.shards, s.messages, SitePolicy.model_validate(s.policy), s.policy_info,
                s.campaign_sizes, s.campaign_labels, rows or {})


def write_plan(store: Store, plan: Plan) -> list[str]:
    """Every shard's rows, then the summary (its presence means the plan is complete); the keys written."""
    keys = []
    for s in plan.shards:
        keys.append(queues.plan_rows_key(plan.incident, s))
        store.put(keys[-1], rows_bytes(plan.rows[s]))
    keys.append(queues.plan_key(plan.incident))
    store.put(keys[-1], summary_bytes(plan))
    return keys


def load_plan(store: Store, incident: str, shards: Iterable[str] | None = None) -> Plan:
    """The stored plan, with the rows of the shards named (None: all of them, (): none)."""
    key = queues.plan_key(incident)
    if not store.exists(key):
        raise NotReady(f"{key}: the plan step has not run")
    plan = plan_of(store.get(key))
    for s in plan.shards if shards is None else shards:
        if s not in plan.shards:
            raise ValueError(f"shard {s!r} is not in the plan of {incident}")
        plan.rows[s] = rows_of(store.get(queues.plan_rows_key(incident, s)))
    return plan

