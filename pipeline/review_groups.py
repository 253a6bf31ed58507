"""Put every message held for review into one group an admin can decide at once, with a sentence and a suggestion.

A group is formed by the rule that held its messages (the reason code, read generically, so a new code
works unchanged) and the evidence they share: client address, sender domain, account, campaign, what a
bounce quotes, the defect. Groups are refined largest first while the budget allows (one group per 20
review messages plus 10), so the big runs get groups of their own and the stragglers of a rule stay
together in one group that says how spread they are: the bound holds by construction, whatever the input.
"""

from __future__ import annotations

import heapq
import ipaddress
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipeline.models import ManifestMessage, ReasonCode, ReviewGroup, Spread, Verdict, integrity_defects

# The evidence a group may share, in the words the console shows.
DIMENSIONS = {"network": "client network", "client": "client address", "sender_domain": "sender domain",
              "account": "account",
              "campaign": "campaign", "quoted": "bounced mail from", "defect": "defect",
              "recipient_domain": "recipient domain"}
# Which evidence splits a rule's messages, most telling first. A code not listed (a new rule) uses DEFAULT.
ORDER: dict[ReasonCode, tuple[str, ...]] = {
    ReasonCode.defect: ("defect", "client"),
    ReasonCode.no_recipients: ("network", "client", "sender_domain"),
    ReasonCode.bounce_external: ("quoted", "recipient_domain"),
    ReasonCode.relayed_single_source: ("network", "client", "sender_domain"),
    ReasonCode.relayed_unknown_source: ("network", "client", "sender_domain"),
    ReasonCode.forged_local_sender: ("network", "client", "sender_domain"),
    ReasonCode.mixed_recipients: ("network", "client", "sender_domain"),
    ReasonCode.compromised_account: ("account", "client"),
    ReasonCode.authenticated_bulk_unclear: ("account", "campaign"),
    ReasonCode.contradiction: ("account", "campaign", "client"),
    ReasonCode.inbound_in_spam_campaign: ("campaign", "network", "client"),
    ReasonCode.own_bounce_in_spam_campaign: ("campaign", "quoted"),
    ReasonCode.campaign_unclear: ("campaign", "client"),
    ReasonCode.origin_unknown: ("sender_domain", "campaign"),
    ReasonCode.mixed: (),  # MIXED: already the coarsest
}
DEFAULT = ("campaign", "client", "sender_domain")
# the rule of the one group that takes the smallest rules when there are more rules than budget
MIXED = ReasonCode.mixed
SAMPLES = 5
MIN_RUN = 20  # messages sharing evidence that always make a group of their own, budget allowing


def budget(review: int) -> int:
    """At most this many groups for `review` messages."""
    return review // 20 + 10


def held_by(m: ManifestMessage) -> ReasonCode:
    """The rule that held a message: its last review reason (the one that decided), else its first reason
    (a message without reasons, which triage never writes, is put with the messages of unknown origin)."""
    codes = [r.code for r in m.reasons if r.weight == "review"]
    if codes:
        return codes[-1]
    return m.reasons[0].code if m.reasons else ReasonCode.origin_unknown


def _domain(addr: str | None) -> str:
    if addr is None:
        return ""
    if addr == "":
        return "<>"
    return addr.rpartition("@")[2].lower().strip(">").rstrip(".")


def _network(ip: str | None) -> str:
    """A client's /24 (IPv4) or /48 (IPv6): an office's many workstations are one network, a botnet's are not."""
    if not ip:
        return ""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    return str(ipaddress.ip_network(f"{a}/{24 if a.version == 4 else 48}", strict=False))


def _defect_kind(m: ManifestMessage) -> str:
    integ = integrity_defects(m.defects) or m.defects
    if not integ:
        return ""
    # the kind of defect, not its offsets and bytes: "bad record length at offset 12: ..." -> "... offset #"
    return re.sub(r"\d+", "#", integ[0].split(":", 1)[0])[:80]


def evidence(m: ManifestMessage, quoted: str | None = None) -> dict[str, str]:
    """What one message offers to group by ("" where it has nothing to say)."""
    e = m.envelope
    rcpts = e.rcpt_to or e.done_rcpt_to
    return {"client": e.client_address or "", "network": _network(e.client_address),
            "sender_domain": _domain(e.mail_from),
            "account": e.sasl_username or "", "campaign": "" if m.campaign is None else str(m.campaign),
            "quoted": (f"campaign #{m.campaign}" if m.campaign is not None else _domain(quoted) if quoted else ""),
            "defect": _defect_kind(m), "recipient_domain": _domain(rcpts[0]) if rcpts else ""}


