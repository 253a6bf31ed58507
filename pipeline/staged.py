"""Triage as map and reduce steps over shards: facts (map), decide (reduce), verdicts (map), summary (reduce).

Each step is a pure function of one shard's records (the maps) or of the steps' partials (the reduces),
plus the plan: every record's global position, campaign label and id, and the effective policy. The
partials are compact (numpy columns, per-campaign, per-account and per-address aggregates) and go to
and from bytes, so the same functions run in one process (`pipeline.triage.decide`), over N local
shards, or one step per function call; the manifest is the same bytes whichever way it was cut.

The global order is the plan's: a map sorts its shard's rows by global position, and every aggregate
that a report lists in first-seen order (a Counter's ties) carries the position where a value was
first seen, so merging shards in any order gives what one pass over all messages in order gives.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np
import zstandard
from pydantic import TypeAdapter

from pipeline.campaign_labels import describe as describe_campaign
from pipeline.campaigns import (
    attach_quoted,
    client_codes,
    client_evidence,
    features_of,
    top_terms,
)
from pipeline.manifest_io import part_row, rows_table
from pipeline.models import (
    AccountReport,
    Campaign,
    Manifest,
    ManifestMessage,
    ParsedRecord,
    PolicyInfo,
    Reason,
    ReasonCode,
    SnapshotInfo,
    SourceReport,
    Spread,
    Totals,
    Verdict,
    construct_all,
)
from pipeline.parse import addr_domain
from pipeline.policy import SitePolicy
from pipeline.review_groups import group_review
from pipeline.sitepolicy import describe, trusted_run_warning, unnamed_login_warning
from pipeline.text import neutral
from pipeline.verdicts import (
    _CAMPAIGN_WHEN,
    AccountProfile,
    CampaignFacts,
    Context,
    Decision,
    R,
    _decision,
    _first,
    context,
    message_decision,
    records_client,
    resolved,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from pipeline.plan import Plan as StoredPlan

LABEL_SAMPLE = 100  # members whose words make a campaign's label
SUBJECT_SAMPLE = 1000  # members whose subjects give a campaign's sample subjects
Progress = Callable[[str, int, int | None], None]


def _noop(stage: str, done: int, total: int | None) -> None:
    pass


def digest64(s: str) -> int:
    """A 64-bit digest of a string: equal strings compare equal in a uint64 column (a collision among a
    million values has odds of about 1 in 10^7 million)."""
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


# ---- bytes ----------------------------------------------------------------------------------------------
# A partial is JSON (small aggregates) and an .npz (columns), zstd-compressed; never pickle: the state
# prefix is storage another process wrote, and loading it must not run code.

_DT: TypeAdapter[datetime | None] = TypeAdapter(datetime | None)


def _pack(meta: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    head = json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode()
    return zstandard.ZstdCompressor(level=3).compress(len(head).to_bytes(8, "little") + head + buf.getvalue())


def _unpack(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    k = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:8 + k])
    with np.load(io.BytesIO(raw[8 + k:]), allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    return meta, arrays


def _dt(v: datetime | None) -> Any:
    return _DT.dump_python(v, mode="json")


def _undt(v: Any) -> datetime | None:
    return _DT.validate_python(v)


def _decision_json(d: Decision) -> dict[str, Any]:
    return {"verdict": d.verdict.value, "confidence": d.confidence, "accounts": sorted(d.accounts),
            "reasons": [r.model_dump(mode="json") for r in d.reasons]}


def _decision_of(v: dict[str, Any]) -> Decision:
    return Decision(Verdict(v["verdict"]), v["confidence"], [Reason.model_validate(r) for r in v["reasons"]],
                    set(v["accounts"]))


# ---- the plan -------------------------------------------------------------------------------------------

@dataclass(slots=True)
class ShardPlan:
    """One shard's rows in the plan, in the shard's own row order."""

    pos: np.ndarray  # int64: each row's position in the global order
    label: np.ndarray  # int64: each row's grouping label


@dataclass(slots=True)
class Plan:
    """What every step needs to know of the whole incident: order, labels, campaigns, the policy (the
    plan step's, pipeline.plan.Plan, as the steps read it: `Plan.of`)."""

    n: int
    policy: SitePolicy
    info: PolicyInfo | None
    campaign_labels: list[int]  # the label of campaign id c is campaign_labels[c - 1]
    shards: dict[str, ShardPlan]  # the rows of the shards loaded
    names: list[str] = field(default_factory=list)  # every shard of the incident, in part order

    @classmethod
    def of(cls, p: StoredPlan) -> Plan:
        return cls(p.total, p.policy, p.policy_info, list(p.campaign_labels),
                   {s: ShardPlan(r.position, r.label) for s, r in p.rows.items()}, list(p.shards))

    def cids(self, label: np.ndarray) -> np.ndarray:
        """Each row's campaign id (0: in no campaign)."""
        out = np.zeros(len(label), dtype=np.int64)
        if self.campaign_labels:
            labs = np.asarray(self.campaign_labels, dtype=np.int64)
            order = np.argsort(labs)
            at = np.searchsorted(labs[order], label)
            at = np.minimum(at, len(labs) - 1)
            hit = labs[order][at] == label
            out[hit] = order[at[hit]] + 1
        return out


def campaign_labels(labels: np.ndarray, min_size: int) -> list[int]:
    """The labels that are campaigns, in campaign id order: by size, then by label (which follows the
    messages' content, not their order)."""
    uniq, counts = np.unique(labels, return_counts=True)
    big = [(-int(c), int(lab)) for lab, c in zip(uniq, counts, strict=True) if c >= min_size]
    return [lab for _, lab in sorted(big)]


def group_labels(records: Sequence[ParsedRecord], policy: SitePolicy) -> np.ndarray:
    """Every record's grouping label, the records in global order (today's plan: one clusterer over all)."""
    from pipeline.clusterer import CampaignClusterer  # scikit-learn: loaded where a clusterer is fitted only

    clusterer = CampaignClusterer(threshold=policy.thresholds.campaign_similarity).fit(
        [features_of(r) for r in records])
    return np.asarray(clusterer.labels_, dtype=np.int64)


def plan_records(records: Sequence[ParsedRecord], policy: SitePolicy, info: PolicyInfo | None,
                 parts: Sequence[tuple[str, np.ndarray]] | None = None, labels: np.ndarray | None = None) -> Plan:
    """The plan of records already in global order with their ids (what `decide` is given); `parts`
    cuts them into shards (name, global positions of its rows), else one shard "0". `labels`: the
    records' grouping labels when already known."""
    labels = group_labels(records, policy) if labels is None else labels
    # bounces quoting too few words follow the client they quote, as the plan step has them
    if records:
        clients, hops, quoted = zip(*map(client_evidence, records), strict=True)
        labels = attach_quoted(labels, *client_codes(clients, hops, quoted, policy))
    n = len(records)
    if parts is None:
        parts = [("0", np.arange(n, dtype=np.int64))]
    shards = {name: ShardPlan(np.asarray(pos, dtype=np.int64), labels[pos]) for name, pos in parts}
    return Plan(n, policy, info, campaign_labels(labels, policy.thresholds.campaign_min_size), shards, list(shards))


# ---- facts (map) ----------------------------------------------------------------------------------------
# One bit per condition the campaign rules count (pipeline.verdicts.CampaignFacts).
RELAYED = 1
FORGED_EXT = 2  # forged a local sender from outside, to an external recipient
BOUNCE_OUT = 4  # a bounce to external recipients only
AUTHED = 8
TRUSTED_PLAIN = 16  # from a trusted network or the host, unauthenticated, not a bounce
INBOUND = 32
RELAYED_FOREIGN = 64  # relayed for a sender not ours
BULK = 128  # List-Unsubscribe or Precedence: bulk
NONLOCAL = 256  # the envelope sender is not a local address
UNTRUSTED_IP = 512  # a client address outside trusted networks
TRUSTED = 1024
EXTERNAL = 2048  # an external recipient
EVASIVE = 4096  # words broken to slip past content filters (ParsedRecord.evasion)


def _flags(rec: ParsedRecord, c: Context, policy: SitePolicy) -> int:
    f = 0
    ext, loc = bool(c.external_rcpts), bool(c.local_rcpts)
    if c.relayed:
        f |= RELAYED
        if not c.sender_local:
            f |= RELAYED_FOREIGN
    if c.forged_local and ext:
        f |= FORGED_EXT
    if rec.bounce and ext and not loc:
        f |= BOUNCE_OUT
    if c.authenticated:
        f |= AUTHED
    if c.local_origin and not c.authenticated and not rec.bounce:
        f |= TRUSTED_PLAIN
    if c.inbound:
        f |= INBOUND
    if rec.list_unsubscribe or rec.precedence_bulk:
        f |= BULK
    if not policy.is_local_address(rec.envelope.mail_from):
        f |= NONLOCAL
    if c.client_ip and not c.trusted:
        f |= UNTRUSTED_IP
    if c.trusted:
        f |= TRUSTED
    if ext:
        f |= EXTERNAL
    if rec.evasion:
        f |= EVASIVE
    return f


class _Codes:
    """Strings numbered in the order first met (a shard's, or the incident's, dictionary of them)."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.index: dict[str, int] = {}
        for v in values:
            self.code(v)

    def code(self, v: str | None) -> int:
        if not v:
            return -1
        return self.index.setdefault(v, len(self.index))

    @property
    def values(self) -> list[str]:
        return list(self.index)


@dataclass(slots=True)
class Facts:
    """One shard's compact facts: per message a few columns, and its partial aggregates."""

    pos: np.ndarray  # int64
    flags: np.ndarray  # uint16
    ip: np.ndarray  # int32 code into ips (-1: none)
    account: np.ndarray  # int32 code into accounts (-1: none)
    sender_domain: np.ndarray  # uint64 digest of the envelope sender's domain
    sender: np.ndarray  # uint64 digest of the envelope sender, lowercased
    ips: list[str]
    accounts: list[str]
    ext_account: np.ndarray  # int32: (account, external recipient) pairs, distinct ...
    ext_rcpt: np.ndarray  # uint64: ... as the recipient's digest
    ours: np.ndarray  # uint64 digests of senders the shard shows to be ours (verdicts.senders_seen_ours)

    _COLS = ("pos", "flags", "ip", "account", "sender_domain", "sender", "ext_account", "ext_rcpt", "ours")

    def to_bytes(self) -> bytes:
        return _pack({"ips": self.ips, "accounts": self.accounts}, {k: getattr(self, k) for k in self._COLS})

    @classmethod
    def from_bytes(cls, data: bytes) -> Facts:
        meta, a = _unpack(data)
        return cls(**{k: a[k] for k in cls._COLS}, ips=meta["ips"], accounts=meta["accounts"])


Resolved = tuple[list[int], list[ParsedRecord], list[Context]]


def resolved_rows(records: Sequence[ParsedRecord], plan: Plan, shard: str, settled: bool = False) -> Resolved:
    """The shard's rows in global order: positions, records with their origin settled, contexts. Both map
    steps start from them; one process running both passes them on (`run_in_memory`) rather than work
    them out twice (a context is a fifth of the verdicts step). `settled`: the records' origins are
    settled already, under the plan's policy (pipeline.verdicts.resolve_origin: settling again changes
    nothing)."""
    policy = plan.policy
    sp = plan.shards[shard]
    order = np.argsort(sp.pos, kind="stable")
    pos = sp.pos[order].tolist()
    recs = [records[i] for i in order.tolist()] if settled else [resolved(records[i], policy) for i in order.tolist()]
    return pos, recs, [context(r, policy) for r in recs]


def rows_and_facts(records: Sequence[ParsedRecord], policy: SitePolicy, settled: bool = False
                   ) -> tuple[Resolved, Facts]:
    """`resolved_rows` and `facts` of one shard holding every record, the records in global order, before
    the plan's labels are known (neither step reads them): what a process can work out while the labels
    are computed elsewhere (`run_in_memory`'s `ready`)."""
    n = len(records)
    pos = np.arange(n, dtype=np.int64)
    plan = Plan(n, policy, None, [], {"0": ShardPlan(pos, np.zeros(n, dtype=np.int64))}, ["0"])
    rows = resolved_rows(records, plan, "0", settled)
    return rows, facts(records, plan, "0", rows)


def facts(records: Sequence[ParsedRecord], plan: Plan, shard: str, rows: Resolved | None = None) -> Facts:
    """The map step `facts`: what the campaign rules and the account profiles read, per message. `rows`:
    `resolved_rows` of the records when already known."""
    policy = plan.policy
    pos, recs, ctxs = rows if rows is not None else resolved_rows(records, plan, shard)
    ips, accounts = _Codes(), _Codes()
    n = len(recs)
    flags = np.empty(n, dtype=np.uint16)
    ip = np.empty(n, dtype=np.int32)
    acct = np.empty(n, dtype=np.int32)
    sdom = np.empty(n, dtype=np.uint64)
    sender = np.empty(n, dtype=np.uint64)
    ext: set[tuple[int, int]] = set()
    ours: set[int] = set()
    for k, (r, c) in enumerate(zip(recs, ctxs, strict=True)):
        flags[k] = _flags(r, c, policy)
        ip[k] = ips.code(c.client_ip)
        acct[k] = a = accounts.code(c.account)
        mail_from = r.envelope.mail_from
        sdom[k] = digest64(addr_domain(mail_from))
        sender[k] = digest64((mail_from or "").lower())
        if a >= 0:
            ext.update((a, digest64(x)) for x in c.external_rcpts)
        # senders_seen_ours, per message
        if c.sender_local or c.local_rcpts:
            if c.sender_local and (c.authenticated or c.local_origin or c.signed_in) and not r.bounce:
                ours.add(digest64((mail_from or "").lower()))
            if r.bounce and c.bounced_ours:
                ours.update(digest64(x.lower()) for x in c.local_rcpts)
    pairs = sorted(ext)
    return Facts(np.asarray(pos, dtype=np.int64), flags, ip, acct, sdom, sender, ips.values, accounts.values,
                 np.asarray([a for a, _ in pairs], dtype=np.int32), np.asarray([h for _, h in pairs], dtype=np.uint64),
                 np.asarray(sorted(ours), dtype=np.uint64))


# ---- decide (reduce) ------------------------------------------------------------------------------------

@dataclass(slots=True)
class Table:
    """Every message's facts in global order: columns, and the incident's dictionaries."""

    flags: np.ndarray
    ip: np.ndarray
    account: np.ndarray
    sender_domain: np.ndarray
    ours: np.ndarray  # bool: the envelope sender is one the queue shows to be ours
    cid: np.ndarray
    ips: list[str]
    accounts: list[str]

    def ip_str(self, i: int) -> str | None:
        c = int(self.ip[i])
        return None if c < 0 else self.ips[c]


class _Row:
    __slots__ = ("client_ip",)

    def __init__(self, client_ip: str | None) -> None:
        self.client_ip = client_ip


class _Rows:
    """`f.ctxs[i]` for a rule's words: the one field they read, from the table."""

    def __init__(self, t: Table) -> None:
        self.t = t

    def __getitem__(self, i: int) -> _Row:
        return _Row(self.t.ip_str(int(i)))


class ColumnFacts(CampaignFacts):
    """CampaignFacts counted over the table's columns instead of records and contexts: the same figures,
    the rule tables (pipeline.verdicts.CAMPAIGN_RULES) unchanged."""

    def __init__(self, members: np.ndarray, t: Table, policy: SitePolicy,
                 profiles: Mapping[str, AccountProfile]) -> None:
        self.members = members  # type: ignore[assignment]  # an index array, not a list
        self.policy, self.profiles, self.t = policy, profiles, t
        self.recs = ()  # nothing reads records: the columns say it all
        self.ctxs = _Rows(t)  # type: ignore[assignment]
        f = t.flags[members]
        self.n = n = len(members)

        def has(bit: int) -> np.ndarray:
            return np.asarray((f & bit) != 0)

        relayed, forged = has(RELAYED), has(FORGED_EXT)
        self.relayed = int(relayed.sum())
        self.forged = int(forged.sum())
        self.bounces_out = int(has(BOUNCE_OUT).sum())
        self.authed = members[has(AUTHED)]
        self.trusted_plain = int(has(TRUSTED_PLAIN).sum())
        self.inbound = int(has(INBOUND).sum())
        # only their number is read
        self.ips = range(len(np.unique(t.ip[members[has(UNTRUSTED_IP)]])))  # type: ignore[assignment]
        self.abusive = self.relayed + self.forged
        self.abusers = members[relayed | forged]
        self.relayed_foreign = int(has(RELAYED_FOREIGN).sum())
        self.forged_unknown = int((forged & ~t.ours[members]).sum())
        self.abused = self.relayed_foreign + self.forged_unknown >= max(2, 0.1 * n)
        self.unattributed = self.abusive >= max(2, 0.1 * n)
        self.authed_bulk = len(self.authed) > 0 and len(self.authed) >= 0.5 * n

    @cached_property
    def one_source(self) -> bool:
        ab = np.asarray(self.abusers)
        return len(np.unique(self.t.ip[ab])) == 1 and len(np.unique(self.t.sender_domain[ab])) == 1

    @cached_property
    def evasive(self) -> int:
        return int(((self.t.flags[np.asarray(self.abusers)] & EVASIVE) != 0).sum())

    @cached_property
    def stolen(self) -> dict[str, str]:
        th, t = self.policy.thresholds, self.t
        bad: dict[str, str] = {}
        for account, idx in self.by_account.items():
            if len(idx) < th.campaign_min_size:
                continue
            fl = t.flags[idx]
            ips = len(np.unique(t.ip[idx[(fl & UNTRUSTED_IP) != 0]]))
            nonlocal_senders = int(((fl & NONLOCAL) != 0).sum())
            if ips >= th.compromised_min_client_ips or nonlocal_senders >= 0.5 * len(idx):
                bad[account] = (f"account {account!r}: {len(idx)} copies from {ips} client IPs outside trusted "
                                f"networks, {nonlocal_senders} with a non-local sender")
        return bad

    @cached_property
    def by_account(self) -> dict[str, np.ndarray]:  # type: ignore[override]
        a = np.asarray(self.authed)
        codes = self.t.account[a]
        uniq, first = np.unique(codes, return_index=True)
        return {self.t.accounts[int(uniq[k])]: a[codes == uniq[k]] for k in np.argsort(first).tolist()}

    @cached_property
    def main_account(self) -> tuple[str, set[str | None]]:
        account, idx = max(self.by_account.items(), key=lambda kv: len(kv[1]))
        t = self.t
        sel = idx[(t.flags[idx] & UNTRUSTED_IP) != 0]
        return account, {t.ips[int(c)] for c in np.unique(t.ip[sel])}

    @cached_property
    def bulk_marks(self) -> int:
        return int(((self.t.flags[np.asarray(self.authed)] & BULK) != 0).sum())


@dataclass(slots=True)
class Decisions:
    """The reduce `decide`: campaign decisions, account profiles, abusive clients, spam labels."""

    campaigns: dict[int, Decision]
    profiles: dict[str, AccountProfile]
    external: dict[str, int]  # per account: distinct external recipients
    abusive_ips: set[str]
    spam_labels: set[int]
    outbound_ips: set[str]  # clients that sent a spam campaign's copies out (see decide_campaigns)

    def to_bytes(self) -> bytes:
        return _pack({
            "campaigns": {str(c): _decision_json(d) for c, d in self.campaigns.items()},
            "profiles": [{"account": p.account, "messages": p.messages, "ips": list(p.ips.items()),
                          "normal_ips": sorted(p.normal_ips), "campaigns": sorted(p.campaigns),
                          "compromised": p.compromised, "attacker_ips": sorted(p.attacker_ips)}
                         for p in self.profiles.values()],
            "external": self.external, "abusive_ips": sorted(self.abusive_ips),
            "spam_labels": sorted(self.spam_labels), "outbound_ips": sorted(self.outbound_ips)}, {})

    @classmethod
    def from_bytes(cls, data: bytes) -> Decisions:
        m, _ = _unpack(data)
        profiles = {}
        for p in m["profiles"]:
            profiles[p["account"]] = AccountProfile(p["account"], p["messages"], set(), Counter(dict(p["ips"])),
                                                    set(p["normal_ips"]), set(p["campaigns"]), p["compromised"],
                                                    set(p["attacker_ips"]))
        return cls({int(c): _decision_of(d) for c, d in m["campaigns"].items()}, profiles, m["external"],
                   set(m["abusive_ips"]), set(m["spam_labels"]), set(m["outbound_ips"]))


def _table(parts: Sequence[Facts], plan: Plan) -> tuple[Table, np.ndarray, np.ndarray]:
    """The incident's columns in global order, its dictionaries, and its external-recipient pairs."""
    n = plan.n
    flags = np.zeros(n, dtype=np.uint16)
    ip = np.full(n, -1, dtype=np.int32)
    acct = np.full(n, -1, dtype=np.int32)
    sdom = np.zeros(n, dtype=np.uint64)
    sender = np.zeros(n, dtype=np.uint64)
    ips, accounts = _Codes(), _Codes()
    ext_a: list[np.ndarray] = []
    ext_r: list[np.ndarray] = []
    ours: list[np.ndarray] = []
    for f in parts:
        ip_map = np.asarray([ips.code(v) for v in f.ips] + [-1], dtype=np.int32)  # [-1]: code -1 stays -1
        ac_map = np.asarray([accounts.code(v) for v in f.accounts] + [-1], dtype=np.int32)
        flags[f.pos], ip[f.pos], acct[f.pos] = f.flags, ip_map[f.ip], ac_map[f.account]
        sdom[f.pos], sender[f.pos] = f.sender_domain, f.sender
        ext_a.append(ac_map[f.ext_account])
        ext_r.append(f.ext_rcpt)
        ours.append(f.ours)
    our = np.unique(np.concatenate(ours)) if ours else np.zeros(0, dtype=np.uint64)
    cid = np.zeros(n, dtype=np.int64)
    for sp in plan.shards.values():
        cid[sp.pos] = plan.cids(sp.label)
    t = Table(flags, ip, acct, sdom, np.isin(sender, our), cid, ips.values, accounts.values)
    return t, (np.concatenate(ext_a) if ext_a else np.zeros(0, np.int32)), (
        np.concatenate(ext_r) if ext_r else np.zeros(0, np.uint64))


def _pairs(a: np.ndarray, b: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (a, b) pairs of rows in order: a, b, count, first row."""
    key = a.astype(np.int64) * (width + 1) + b.astype(np.int64)
    uniq, first, counts = np.unique(key, return_index=True, return_counts=True)
    return uniq // (width + 1), uniq % (width + 1), counts, first


def _profiles(t: Table) -> dict[str, AccountProfile]:
    """Per account: messages, client addresses in first-seen order, those outside campaigns, campaigns."""
    profiles: dict[str, AccountProfile] = {}
    acc = t.account
    has = np.flatnonzero(acc >= 0)
    counts = np.bincount(acc[has], minlength=len(t.accounts))
    # profiles are made in the order accounts first appear, as one pass over the messages makes them
    first = np.full(len(t.accounts), len(acc), dtype=np.int64)
    np.minimum.at(first, acc[has], has)
    for a in np.argsort(first, kind="stable").tolist():
        if counts[a]:
            profiles[t.accounts[a]] = AccountProfile(t.accounts[a], messages=int(counts[a]))
    withip = has[t.ip[has] >= 0]
    width = len(t.ips)
    aa, ii, cc, ff = _pairs(acc[withip], t.ip[withip], width)
    for k in np.argsort(ff, kind="stable").tolist():
        profiles[t.accounts[int(aa[k])]].ips[t.ips[int(ii[k])]] = int(cc[k])
    normal = withip[t.cid[withip] == 0]
    aa, ii, _, _ = _pairs(acc[normal], t.ip[normal], width)
    for a, i in zip(aa.tolist(), ii.tolist(), strict=True):
        profiles[t.accounts[a]].normal_ips.add(t.ips[i])
    inc = has[t.cid[has] > 0]
    aa, cc2, _, _ = _pairs(acc[inc], t.cid[inc], int(t.cid.max(initial=0)))
    for a, c in zip(aa.tolist(), cc2.tolist(), strict=True):
        profiles[t.accounts[a]].campaigns.add(c)
    return profiles


def decide_campaigns(parts: Sequence[Facts], plan: Plan) -> Decisions:
    """The reduce step `decide`: campaign decisions (twice: the second sees the accounts found stolen),
    account profiles, the clients that fed spam, and the labels of spam campaigns."""
    t, ext_a, ext_r = _table(parts, plan)
    policy = plan.policy
    order = np.argsort(t.cid, kind="stable")
    bounds = np.searchsorted(t.cid[order], np.arange(len(plan.campaign_labels) + 2))
    members = {c: order[bounds[c]:bounds[c + 1]] for c in range(1, len(plan.campaign_labels) + 1)}
    profiles = _profiles(t)
    external: dict[str, int] = {}
    if len(ext_r):
        # distinct (account, recipient) pairs over all shards
        key = np.unique(np.stack([ext_a.astype(np.uint64), ext_r]).T, axis=0)
        for a, c in zip(*np.unique(key[:, 0], return_counts=True), strict=True):
            external[t.accounts[int(a)]] = int(c)

    def decide_all() -> dict[int, Decision]:
        return {c: _decision(_first(_CAMPAIGN_WHEN, f), f)  # type: ignore[arg-type]  # a CampaignFacts
                for c, m in members.items() for f in [ColumnFacts(m, t, policy, profiles)]}

    decisions = decide_all()
    for c, m in members.items():
        d = decisions[c]
        if d.verdict is not Verdict.spam:
            continue
        codes = [i for i, a in enumerate(t.accounts) if a in d.accounts and a in profiles]
        hit = m[np.isin(t.account[m], codes)]
        for i in hit.tolist():
            p = profiles[t.accounts[int(t.account[i])]]
            p.compromised = True
            if (ip := t.ip_str(i)) is not None:
                p.attacker_ips.add(ip)
    decisions = decide_all()
    spam = [c for c, d in decisions.items() if d.verdict is Verdict.spam]
    spam_labels = {plan.campaign_labels[c - 1] for c in spam}
    # clients that fed a spam campaign, or relayed under more than two sender domains
    client = (t.ip >= 0) & ((t.flags & TRUSTED) == 0)
    in_spam = client & np.isin(t.cid, spam)
    fed = np.unique(t.ip[in_spam])
    rel = np.flatnonzero(client & ((t.flags & RELAYED) != 0))
    pair = np.unique(np.stack([t.ip[rel].astype(np.uint64), t.sender_domain[rel]]).T, axis=0) if len(rel) else (
        np.zeros((0, 2), dtype=np.uint64))
    ipc, nd = np.unique(pair[:, 0], return_counts=True)
    forging = ipc[nd > 2]
    abusive = {t.ips[int(i)] for i in np.union1d(fed, forging.astype(np.int64)).tolist()}
    # clients that sent a spam campaign's copies out: every copy from outside but one only inbound to our
    # users (a client sending only those may be a mailing the run imitates: verdicts' inbound_in_spam_campaign)
    inbound_only = ((t.flags & INBOUND) != 0) & ((t.flags & EXTERNAL) == 0)
    out = np.unique(t.ip[in_spam & ~inbound_only])
    outbound = {t.ips[int(i)] for i in out.tolist()}
    return Decisions(decisions, profiles, external, abusive, spam_labels, outbound)


# ---- verdicts (map) -------------------------------------------------------------------------------------

class Tally:
    """Counts with the global position where each value was first seen: merged in any order, they list
    ties as one pass in order would (Counter.most_common keeps first-seen order)."""

    __slots__ = ("counts", "first")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.first: dict[str, tuple[int, int]] = {}

    def add(self, value: str, at: tuple[int, int]) -> None:
        if value in self.counts:
            self.counts[value] += 1
            if at < self.first[value]:
                self.first[value] = at
        else:
            self.counts[value] = 1
            self.first[value] = at

    def add_next(self, value: str, at: tuple[int, int]) -> None:
        """`add`, for a caller whose positions only grow (the verdicts step, over a shard's messages in
        global order): a value's first position is the one it was first added with."""
        counts = self.counts
        if value in counts:
            counts[value] += 1
        else:
            counts[value] = 1
            self.first[value] = at

    def merge(self, other: Tally) -> None:
        for v, c in other.counts.items():
            at = other.first[v]
            if v in self.counts:
                self.counts[v] += c
                if at < self.first[v]:
                    self.first[v] = at
            else:
                self.counts[v], self.first[v] = c, at

    def counter(self) -> Counter[str]:
        return Counter({v: self.counts[v] for v in sorted(self.counts, key=self.first.__getitem__)})

    def spread(self, k: int = 5) -> Spread:
        c = Counter({v: n for v, n in self.counter().items() if v})
        return Spread(distinct=len(c), top=c.most_common(k))

    def to_json(self) -> list[Any]:
        return [[v, c, list(self.first[v])] for v, c in self.counts.items()]

    @classmethod
    def of_json(cls, rows: list[Any]) -> Tally:
        t = cls()
        for v, c, at in rows:
            t.counts[v], t.first[v] = c, (at[0], at[1])
        return t


@dataclass(slots=True)
class Span:
    """The first and last of some times, kept apart for naive and aware ones (a campaign whose times mix
    them has neither: comparing them raises), each with the position it was seen at: of equal times
    (one instant in two time zones) min() and max() keep the first seen."""

    lo: dict[str, tuple[datetime, int]] = field(default_factory=dict)
    hi: dict[str, tuple[datetime, int]] = field(default_factory=dict)

    def add(self, t: datetime, at: int) -> None:
        k = "naive" if t.tzinfo is None or t.utcoffset() is None else "aware"
        lo, hi = self.lo.get(k), self.hi.get(k)
        if lo is None or t < lo[0] or (t == lo[0] and at < lo[1]):
            self.lo[k] = (t, at)
        if hi is None or t > hi[0] or (t == hi[0] and at < hi[1]):
            self.hi[k] = (t, at)

    def merge(self, o: Span) -> None:
        for k, (t, at) in o.lo.items():
            lo = self.lo.get(k)
            if lo is None or t < lo[0] or (t == lo[0] and at < lo[1]):
                self.lo[k] = (t, at)
        for k, (t, at) in o.hi.items():
            hi = self.hi.get(k)
            if hi is None or t > hi[0] or (t == hi[0] and at < hi[1]):
                self.hi[k] = (t, at)

    def bounds(self) -> tuple[datetime | None, datetime | None]:
        if len(self.lo) != 1:
            return None, None
        [k] = self.lo
        return self.lo[k][0], self.hi[k][0]

    def to_json(self) -> dict[str, Any]:
        return {side: {k: [_dt(t), at] for k, (t, at) in getattr(self, side).items()} for side in ("lo", "hi")}

    @classmethod
    def of_json(cls, v: dict[str, Any]) -> Span:
        def side(d: dict[str, Any]) -> dict[str, tuple[datetime, int]]:
            return {k: (_undt(t), at) for k, (t, at) in d.items()}  # type: ignore[misc]
        return cls(side(v["lo"]), side(v["hi"]))


@dataclass(slots=True)
class CampaignPart:
    """One shard's share of a campaign's report."""

    size: int = 0
    senders: Tally = field(default_factory=Tally)
    rcpt_domains: Tally = field(default_factory=Tally)
    ips: Tally = field(default_factory=Tally)
    accounts: Tally = field(default_factory=Tally)
    verdicts: Tally = field(default_factory=Tally)
    times: Span = field(default_factory=Span)
    subjects: list[tuple[int, str]] = field(default_factory=list)  # (position, subject): the first members'
    sample: list[tuple[int, str, str]] = field(default_factory=list)  # (position, subject, text)

    def merge(self, o: CampaignPart) -> None:
        self.size += o.size
        for name in ("senders", "rcpt_domains", "ips", "accounts", "verdicts"):
            getattr(self, name).merge(getattr(o, name))
        self.times.merge(o.times)
        self.subjects = heapq.nsmallest(SUBJECT_SAMPLE, [*self.subjects, *o.subjects])
        self.sample = heapq.nsmallest(LABEL_SAMPLE, [*self.sample, *o.sample])

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, **{k: getattr(self, k).to_json() for k in
                                      ("senders", "rcpt_domains", "ips", "accounts", "verdicts")},
                "times": self.times.to_json(),
                "subjects": self.subjects, "sample": self.sample}

    @classmethod
    def of_json(cls, v: dict[str, Any]) -> CampaignPart:
        t = {k: Tally.of_json(v[k]) for k in ("senders", "rcpt_domains", "ips", "accounts", "verdicts")}
        return cls(v["size"], t["senders"], t["rcpt_domains"], t["ips"], t["accounts"], t["verdicts"],
                   Span.of_json(v["times"]),
                   [(p, s) for p, s in v["subjects"]], [(p, s, x) for p, s, x in v["sample"]])


@dataclass(slots=True)
class Verdicts:
    """One shard's verdicts: its messages in global order, and its share of the manifest's reports."""

    pos: np.ndarray  # int64: the positions of the shard's messages, ascending
    messages: list[ManifestMessage]  # in memory; read from bytes they stay compressed (`blob`) until iterated
    review: list[tuple[int, ManifestMessage, str | None]]  # review messages: (position, message, sender quoted)
    counts: Counter[str] = field(default_factory=Counter)
    size: int = 0
    campaigns: dict[int, CampaignPart] = field(default_factory=dict)
    account_spam: Counter[str] = field(default_factory=Counter)
    sources: dict[str, list[Any]] = field(default_factory=dict)  # ip -> [messages, spam, accounts]
    needs: int = 0  # messages whose queue stores no client address and that have Received lines
    missed: int = 0  # ... in which no hop is ours
    hop_names: Tally = field(default_factory=Tally)  # topmost `by` names of those missed
    unnamed: int = 0  # messages signed in as an account no hop of ours names (sitepolicy.signed_in_unnamed)
    # the messages as the manifest parts' rows (pipeline.manifest_io.part_row): an Arrow IPC stream of
    # zstd-compressed batches, read a batch at a time; or, written before, zstd-compressed JSON lines
    blob: bytes = b""

    def _rows_in_blob(self) -> bool:
        return self.blob[:4] == _IPC_CONTINUATION

    def iter_messages(self) -> Iterator[ManifestMessage]:
        """The shard's messages in order, parsed one at a time when read from bytes."""
        if self.messages or not self.blob:
            yield from self.messages
            return
        if self._rows_in_blob():
            for row in self.iter_rows():
                yield ManifestMessage.model_validate_json(row[-1])
            return
        reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(self.blob)))
        for line in reader:
            yield ManifestMessage.model_validate_json(line)

    def iter_rows(self) -> Iterator[tuple[Any, ...]]:
        """The shard's messages in order as the manifest parts' rows, without parsing a message."""
        if self.messages or not self._rows_in_blob():
            yield from map(part_row, self.iter_messages())
            return
        import pyarrow as pa

        for batch in pa.ipc.open_stream(pa.py_buffer(self.blob)):
            yield from zip(*(c.to_pylist() for c in batch.columns), strict=True)

    def to_bytes(self) -> bytes:
        ser = ManifestMessage.__pydantic_serializer__.to_json
        meta = {"review": [[p, ser(m).decode(), q] for p, m, q in self.review], "counts": dict(self.counts),
                "size": self.size, "campaigns": {str(c): p.to_json() for c, p in self.campaigns.items()},
                "account_spam": dict(self.account_spam),
                "sources": {ip: [a, b, sorted(c)] for ip, (a, b, c) in self.sources.items()},
                "needs": self.needs, "missed": self.missed, "hop_names": self.hop_names.to_json(),
                "unnamed": self.unnamed}
        head = _pack(meta, {"pos": np.asarray(self.pos, dtype=np.int64)})
        blob = self.blob if not self.messages else _rows_blob(self.messages)
        return len(head).to_bytes(8, "little") + head + blob

    @classmethod
    def from_bytes(cls, data: bytes) -> Verdicts:
        k = int.from_bytes(data[:8], "little")
        m, a = _unpack(data[8:8 + k])
        review = [(p, ManifestMessage.model_validate_json(x), q) for p, x, q in m["review"]]
        return cls(a["pos"], [], review, Counter(m["counts"]), m["size"],
                   {int(c): CampaignPart.of_json(v) for c, v in m["campaigns"].items()}, Counter(m["account_spam"]),
                   {ip: [x, y, set(z)] for ip, (x, y, z) in m["sources"].items()}, m["needs"], m["missed"],
                   Tally.of_json(m["hop_names"]), m.get("unnamed", 0), data[8 + k:])


