"""Triage a snapshot: read, parse, group campaigns, decide, and assemble the manifest."""

from __future__ import annotations

import gc
import os
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from pipeline.archive import ArchiveReport
from pipeline.campaign_labels import describe as describe_campaign
from pipeline.campaigns import CampaignClusterer, Features, top_terms
from pipeline.models import (
    AccountReport,
    Campaign,
    Manifest,
    ManifestMessage,
    ParsedRecord,
    PolicyInfo,
    ReasonCode,
    SnapshotInfo,
    SourceReport,
    Spread,
    Totals,
    Verdict,
    construct_all,
    message_id,
)
from pipeline.parse import addr_domain, parse_found
from pipeline.policy import SitePolicy
from pipeline.readers import read_snapshot
from pipeline.readers.base import Found
from pipeline.review_groups import group_review
from pipeline.sitepolicy import describe, effective_policy, origin_warnings, site_of
from pipeline.text import neutral
from pipeline.verdicts import (
    AccountProfile,
    Context,
    Decision,
    R,
    campaign_decision,
    context,
    message_decision,
    resolve_origin,
    resolved,
    senders_seen_ours,
)

Progress = Callable[[str, int, int | None], None]
_PARALLEL_BYTES = 2 << 20  # a snapshot this big (a thousand messages or so) is parsed on every core
LABEL_SAMPLE = 100  # members whose words make a campaign's label
_CHUNK = 256


def _noop(stage: str, done: int, total: int | None) -> None:
    pass


def _parse_chunk(args: tuple[list[Found], SitePolicy]) -> list[ParsedRecord]:
    chunk, policy = args
    return [parse_found(f, policy) for f in chunk]


def _chunks(it: Iterable[Found], n: int) -> Iterator[list[Found]]:
    buf: list[Found] = []
    for f in it:
        buf.append(f)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