@dataclass
class _Node:
    rule: ReasonCode
    key: list[tuple[str, str]]
    members: list[int]
    level: int = 0  # the first of the rule's dimensions not yet tried
    # once offered: the dimension tried and the members not yet split off, by their value of it
    dim: str = ""
    parts: dict[str, list[int]] | None = None
    remaining: int = 0

    def rest(self) -> list[int]:
        return self.members if self.parts is None else sorted(i for ms in self.parts.values() for i in ms)


def group_review(messages: Sequence[ManifestMessage], quoted: Sequence[str | None] | None = None,
                 spam_ips: Iterable[str] = ()) -> list[ReviewGroup]:
    """The review groups of a manifest's messages; sets each review message's `review_group`.

    quoted: per message, the sender of the mail a bounce quotes (None otherwise). spam_ips: client
    addresses that fed mail the engine calls spam (a lean towards spam for groups that share them)."""
    idx = [i for i, m in enumerate(messages) if m.verdict is Verdict.review]
    for m in messages:
        if m.review_group is not None:  # (pydantic's attribute assignment is slow: a million writes would show)
            m.review_group = None
    if not idx:
        return []
    cap = budget(len(idx))
    ev = {i: evidence(messages[i], quoted[i] if quoted is not None else None) for i in idx}
    by_rule: dict[ReasonCode, list[int]] = defaultdict(list)
    for i in idx:
        by_rule[held_by(messages[i])].append(i)
    rules = sorted(by_rule.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    if len(rules) > cap:  # more rules than budget (a tiny incident with many odd messages): the smallest share one
        rules = [*rules[:cap - 1], (MIXED, sorted(i for _, ms in rules[cap - 1:] for i in ms))]
    nodes = [_Node(rule, [], ms) for rule, ms in rules]
    heap: list[tuple[int, int, str, int, str]] = []  # (-size, node, dimension, order, value)

    def offer(n: int) -> None:
        """Offer a node's parts along its next dimension that has a part worth a group (or that all members
        share); a dimension where every part is tiny is skipped (378 campaigns of two messages each say less
        than the 15 accounts that sent them)."""
        node = nodes[n]
        node.parts = None
        dims = ORDER.get(node.rule, DEFAULT)
        while node.level < len(dims):
            dim = dims[node.level]
            parts: dict[str, list[int]] = defaultdict(list)
            for i in node.members:
                parts[ev[i][dim]].append(i)
            if len(parts) == 1 or any(_worth(len(ms), len(node.members)) for ms in parts.values()):
                break
            node.level += 1
        else:
            return
        node.dim, node.parts, node.remaining = dim, parts, len(node.members)
        for order, (value, ms) in enumerate(sorted(parts.items(), key=lambda kv: (-len(kv[1]), kv[0]))):
            if len(ms) >= 2 or len(parts) == 1:
                heapq.heappush(heap, (-len(ms), n, dim, order, value))

    for n in range(len(nodes)):
        offer(n)
    while heap:
        neg, n, dim, _, value = heapq.heappop(heap)
        parent = nodes[n]
        if parent.parts is None or parent.dim != dim:
            continue  # a stale offer: its parent was refined since
        picked = parent.parts.get(value)
        if picked is None or len(picked) != -neg:
            continue
        if len(picked) == parent.remaining:  # all that is left shares this value: refine the group in place
            parent.members = picked
            parent.key.append((dim, value))
            parent.level += 1
            offer(n)
        elif len(nodes) < cap and _worth(len(picked), parent.remaining):
            del parent.parts[value]
            parent.remaining -= len(picked)
            nodes.append(_Node(parent.rule, [*parent.key, (dim, value)], picked, parent.level + 1))
            offer(len(nodes) - 1)
    finals = [(node.rule, node.key, node.rest()) for node in nodes]
    finals = [f for f in finals if f[2]]
    finals.sort(key=lambda f: (-len(f[2]), f[0], f[1]))
    bad_ips = set(spam_ips)
    out = []
    for gid, (rule, key, members) in enumerate(finals, 1):
        for i in members:
            messages[i].review_group = gid
        out.append(_describe(gid, rule, dict(key), [messages[i] for i in members], [ev[i] for i in members], bad_ips))
    # two groups must never read alike: name what sets each apart (its shared evidence, or that it is the rest)
    seen = Counter(g.summary for g in out)
    for g in out:
        if seen[g.summary] > 1:
            g.summary += " (" + ("; ".join(f"{k} {v}" for k, v in g.shared.items()) or "the rest") + f", group #{g.id})"
    return out


def _worth(part: int, whole: int) -> bool:
    """Whether `part` of a group's `whole` messages should be a group of its own: a run big enough to decide on
    its own, or a good share of the group. Splitting 400 messages from one client into 150 pairs by sender
    domain would only multiply the clicks."""
    return part >= 2 and (part >= MIN_RUN or part * 4 >= whole)


def _spread(values: Iterable[str], k: int = 5) -> Spread:
    c = Counter(v for v in values if v)
    return Spread(distinct=len(c), top=c.most_common(k))


def _one(s: Spread) -> str | None:
    return s.top[0][0] if s.distinct == 1 else None


def _from(s: Spread, unknown: int, net: str | None = None) -> str:
    if s.distinct == 0:
        return "from no known client"
    if s.distinct == 1:
        return f"from {s.top[0][0]}" + (" (and from no known client)" if unknown else "")
    if net:
        return f"from {s.distinct:,} client addresses in {net}"
    if s.top[0][1] == 1:
        return f"from {s.distinct:,} client addresses (one message each)"
    return f"from {s.distinct:,} client addresses (most from {s.top[0][0]}: {s.top[0][1]:,})"


def _under(s: Spread) -> str:
    if s.distinct == 1:
        d = s.top[0][0]
        return "with the null sender <>" if d == "<>" else f"under sender domain {d}"
    return f"under {s.distinct:,} sender domains" if s.distinct else "with no sender known"


def _describe(gid: int, rule: ReasonCode, key: dict[str, str], ms: list[ManifestMessage], evs: list[dict[str, str]],
              spam_ips: set[str]) -> ReviewGroup:
    n = len(ms)
    clients = _spread(e["client"] for e in evs)
    nets = _spread(e["network"] for e in evs)
    net = _one(nets) if not any(not e["network"] for e in evs) else None
    no_client = sum(1 for e in evs if not e["client"])
    senders = _spread(e["sender_domain"] for e in evs)
    accounts = _spread(e["account"] for e in evs)
    # each message's domains once, in the order it lists them (a set's order changes with the hash seed)
    rdomains = _spread(d for m in ms
                       for d in dict.fromkeys(_domain(a) for a in (m.envelope.rcpt_to or m.envelope.done_rcpt_to)))
    camps = Counter(m.campaign for m in ms if m.campaign is not None)
    defects = _spread(e["defect"] for e in evs)
    quoted = _spread(e["quoted"] for e in evs)
    msgs = f"{n:,} message" + ("s" if n != 1 else "")
    ip, acct, camp = _one(clients), _one(accounts), (next(iter(camps)) if len(camps) == 1 else None)
    camp_s = f"campaign #{camp}" if camp is not None else f"{len(camps):,} campaigns" if camps else "no campaign"
    if rule in (ReasonCode.relayed_single_source, ReasonCode.relayed_unknown_source):
        text = f"{msgs} relayed {_from(clients, no_client, net)} {_under(senders)}"
        if ip:
            text += " — your own web shop or CRM if that address is yours"
    elif rule == ReasonCode.forged_local_sender:
        ours = f"under our sender domain {senders.top[0][0]}" if senders.distinct == 1 else (
            f"under {senders.distinct:,} of our sender domains")
        text = (f"{msgs} {ours}, sent {_from(clients, no_client, net)} with no account recorded — "
                "forged, your users' own mail if the queue does not record their SMTP AUTH account, or a network "
                "of yours missing from trusted_networks")
    elif rule == ReasonCode.mixed_recipients:
        text = f"{msgs} to local and external recipients at once, unauthenticated, {_from(clients, no_client, net)}"
    elif rule == ReasonCode.bounce_external:
        q = _one(quoted)
        text = (f"{msgs}: our bounces to external addresses" + (f" quoting mail of {q}" if q else
                f" quoting {quoted.distinct:,} different runs of mail" if quoted.distinct else "")
                + " — backscatter if what they quote was spam")
    elif rule == ReasonCode.defect:
        d = _one(defects)
        text = f"{msgs} whose bytes are in doubt" + (f" ({d})" if d else f" ({defects.distinct:,} kinds of defect)")
    elif rule == ReasonCode.no_recipients:
        text = f"{msgs} with no recipient known, {_from(clients, no_client, net)}"
    elif rule == ReasonCode.compromised_account:
        text = (f"{msgs} through the stolen account {acct or 'of several accounts'} {_from(clients, no_client, net)}, "
                "not from the attacker's addresses — its real owner, or the attacker from elsewhere")
    elif rule == ReasonCode.authenticated_bulk_unclear:
        text = (f"{msgs} of bulk mail through account {acct or '(several)'} {_from(clients, no_client, net)} — "
                "a newsletter or a stolen password")
    elif rule == ReasonCode.contradiction:
        who = (f"through account {acct}, not seen abused" if acct else
               f"through {accounts.distinct:,} accounts not seen abused" if accounts.distinct else
               "by a local sender submitting locally")
        spam_camps = f"spam campaign #{camp}" if camp is not None else f"{len(camps):,} spam campaigns"
        text = f"{msgs} in {spam_camps} but sent {who}, {_from(clients, no_client, net)}"
    elif rule == ReasonCode.inbound_in_spam_campaign:
        text = (f"{msgs} of spam {camp_s} that only came in, for our users, {_from(clients, no_client, net)}, "
                "which sent none of its copies out — a mailing your users receive that the run imitates, or "
                "the run's own copies to them")
    elif rule == ReasonCode.own_bounce_in_spam_campaign:
        text = (f"{msgs} of bounces to our users in spam {camp_s}, quoting mail our own side sent — their own "
                "mail that the run looks like, or spam sent through their account or network")
    elif rule == ReasonCode.campaign_unclear:
        text = f"{msgs} of {camp_s} with no clear origin, {_from(clients, no_client, net)}"
    elif rule == ReasonCode.origin_unknown:
        text = f"{msgs} whose queue does not say where they came from, {_under(senders)}"
    elif rule == MIXED:
        rules = Counter(held_by(m) for m in ms)
        text = f"{msgs} held for {len(rules)} different reasons (" + ", ".join(
            f"{r} {c}" for r, c in rules.most_common(4)) + ")"
    else:  # a rule this module does not know yet: its own words, and the evidence
        first = next((r.text for r in reversed(ms[0].reasons) if r.code == rule), rule)
        text = f"{msgs} held as {rule} ({first[:160]}), {_from(clients, no_client, net)} {_under(senders)}"
    verdict, why = _suggest(rule, ms, clients, accounts, spam_ips, ip)
    times = [m.envelope.arrival_time for m in ms if m.envelope.arrival_time is not None]
    try:
        first_seen, last_seen = (min(times), max(times)) if times else (None, None)
    except TypeError:  # naive and aware datetimes mixed
        first_seen = last_seen = None
    subjects = list(dict.fromkeys(m.subject[:200] for m in ms[:200] if m.subject))[:SAMPLES]
    return ReviewGroup(
        id=gid, rule=rule, shared={DIMENSIONS[k]: v or "none" for k, v in key.items()}, summary=text, messages=n,
        campaigns=[c for c, _ in camps.most_common(20)], client_ips=clients, sender_domains=senders,
        recipient_domains=rdomains, accounts=accounts, sample_ids=[m.id for m in ms[:SAMPLES]],
        sample_subjects=subjects, first_seen=first_seen, last_seen=last_seen, suggested=verdict,
        suggested_reason=why)


def _suggest(rule: ReasonCode, ms: list[ManifestMessage], clients: Spread, accounts: Spread, spam_ips: set[str],
             ip: str | None) -> tuple[Verdict, str]:
    """The engine's lean for a group. Never `valid` without positive evidence: when in doubt, keep held."""
    ips = {m.envelope.client_address for m in ms}
    if ips and None not in ips and "" not in ips and ips <= spam_ips and rule != ReasonCode.defect:
        return Verdict.spam, ("every client address here also fed mail the engine calls spam"
                              + (f" ({ip})" if ip else f" ({len(ips):,} addresses)"))
    if rule == ReasonCode.defect:
        return Verdict.review, "keep held: the bytes are in doubt; open a sample and release only what you recognise"
    if rule in (ReasonCode.relayed_single_source, ReasonCode.relayed_unknown_source) and ip:
        return Verdict.review, (f"valid if {ip} is yours (then add it to trusted_networks), spam if it is not; "
                                "open one sample to see whose mail it is")
    if rule == ReasonCode.compromised_account:
        acct = _one(accounts) or "the account"
        return Verdict.review, f"ask the owner of {acct} whether they sent these"
    if rule == ReasonCode.inbound_in_spam_campaign:
        return Verdict.review, ("open one: valid if it is mail your users receive from that sender (its links go "
                                "to the sender's own site), spam if it is the run's")
    if rule == ReasonCode.bounce_external:
        return Verdict.review, "open one: spam if the bounced mail was spam (backscatter), valid if it was your users'"
    return Verdict.review, "no evidence either way: open a sample, then decide the group"