_IPC_CONTINUATION = b"\xff\xff\xff\xff"  # how an Arrow IPC stream starts (a zstd frame: 28 b5 2f fd)
ROWS_BATCH = 1024  # rows a batch: the summary holds one batch of every shard while it merges them


def _rows_blob(messages: Sequence[ManifestMessage]) -> bytes:
    """Messages as their part rows, an Arrow IPC stream of zstd-compressed batches."""
    from pipeline.columnar import ipc_bytes

    return ipc_bytes(rows_table([part_row(m) for m in messages]), compression="zstd", batch_rows=ROWS_BATCH)


def verdicts(records: Sequence[ParsedRecord], plan: Plan, shard: str, dec: Decisions,
             rows: Resolved | None = None) -> Verdicts:
    """The map step `verdicts`: each message's verdict and manifest entry, and the shard's share of the
    reports (campaign spreads and samples, per account and per client counts, review inputs). `rows`:
    `resolved_rows` of the records when already known."""
    sp = plan.shards[shard]
    order = np.argsort(sp.pos, kind="stable")
    labels = sp.label[order].tolist()
    cids = plan.cids(sp.label[order]).tolist()
    pos, recs, ctxs = rows if rows is not None else resolved_rows(records, plan, shard)
    # the abusive clients this shard can ask about (the set may be large; a lookup needs only these)
    abusive = {c.client_ip for c in ctxs if c.client_ip in dec.abusive_ips}
    outbound = {c.client_ip for c in ctxs if c.client_ip in dec.outbound_ips}
    out = Verdicts(np.asarray(pos, dtype=np.int64), [], [])
    for k, (r, c) in enumerate(zip(recs, ctxs, strict=True)):
        at = pos[k]
        camp = cids[k] or None
        hit = bool(r.bounce and r.bounced_original_text and labels[k] in dec.spam_labels)
        d = message_decision(k, recs, ctxs, dec.campaigns[camp] if camp else None, hit, dec.profiles, abusive,
                             outbound)
        if r.defects and d.verdict is not Verdict.review:
            d.reasons.append(R(ReasonCode.mime_defects, "MIME defects (not blocking): " + ", ".join(r.defects), "info"))
        if r.envelope_inferred:
            d.reasons.append(R(ReasonCode.envelope_inferred, "envelope fields read from headers: "
                               + ", ".join(r.envelope_inferred), "info"))
        m = construct_all(ManifestMessage,
            id=r.id, path=r.path, sha256=r.sha256, size=r.size, format=r.format, queue_id=r.envelope.queue_id,
            queue_name=r.envelope.queue_name, envelope=r.envelope, subject=r.subject, from_header=r.from_header,
            message_id=r.message_id, campaign=camp, verdict=d.verdict, confidence=round(d.confidence, 3),
            reasons=d.reasons, defects=r.defects, envelope_inferred=r.envelope_inferred,
            attachments=r.attachments, review_group=None)
        out.messages.append(m)
        out.counts[d.verdict.value] += 1
        out.size += r.size
        if d.verdict is Verdict.review:
            out.review.append((at, m, r.bounced_original_sender if r.bounce else None))
        if camp:
            _campaign_part(out.campaigns.setdefault(camp, CampaignPart()), at, r, d.verdict)
        if c.account and d.verdict is Verdict.spam:
            out.account_spam[c.account] += 1
        if c.client_ip and not c.trusted:
            s = out.sources.setdefault(c.client_ip, [0, 0, set()])
            s[0] += 1
            s[1] += d.verdict is Verdict.spam
            if c.account:
                s[2].add(c.account)
        # what pipeline.sitepolicy.origin_warnings counts
        if not records_client(r) and r.received:
            out.needs += 1
            if r.our_hop is None:
                out.missed += 1
                if r.received[0].by:
                    out.hop_names.add(r.received[0].by, (at, 0))
        out.unnamed += c.signed_in
    return out