def parse_all(found: Iterable[Found], policy: SitePolicy, progress: Progress = _noop,
              workers: int | None = None, pool: ProcessPoolExecutor | None = None) -> list[ParsedRecord]:
    """Parse every message, on every core when the queue is big enough to pay for it.

    `pool`: worker processes started before the snapshot was opened (see `parse_pool`); without
    one, they are started once the first chunk shows the queue is big enough."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    out: list[ParsedRecord] = []
    chunks = _chunks(found, _CHUNK)
    if pool is not None:
        _parse_in(pool, chunks, policy, out, progress, workers)
        return out
    first = next(chunks, [])
    out.extend(_parse_chunk((first, policy)))
    progress("parse", len(out), None)
    if len(first) < _CHUNK:
        return out
    if workers <= 1:
        for ch in chunks:
            out.extend(_parse_chunk((ch, policy)))
            progress("parse", len(out), None)
        return out
    with ProcessPoolExecutor(max_workers=workers) as ex:
        _parse_in(ex, chunks, policy, out, progress, workers)
    return out


def _parse_in(ex: ProcessPoolExecutor, chunks: Iterator[list[Found]], policy: SitePolicy, out: list[ParsedRecord],
              progress: Progress, workers: int) -> None:
    # a bounded window of chunks in flight keeps memory flat however large the queue is
    window: deque[Future[list[ParsedRecord]]] = deque()
    for ch in chunks:
        window.append(ex.submit(_parse_chunk, (ch, policy)))
        if len(window) >= 4 * workers:
            out.extend(window.popleft().result())
            progress("parse", len(out), None)
    while window:
        out.extend(window.popleft().result())
        progress("parse", len(out), None)


def _ready() -> None:
    pass


@contextmanager
def parse_pool(source: str | Path, workers: int | None) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes for a big snapshot, started before it is opened: forked from a small parent,
    each stays small (forked later, each would map the snapshot's index and the first chunks too)."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    src = Path(source)
    try:
        big = src.is_file() and src.stat().st_size >= _PARALLEL_BYTES
    except OSError:
        big = False
    if workers <= 1 or not big:
        yield None
        return
    with ProcessPoolExecutor(max_workers=workers) as ex:
        for f in [ex.submit(_ready) for _ in range(workers)]:
            f.result()
        yield ex


DUPLICATE = "duplicate member name in archive"


def prepare(records: list[ParsedRecord]) -> None:
    """Put records in one order whatever order the archive stored them in (path, then digest), so the
    verdicts cannot depend on member order; flag every copy of a name stored more than once (the
    archive walk can only flag the later ones); give each a unique id."""
    records.sort(key=lambda r: (r.path, r.sha256))
    names = Counter(r.path for r in records)
    for r in records:
        if names[r.path] > 1:
            r.defects = [d for d in r.defects if d != DUPLICATE]
            r.defects.append(f"{DUPLICATE}: {names[r.path]} members are named {r.path!r}")
    assign_ids(records)


def assign_ids(records: Sequence[ParsedRecord]) -> None:
    """Give every record a unique id, even two identical members stored under one name."""
    seen: Counter[str] = Counter()
    for r in records:
        base = message_id(r.path, r.sha256)
        seen[base] += 1
        r.id = base if seen[base] == 1 else message_id(f"{r.path}#{seen[base]}", r.sha256)


def _spread(values: Iterable[str], k: int = 5) -> Spread:
    c = Counter(v for v in values if v)
    return Spread(distinct=len(c), top=c.most_common(k))


def decide(records: Sequence[ParsedRecord], policy: SitePolicy, incident: str, snapshot: SnapshotInfo,
           archive_defects: Sequence[str] = (), progress: Progress = _noop,
           policy_info: PolicyInfo | None = None, consume: bool = False) -> Manifest:
    """Group and decide: the pure heart of triage, records and policy in, manifest out.

    The records are left as they were, unless `consume`: then they are the caller's to give up, and
    what grouping alone needed (texts, sketches, Received chains) is dropped from them as soon as the
    campaigns are known, which bounds memory at a million messages."""
    n = len(records)
    if consume:
        for r in records:
            resolve_origin(r, policy)
    else:
        records = [resolved(r, policy) for r in records]
    warnings = origin_warnings(records, policy)
    th = policy.thresholds
    progress("campaigns", 0, n)
    clusterer = CampaignClusterer(threshold=th.campaign_similarity).fit(
        [Features(r.text, r.sketch, r.keys, r.shape) for r in records])
    labels = clusterer.labels_
    progress("campaigns", n, n)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        groups[int(lab)].append(i)
    # numbered by size, then by the clusterer's label, which follows the messages' content, not their order
    big = [g for _, _, g in sorted((-len(g), lab, g) for lab, g in groups.items() if len(g) >= th.campaign_min_size)]
    if consume:
        # Texts were only needed for grouping; a campaign's label needs a sample of its members' texts.
        keep = {i for g in big for i in g[:LABEL_SAMPLE]}
        for i, r in enumerate(records):
            if i not in keep:
                r.text = ""
            r.received = []
            r.sketch = []
    campaign_of: dict[int, int] = {}
    for cid, members in enumerate(big, 1):
        for i in members:
            campaign_of[i] = cid

    ctxs: list[Context] = [context(r, policy) for r in records]
    profiles = _profiles(ctxs, campaign_of)
    ours = senders_seen_ours(records, ctxs)

    decisions: dict[int, Decision] = {}
    for cid, members in enumerate(big, 1):
        decisions[cid] = campaign_decision(members, records, ctxs, policy, profiles, ours)
    _mark_compromised(big, decisions, records, ctxs, profiles)
    # a second pass, now that compromised accounts are known, lets their campaigns see it
    for cid, members in enumerate(big, 1):
        decisions[cid] = campaign_decision(members, records, ctxs, policy, profiles, ours)

    # a bounce is grouped by the message it quotes: one in a spam campaign's group quotes its spam,
    # even when that group is too small to be a campaign of its own
    spam_labels = {int(labels[big[cid - 1][0]]) for cid, d in decisions.items() if d.verdict is Verdict.spam}
    hits = {i for i, r in enumerate(records) if r.bounce and r.bounced_original_text and int(labels[i]) in spam_labels}

    abusive_ips = _abusive_ips(records, ctxs, campaign_of, decisions)
    messages: list[ManifestMessage] = []
    for i, r in enumerate(records):
        camp = campaign_of.get(i)
        d = message_decision(i, records, ctxs, decisions.get(camp) if camp else None, i in hits, profiles,
                             abusive_ips)
        if r.defects and d.verdict is not Verdict.review:
            d.reasons.append(R(ReasonCode.mime_defects, "MIME defects (not blocking): " + ", ".join(r.defects), "info"))
        if r.envelope_inferred:
            d.reasons.append(R(ReasonCode.envelope_inferred, "envelope fields read from headers: "
                               + ", ".join(r.envelope_inferred), "info"))
        # every value here comes from validated models: construct without validating them again
        messages.append(construct_all(ManifestMessage,
            id=r.id, path=r.path, sha256=r.sha256, size=r.size, format=r.format, queue_id=r.envelope.queue_id,
            queue_name=r.envelope.queue_name, envelope=r.envelope, subject=r.subject, from_header=r.from_header,
            message_id=r.message_id, campaign=camp, verdict=d.verdict, confidence=round(d.confidence, 3),
            reasons=d.reasons, defects=r.defects, envelope_inferred=r.envelope_inferred,
            attachments=r.attachments, review_group=None))
    progress("verdicts", n, n)

    campaigns = [_campaign(cid, members, records, decisions[cid], messages) for cid, members in enumerate(big, 1)]
    counts = Counter(m.verdict for m in messages)
    sources = _source_reports(records, ctxs, messages)
    review_groups = group_review(messages, quoted=[r.bounced_original_sender if r.bounce else None for r in records],
                          spam_ips={s.client_ip for s in sources})
    return Manifest(
        incident=incident, snapshot=snapshot, policy_sha256=policy.digest(),
        policy=policy_info or describe(policy), warnings=warnings,
        totals=Totals(messages=n, valid=counts[Verdict.valid], spam=counts[Verdict.spam],
                      review=counts[Verdict.review], bytes=sum(r.size for r in records), campaigns=len(campaigns)),
        campaigns=campaigns,
        accounts=_account_reports(profiles, records, ctxs, messages),
        sources=sources,
        messages=messages,
        review_groups=review_groups,
        archive_defects=list(archive_defects),
    )


def _abusive_ips(records: Sequence[ParsedRecord], ctxs: Sequence[Context], campaign_of: dict[int, int],
                 decisions: dict[int, Decision]) -> set[str]:
    """Clients that fed a spam campaign, or relayed under more than two sender domains (forging them)."""
    fed: set[str] = set()
    domains: dict[str, set[str]] = defaultdict(set)
    for i, c in enumerate(ctxs):
        if not c.client_ip or c.trusted:
            continue
        cid = campaign_of.get(i)
        if cid is not None and decisions[cid].verdict is Verdict.spam:
            fed.add(c.client_ip)
        if c.relayed:
            domains[c.client_ip].add(addr_domain(records[i].envelope.mail_from))
    return fed | {ip for ip, d in domains.items() if len(d) > 2}


def _profiles(ctxs: Sequence[Context], campaign_of: dict[int, int]) -> dict[str, AccountProfile]:
    profiles: dict[str, AccountProfile] = {}
    for i, c in enumerate(ctxs):
        if not c.account:
            continue
        p = profiles.setdefault(c.account, AccountProfile(c.account))
        p.messages += 1
        p.external.update(c.external_rcpts)
        if c.client_ip:
            p.ips[c.client_ip] += 1
            if i not in campaign_of:
                p.normal_ips.add(c.client_ip)
        if i in campaign_of:
            p.campaigns.add(campaign_of[i])
    return profiles


def _mark_compromised(big: Sequence[Sequence[int]], decisions: dict[int, Decision],
                      records: Sequence[ParsedRecord], ctxs: Sequence[Context],
                      profiles: dict[str, AccountProfile]) -> None:
    for cid, members in enumerate(big, 1):
        d = decisions[cid]
        if d.verdict is not Verdict.spam:
            continue
        for i in members:
            c = ctxs[i]
            if c.account and c.account in d.accounts and c.account in profiles:
                p = profiles[c.account]
                p.compromised = True
                if c.client_ip:
                    p.attacker_ips.add(c.client_ip)


def _campaign(cid: int, members: Sequence[int], records: Sequence[ParsedRecord], d: Decision,
              messages: Sequence[ManifestMessage]) -> Campaign:
    recs = [records[i] for i in members]
    # one pass over the members gathers every spread (a campaign can hold most of a million-message queue)
    senders: list[str] = []
    rcpt_domains: list[str] = []
    ips: list[str] = []
    accounts: list[str] = []
    times = []
    for r in recs:
        e = r.envelope
        senders.append(addr_domain(e.mail_from) or "<>")
        rcpt_domains.extend([addr_domain(a) for a in (e.rcpt_to or e.done_rcpt_to)])
        ips.append(e.client_address or "")
        accounts.append(e.sasl_username or "")
        if (t := e.arrival_time or r.date) is not None:
            times.append(t)
    try:
        first, last = (min(times), max(times)) if times else (None, None)
    except TypeError:  # naive and aware datetimes mixed
        first = last = None
    subjects = list(dict.fromkeys(r.subject for r in recs[:1000] if r.subject))[:5]
    counts = Counter([messages[i].verdict for i in members])
    verdict = d.verdict
    if counts and len(counts) > 1:
        d.reasons.append(R(ReasonCode.mixed, "members' verdicts: " + ", ".join(f"{v.value} {n}" for v, n in
                                                                     counts.most_common()), "info"))
    subject, phrase = describe_campaign([r.subject for r in recs[:LABEL_SAMPLE]], [r.text for r in recs[:LABEL_SAMPLE]])
    return Campaign(
        id=cid, size=len(members), label=" ".join(top_terms([r.text for r in recs[:LABEL_SAMPLE]])),
        subject=subject, phrase=phrase,
        sample_subjects=[s[:200] for s in subjects],
        sender_domains=_spread(senders), recipient_domains=_spread(rcpt_domains), client_ips=_spread(ips),
        accounts=_spread(accounts),
        first_seen=first, last_seen=last, verdict=verdict, confidence=round(d.confidence, 3), reasons=d.reasons)


def _account_reports(profiles: dict[str, AccountProfile], records: Sequence[ParsedRecord],
                     ctxs: Sequence[Context], messages: Sequence[ManifestMessage]) -> list[AccountReport]:
    spam: Counter[str] = Counter()
    for c, m in zip(ctxs, messages, strict=True):
        if c.account and m.verdict is Verdict.spam:
            spam[c.account] += 1
    out = []
    for p in sorted(profiles.values(), key=lambda p: (-p.messages, p.account)):
        # a login is whatever the client sent in AUTH: bidi marks in it would reorder the advice around it
        shown = neutral(p.account)
        summary = (f"account {shown}: {p.messages:,} messages to {len(p.external):,} external recipients "
                   f"from {len(p.ips):,} client IPs")
        if p.compromised:
            summary += " — looks stolen: lock it and reset its password"
        out.append(AccountReport(account=shown, messages=p.messages, external_recipients=len(p.external),
                                 client_ips=len(p.ips), top_client_ips=p.ips.most_common(10),
                                 campaigns=sorted(p.campaigns), spam=spam[p.account], compromised=p.compromised,
                                 summary=summary))
    return out


def _source_reports(records: Sequence[ParsedRecord], ctxs: Sequence[Context],
                    messages: Sequence[ManifestMessage]) -> list[SourceReport]:
    total: Counter[str] = Counter()
    spam: Counter[str] = Counter()
    accounts: dict[str, set[str]] = defaultdict(set)
    for c, m in zip(ctxs, messages, strict=True):
        if not c.client_ip or c.trusted:
            continue
        total[c.client_ip] += 1
        if m.verdict is Verdict.spam:
            spam[c.client_ip] += 1
        if c.account:
            accounts[c.client_ip].add(c.account)
    ranked = sorted(total, key=lambda ip: (-spam[ip], -total[ip], ip))[:200]
    return [SourceReport(client_ip=ip, messages=total[ip], spam=spam[ip], accounts=sorted(accounts[ip]))
            for ip in ranked if spam[ip]]


@contextmanager
def paused_gc() -> Iterator[None]:
    """Triage allocates millions of small acyclic objects; the cyclic collector would walk them all
    again and again for nothing (a fifth of the run). It is off meanwhile, and afterwards what
    triage made is frozen (gc.freeze): refcounting still frees it, but the collector no longer walks
    it, which would otherwise cost a second or two at the next allocations after a 100k triage."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.freeze()
            gc.enable()


