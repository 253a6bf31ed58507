"""Test oracle: `pipeline.triage.decide` and its helpers as they were before the staged steps, verbatim."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence

from pipeline.campaign_labels import describe as describe_campaign
from pipeline.campaigns import attach_quoted, client_codes, client_evidence, features_of, top_terms
from pipeline.clusterer import CampaignClusterer
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
)
from pipeline.parse import addr_domain
from pipeline.policy import SitePolicy
from pipeline.review_groups import group_review
from pipeline.sitepolicy import describe, origin_warnings, trusted_run_warning
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
LABEL_SAMPLE = 100  # members whose words make a campaign's label


def _noop(stage: str, done: int, total: int | None) -> None:
    pass


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
        [features_of(r) for r in records])
    labels = clusterer.labels_
    if records:  # bounces quoting too few words follow the client they quote
        clients, hops, quoted = zip(*map(client_evidence, records), strict=True)
        labels = attach_quoted(labels, *client_codes(clients, hops, quoted, policy))
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
    outbound_ips = _outbound_ips(ctxs, campaign_of, decisions)
    messages: list[ManifestMessage] = []
    for i, r in enumerate(records):
        camp = campaign_of.get(i)
        d = message_decision(i, records, ctxs, decisions.get(camp) if camp else None, i in hits, profiles,
                             abusive_ips, outbound_ips)
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
        policy=policy_info or describe(policy), warnings=[*warnings, *trusted_run_warning(campaigns)],
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


def _outbound_ips(ctxs: Sequence[Context], campaign_of: dict[int, int], decisions: dict[int, Decision]) -> set[str]:
    """Clients outside trusted networks with a copy of a spam campaign that is not only inbound to our users."""
    out: set[str] = set()
    for i, c in enumerate(ctxs):
        cid = campaign_of.get(i)
        if not c.client_ip or c.trusted or cid is None or decisions[cid].verdict is not Verdict.spam:
            continue
        if not (c.inbound and not c.external_rcpts):
            out.add(c.client_ip)
    return out


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
    if counts and (len(counts) > 1 or verdict not in counts):
        note = R(ReasonCode.mixed, "members' verdicts: " + ", ".join(f"{v.value} {n}" for v, n in
                                                                     counts.most_common()), "info")
        if len(counts) > 1:
            d.reasons.append(note)
        else:  # every member of one other verdict: the campaign's, as its messages are
            d.reasons.insert(0, note)
            [verdict] = counts
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