def _campaign_part(p: CampaignPart, at: int, r: ParsedRecord, verdict: Verdict) -> None:
    # the verdicts step calls this in ascending position (`at`): each tally's first position is its first add
    e = r.envelope
    p.size += 1
    here = (at, 0)
    p.senders.add_next(addr_domain(e.mail_from) or "<>", here)
    rcpts = p.rcpt_domains
    for j, a in enumerate(e.rcpt_to or e.done_rcpt_to):
        rcpts.add_next(addr_domain(a), (at, j))
    p.ips.add_next(e.client_address or "", here)
    p.accounts.add_next(e.sasl_username or "", here)
    p.verdicts.add_next(verdict.value, here)
    if (t := e.arrival_time or r.date) is not None:
        p.times.add(t, at)
    # each shard keeps its first members; the merge keeps the incident's first
    if len(p.subjects) < SUBJECT_SAMPLE:
        p.subjects.append((at, r.subject))
    if len(p.sample) < LABEL_SAMPLE:
        p.sample.append((at, r.subject, r.text))


# ---- summary (reduce) -----------------------------------------------------------------------------------

def merge_verdicts(parts: Iterable[Verdicts]) -> Verdicts:
    """The shards' report partials merged (their messages left out)."""
    out = Verdicts(np.zeros(0, dtype=np.int64), [], [])
    for v in parts:
        out.counts.update(v.counts)
        out.size += v.size
        for c, p in v.campaigns.items():
            out.campaigns.setdefault(c, CampaignPart()).merge(p)
        out.account_spam.update(v.account_spam)
        for ip, (a, b, accts) in v.sources.items():
            s = out.sources.setdefault(ip, [0, 0, set()])
            s[0] += a
            s[1] += b
            s[2] |= accts
        out.needs += v.needs
        out.unnamed += v.unnamed
        out.missed += v.missed
        out.hop_names.merge(v.hop_names)
    return out