def triage(source: str | Path, policy: SitePolicy, fmt: str | None = None, incident: str | None = None,
           progress: Progress = _noop, workers: int | None = None, policy_source: str | None = None) -> Manifest:
    """Read a snapshot and return its manifest. The policy used is `policy` where it sets a key, else the
    MTA configuration the snapshot recorded, else what the queue shows (pipeline.sitepolicy)."""
    with paused_gc():
        return _triage(source, policy, fmt, incident, progress, workers, policy_source)


def read_and_parse(source: str | Path, policy: SitePolicy, fmt: str | None = None, progress: Progress = _noop,
                   workers: int | None = None) -> tuple[str, list[ParsedRecord], ArchiveReport]:
    """Every message of a snapshot parsed, in one order (see `prepare`), with the walk's report."""
    report = ArchiveReport()
    with parse_pool(source, workers) as pool:
        name, found, report = read_snapshot(source, policy.limits, fmt=fmt, report=report)
        records = parse_all(found, policy, progress=progress, workers=workers, pool=pool)
    check_read(name, fmt, records, report)
    prepare(records)
    return name, records, report


def check_read(name: str, fmt: str | None, records: Sequence[ParsedRecord], report: ArchiveReport) -> None:
    """A format named with --format that finds no message among the members is the wrong format: an
    empty manifest would tell the admin the queue was empty."""
    if fmt is not None and not records and report.members:
        from pipeline.errors import WrongFormat

        raise WrongFormat(f"--format {fmt} found no message in {report.members:,} member(s) "
                            f"({len(report.skipped):,} skipped as not messages); leave --format out to detect it")


def _triage(source: str | Path, policy: SitePolicy, fmt: str | None, incident: str | None,
            progress: Progress, workers: int | None, policy_source: str | None) -> Manifest:
    name, records, report = read_and_parse(source, policy, fmt, progress, workers)
    used, pinfo = effective_policy(policy, policy_source, site_of(report.meta), records)
    info = SnapshotInfo(source=Path(source).name, format=name, sha256=report.sha256, members_read=report.members,
                        skipped=report.skipped, hosts=[str(report.meta["host"])] if report.meta.get("host") else [])
    return decide(records, used, incident or Path(source).name, info, report.defects, progress=progress,
                  policy_info=pinfo, consume=True)