def _warnings(v: Verdicts, n: int, policy: SitePolicy) -> list[str]:
    """pipeline.sitepolicy.origin_warnings, from the merged counts."""
    out: list[str] = []
    if v.missed and v.missed >= max(3, 0.2 * v.needs):
        common = ", ".join(f"{k} ({c:,})" for k, c in v.hop_names.counter().most_common(3)) or "none"
        ours = ", ".join(policy.server_names + policy.server_ips) or "none"
        out.append(f"the policy's server names and addresses ({ours}) match no Received hop in {v.missed:,} of "
                   f"{v.needs:,} messages whose queue stores no client address ({v.missed / v.needs:.0%}): "
                   f"their origin is unknown, so they are held for review, not replayed. Commonest topmost 'by' "
                   f"names: {common}. If one is this server, add it to server_names "
                   "(`spoolsweep policy suggest SNAPSHOT` shows the evidence)")
    if n and not policy.local_domains:
        out.append("no local_domains: every recipient counts as external, so mail for our own users cannot be told "
                   "from relayed mail; give --policy or snapshot with the agent so the MTA's own domains are recorded")
    if v.unnamed:
        out.append(unnamed_login_warning(v.unnamed))
    return out


Words = tuple[str, str, str]  # a campaign's label, typical subject and shared phrase


def campaign_words(subjects: Sequence[str], texts: Sequence[str]) -> Words:
    """A campaign's words, from its first members' subjects and texts (`CampaignPart.sample`)."""
    subject, phrase = describe_campaign(subjects, texts)
    return " ".join(top_terms(texts)), subject, phrase


def words_of_samples(samples: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[Words]:
    return [campaign_words(subs, texts) for subs, texts in samples]


def _campaign(cid: int, p: CampaignPart, d: Decision, words: Words | None = None) -> Campaign:
    first, last = p.times.bounds()
    subjects = list(dict.fromkeys(s for _, s in p.subjects if s))[:5]
    counts = Counter({Verdict(v): c for v, c in p.verdicts.counter().items()})
    verdict = members_verdict(d, counts)
    if words is None:
        words = campaign_words([s for _, s, _ in p.sample], [x for _, _, x in p.sample])
    label, subject, phrase = words
    return Campaign(
        id=cid, size=p.size, label=label, subject=subject, phrase=phrase,
        sample_subjects=[s[:200] for s in subjects],
        sender_domains=p.senders.spread(), recipient_domains=p.rcpt_domains.spread(), client_ips=p.ips.spread(),
        accounts=p.accounts.spread(),
        first_seen=first, last_seen=last, verdict=verdict, confidence=round(d.confidence, 3), reasons=d.reasons)


def members_verdict(d: Decision, counts: Counter[Verdict]) -> Verdict:
    """The verdict a campaign's report shows, its reasons noted in `d`: the campaign rules' unless its members'
    verdicts say otherwise. Members of several verdicts are named beside it. Members all of one other verdict
    (rules that come before the campaign's decided each, or the campaign rules held it and each member was
    decided by its own) make that the campaign's: a report of a campaign `review` whose every message is
    `valid` sends the admin to review what nothing holds."""
    if not counts or (len(counts) == 1 and d.verdict in counts):
        return d.verdict
    note = R(ReasonCode.mixed, "members' verdicts: " + ", ".join(f"{v.value} {n}" for v, n in counts.most_common()),
             "info")
    if len(counts) > 1:
        d.reasons.append(note)
        return d.verdict
    d.reasons.insert(0, note)
    return next(iter(counts))


def _account_reports(dec: Decisions, spam: Counter[str]) -> list[AccountReport]:
    out = []
    for p in sorted(dec.profiles.values(), key=lambda p: (-p.messages, p.account)):
        shown = neutral(p.account)
        ext = dec.external.get(p.account, 0)
        summary = (f"account {shown}: {p.messages:,} messages to {ext:,} external recipients "
                   f"from {len(p.ips):,} client IPs")
        if p.compromised:
            summary += " — looks stolen: lock it and reset its password"
        out.append(AccountReport(account=shown, messages=p.messages, external_recipients=ext,
                                 client_ips=len(p.ips), top_client_ips=p.ips.most_common(10),
                                 campaigns=sorted(p.campaigns), spam=spam[p.account], compromised=p.compromised,
                                 summary=summary))
    return out


def _source_reports(sources: dict[str, list[Any]]) -> list[SourceReport]:
    ranked = sorted(sources, key=lambda ip: (-sources[ip][1], -sources[ip][0], ip))[:200]
    return [SourceReport(client_ip=ip, messages=sources[ip][0], spam=sources[ip][1], accounts=sorted(sources[ip][2]))
            for ip in ranked if sources[ip][1]]


def merged_messages(parts: Sequence[Verdicts]) -> Iterator[tuple[int, ManifestMessage]]:
    """Every message in global order: a k-way merge of the shards' sorted streams."""
    return heapq.merge(*(zip(map(int, v.pos), v.iter_messages(), strict=True) for v in parts), key=lambda pm: pm[0])


@dataclass(slots=True)
class Summary:
    """The manifest without its messages, and each review message's group (by position)."""

    manifest: Manifest
    review_group: dict[int, int]


def summarize(parts: Sequence[Verdicts], dec: Decisions, plan: Plan, incident: str, snapshot: SnapshotInfo,
              archive_defects: Sequence[str] = (), words: Sequence[Words] | None = None) -> Summary:
    """The reduce step `summary`: campaigns, accounts, sources, totals, review groups and warnings.
    `words`: campaign id c's words at c - 1 when already worked out (`campaign_words` of its sample),
    else they are worked out from the merged samples."""
    v = merge_verdicts(parts)
    policy = plan.policy
    # the review messages only, in global order: what the review groups are made of
    review = list(heapq.merge(*(p.review for p in parts), key=lambda r: r[0]))
    sources = _source_reports(v.sources)
    review_groups = group_review([m for _, m, _ in review], quoted=[q for _, _, q in review],
                                 spam_ips={s.client_ip for s in sources})
    groups = {at: m.review_group for at, m, _ in review if m.review_group is not None}
    campaigns = [_campaign(c, v.campaigns[c], dec.campaigns[c], words[c - 1] if words is not None else None)
                 for c in range(1, len(plan.campaign_labels) + 1)]
    manifest = Manifest(
        incident=incident, snapshot=snapshot, policy_sha256=policy.digest(),
        policy=plan.info or describe(policy), warnings=[*_warnings(v, plan.n, policy), *trusted_run_warning(campaigns)],
        totals=Totals(messages=plan.n, valid=v.counts[Verdict.valid.value], spam=v.counts[Verdict.spam.value],
                      review=v.counts[Verdict.review.value], bytes=v.size, campaigns=len(campaigns)),
        campaigns=campaigns,
        accounts=_account_reports(dec, v.account_spam),
        sources=sources,
        messages=[],
        review_groups=review_groups,
        archive_defects=list(archive_defects),
    )
    return Summary(manifest, groups)


def tables_of(parts: Sequence[Verdicts], summary: Summary, span: int = 8 * ROWS_BATCH) -> Iterator[pa.Table]:
    """The manifest parts' rows in global order (what `messages_of` gives, as pipeline.manifest_io.part_row rows;
    only a review message given a group is parsed again, to carry it), as Arrow tables of `span` rows: no Python
    object per row (merged row by row, the summary step's merge took a third of its time). Each shard's rows are
    in the order of their positions, so the merged order is a stable sort of all positions, and the rows of one
    span are a run of each shard's next rows, put in order by one `take`."""
    import pyarrow as pa

    pos = np.concatenate([np.asarray(v.pos, dtype=np.int64) for v in parts]) if parts else np.empty(0, np.int64)
    order = np.argsort(pos, kind="stable")  # ties in shard order, as heapq.merge gives them
    shard_at = np.repeat(np.arange(len(parts)), [len(v.pos) for v in parts])[order]
    at = pos[order]
    # the rows of review messages given a group, found once (not again a span)
    regroup = np.isin(at, np.fromiter(summary.review_group, dtype=np.int64, count=len(summary.review_group)))
    streams = [_RowStream(v) for v in parts]
    for lo in range(0, len(order), span):
        hi = min(len(order), lo + span)
        here = shard_at[lo:hi]
        counts = np.bincount(here, minlength=len(parts))
        pieces = [streams[i].take(int(c)) for i, c in enumerate(counts) if c]
        table = pa.concat_tables(pieces)
        if len(pieces) > 1 and np.any(here[1:] < here[:-1]):  # shards interleaved here: put the rows in order
            # the pieces hold each shard's rows in turn; row k of them is the span's row by_shard[k]
            by_shard = np.argsort(here, kind="stable")
            take = np.empty_like(by_shard)
            take[by_shard] = np.arange(len(by_shard))
            table = table.take(pa.array(take))
        # a review message given a group: its row again, with the group
        patched: list[tuple[int, tuple[Any, ...]]] = []
        for i in np.flatnonzero(regroup[lo:hi]).tolist():
            group = summary.review_group[int(at[lo + i])]
            if table.column("review_group")[i].as_py() != group:
                m = ManifestMessage.model_validate_json(table.column("message")[i].as_py())
                m.review_group = group
                patched.append((i, part_row(m)))
        if patched:  # one take of the span and the new rows, the new ones where theirs were
            pick = np.arange(len(table))
            pick[[i for i, _ in patched]] = np.arange(len(table), len(table) + len(patched))
            table = pa.concat_tables([table, rows_table([row for _, row in patched])]).take(pa.array(pick))
        yield table
    for sh in streams:
        sh.done()


class _RowStream:
    """One shard's part rows as tables, a batch at a time, taken from the front."""

    def __init__(self, v: Verdicts) -> None:
        self.batches = _row_tables(v)
        self.held: list[pa.Table] = []
        self.count = 0  # rows held

    def take(self, k: int) -> pa.Table:
        """The shard's next k rows."""
        import pyarrow as pa

        while self.count < k:
            t = next(self.batches, None)
            if t is None:
                raise ValueError("a shard's verdicts hold fewer messages than positions")
            self.held.append(t)
            self.count += len(t)
        rows = pa.concat_tables(self.held)
        rest = rows.slice(k)
        self.held, self.count = ([rest] if len(rest) else []), self.count - k
        return rows.slice(0, k)

    def done(self) -> None:
        """Every row was taken (as many messages as positions)."""
        if self.count or any(len(t) for t in self.batches):
            raise ValueError("a shard's verdicts hold more messages than positions")


def _row_tables(v: Verdicts) -> Iterator[pa.Table]:
    """A shard's part rows (`Verdicts.iter_rows`) as tables: its stored batches as they are, else ROWS_BATCH rows
    a table."""
    import pyarrow as pa

    if v.messages or not v._rows_in_blob():
        rows = v.iter_rows()
        while chunk := list(islice(rows, ROWS_BATCH)):
            yield rows_table(chunk)
        return
    for batch in pa.ipc.open_stream(pa.py_buffer(v.blob)):
        yield pa.Table.from_batches([batch])


def messages_of(parts: Sequence[Verdicts], summary: Summary) -> Iterator[ManifestMessage]:
    """The manifest's messages in global order, each review message with its group."""
    for at, m in merged_messages(parts):
        g = summary.review_group.get(at)
        if g is not None and m.review_group != g:
            m.review_group = g
        yield m


# ---- one process, N shards ------------------------------------------------------------------------------

def run_in_memory(shards: Mapping[str, Sequence[ParsedRecord]], plan: Plan, incident: str, snapshot: SnapshotInfo,
                  archive_defects: Sequence[str] = (), progress: Progress = _noop,
                  through_bytes: bool = False, settled: bool = False,
                  ready: Mapping[str, tuple[Resolved, Facts]] | None = None,
                  words: Callable[[], Sequence[Words]] | None = None) -> Manifest:
    """The five steps over in-memory shards, in order; `through_bytes`: every partial goes to bytes and
    back between steps, as between functions; `settled`: the records' origins are settled already
    (`resolved_rows`); `ready`: a shard's rows and facts already worked out (`rows_and_facts`); `words`:
    gives the campaigns' words (`summarize`) once the verdicts are in, when worked out elsewhere."""
    def hop(x: Any) -> Any:
        return type(x).from_bytes(x.to_bytes()) if through_bytes else x

    n = plan.n
    progress("campaigns", 0, n)
    ready = ready or {}
    rows = {name: ready[name][0] if name in ready else resolved_rows(recs, plan, name, settled)
            for name, recs in shards.items()}
    fs = [hop(ready[name][1] if name in ready else facts(recs, plan, name, rows[name]))
          for name, recs in shards.items()]
    dec = hop(decide_campaigns(fs, plan))
    del fs
    progress("campaigns", n, n)
    vs = [hop(verdicts(recs, plan, name, dec, rows.pop(name))) for name, recs in shards.items()]
    progress("verdicts", n, n)
    s = summarize(vs, dec, plan, incident, snapshot, archive_defects, words() if words is not None else None)
    s.manifest.messages = list(messages_of(vs, s))
    return s.manifest


def decide_in_shards(records: list[ParsedRecord], policy: SitePolicy, incident: str, snapshot: SnapshotInfo,
                     archive_defects: Sequence[str] = (), shards: int = 1, policy_info: PolicyInfo | None = None,
                     shuffle: random.Random | None = None, through_bytes: bool = True,
                     labels: np.ndarray | None = None) -> Manifest:
    """`decide` over the records (in global order, ids given) cut into `shards` parts, each part's records
    in any order (`shuffle`): the manifest must not depend on the cut."""
    n = len(records)
    idx = list(range(n))
    if shuffle is not None:
        shuffle.shuffle(idx)
    cut = [np.asarray(idx[k * n // shards:(k + 1) * n // shards], dtype=np.int64) for k in range(shards)]
    plan = plan_records(records, policy, policy_info, [(f"s{k}", pos) for k, pos in enumerate(cut)], labels)
    parts = {f"s{k}": [records[i] for i in pos.tolist()] for k, pos in enumerate(cut)}
    return run_in_memory(parts, plan, incident, snapshot, archive_defects, through_bytes=through_bytes)
