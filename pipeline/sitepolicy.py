"""The site policy triage uses: the admin's file, else the MTA's own configuration, else what the queue shows.

An admin at 2 a.m. should not have to write TOML to be safe. `spoolsweep agent snapshot` records the
MTA's own view in the snapshot (`site` in spoolsweep-snapshot.json: Postfix's postconf values, Exim's
-bP values, or the --policy values given for a pickup folder); this module turns that into policy
values, fills what is still missing from the queue itself where the evidence is strong, and says
for every value where it came from. Per key, an explicit --policy value wins.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.models import Campaign, ParsedRecord, PolicyInfo, ReasonCode, Verdict
from pipeline.origin import signed_in_unnamed
from pipeline.policy import SitePolicy, is_public_suffix, policy_from_dict

KEYS = ("local_domains", "server_names", "server_ips", "trusted_networks", "relay_domains")

# A network wider than this that is not private is how a relay gets opened (mynetworks = 0.0.0.0/0):
# the MTA trusting it is the fault under investigation, not evidence that its clients are ours.
_WIDEST_PUBLIC = {4: 24, 6: 48}
_NOT_DOMAINS = {"localhost", "localhost.localdomain", "localdomain"}
# The top hop's `by` name must be this share of the messages that have Received lines to count as ours.
SERVER_NAME_SHARE = 0.6
SERVER_NAME_MIN = 3
LOCAL_DOMAIN_MIN_ACCOUNTS = 2


@dataclass
class Derived:
    """Policy values with, per value, the evidence for it; `notes` name what was left out and why."""

    values: dict[str, list[str]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    evidence: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, key: str, value: str, why: str) -> None:
        vals = self.values.setdefault(key, [])
        if value not in vals:
            vals.append(value)
            self.evidence.setdefault(key, {})[value] = why


def _words(value: str) -> list[str]:
    """Postfix lists: whitespace and/or commas."""
    return [w for w in re.split(r"[\s,]+", value.strip()) if w]


def _exim_list(value: str) -> list[str]:
    """Exim lists: ':'-separated, '::' an escaped colon (IPv6), or '<; ' to change the separator."""
    value = value.strip()
    sep = ":"
    if value.startswith("<") and len(value) > 1 and not value[1].isspace():
        sep, value = value[1], value[2:]
    if sep == ":":
        items = [x.replace("\0", ":") for x in value.replace("::", "\0").split(":")]
    else:
        items = value.split(sep)
    return [x.strip() for x in items if x.strip()]


def _network(d: Derived, value: str, why: str) -> None:
    try:
        net = ipaddress.ip_network(value.strip("[]").replace("]/", "/"), strict=False)
    except ValueError:
        d.notes.append(f"trusted_networks: {value!r} ({why}) is not a network here (a table or a name); left out")
        return
    if not net.is_private and net.prefixlen < _WIDEST_PUBLIC[net.version]:
        d.notes.append(f"trusted_networks: {net} ({why}) left out: a public network this wide is how a relay "
                       "is opened, not evidence that its clients are ours")
        return
    d.add("trusted_networks", str(net), why)


def _domain(d: Derived, key: str, value: str, why: str, hostname: str = "") -> None:
    v = value.strip().lower().rstrip(".")
    if v == "@" and hostname:
        v = hostname
    if not v or v in _NOT_DOMAINS or v.startswith("localhost."):
        return
    if any(c in v for c in ":;/$*!+") or "." not in v:
        d.notes.append(f"{key}: {value!r} ({why}) is a lookup, pattern or named list; not expanded, left out")
        return
    if key != "server_names" and is_public_suffix(v):
        d.notes.append(f"{key}: {v} ({why}) left out: a public suffix; every domain under it would count as ours")
        return
    d.add(key, v, why)


def _address(d: Derived, value: str, why: str) -> None:
    try:
        ip = ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return  # "all", "loopback-only", interface names: no address of ours to name
    if not ip.is_loopback and not ip.is_unspecified:
        d.add("server_ips", str(ip), why)


def from_site(site: dict[str, Any]) -> Derived:
    """Policy values from the MTA configuration the agent recorded (see agent/siteconf.py)."""
    d = Derived()
    mta = str(site.get("mta", ""))
    host = str(site.get("host", "the host"))
    params = {str(k): str(v) for k, v in (site.get("params") or {}).items()}
    how = str(site.get("how", ""))
    if mta == "postfix":
        src = f"postfix on {host} ({how or 'postconf'})"
        name = params.get("myhostname", "").strip().lower()
        if name:
            d.add("server_names", name, f"{src}: myhostname")
        for key in ("mydestination", "virtual_alias_domains", "virtual_mailbox_domains"):
            for w in _words(params.get(key, "")):
                _domain(d, "local_domains", w, f"{src}: {key}")
        for w in _words(params.get("relay_domains", "")):
            if w.lower().rstrip(".") not in d.values.get("local_domains", []):
                _domain(d, "relay_domains", w, f"{src}: relay_domains")
        for w in _words(params.get("mynetworks", "")):
            _network(d, w, f"{src}: mynetworks")
        for w in _words(params.get("inet_interfaces", "")):
            _address(d, w, f"{src}: inet_interfaces")
    elif mta == "exim":
        src = f"exim on {host} ({how or 'exim -bP'})"
        name = params.get("primary_hostname", "").strip().lower()
        if name:
            d.add("server_names", name, f"{src}: primary_hostname")
        for w in _exim_list(params.get("local_domains", "")):
            _domain(d, "local_domains", w, f"{src}: local_domains", hostname=name)
        for w in _exim_list(params.get("relay_to_domains", "")):
            _domain(d, "relay_domains", w, f"{src}: relay_to_domains", hostname=name)
        for w in _exim_list(params.get("relay_from_hosts", "")):
            _network(d, w, f"{src}: relay_from_hosts")
        for w in _exim_list(params.get("local_interfaces", "")):
            _address(d, w.split(".port=", 1)[0], f"{src}: local_interfaces")
    elif isinstance(site.get("policy"), dict):
        src = f"{mta or 'agent'} on {host} ({how or 'agent --policy'})"
        pol = site["policy"]
        for key in KEYS:
            for v in pol.get(key) or []:
                d.add(key, str(v).strip().lower().rstrip(".") if key.endswith(("domains", "names")) else str(v),
                      src)
    for key, vals in d.values.items():
        d.origins[key] = "; ".join(dict.fromkeys(d.evidence[key][v] for v in vals))
    return d


def top_hop_names(records: Iterable[ParsedRecord]) -> tuple[Counter[str], int]:
    """The topmost Received hop's `by` name per message, and how many messages have a Received line."""
    names: Counter[str] = Counter()
    with_hops = 0
    for r in records:
        if r.received:
            with_hops += 1
            if r.received[0].by:
                names[r.received[0].by] += 1
    return names, with_hops


Hops = tuple[tuple[str | None, str | None], ...]


@dataclass
class QueueEvidence:
    """What `from_queue` reads of a queue, gathered message by message (or shard by shard, from the
    parsed shards' columns: pipeline.columnar) and added up; a few entries per host name and domain,
    not per message.

    names: the topmost Received hop's `by` name -> [messages, the first one's position] (ties are
    broken by the first position, as Counter.most_common breaks them by first insertion).
    accounts: domain -> account -> messages, where the queue stored an account sending as itself.
    hops: (domain, hops) -> messages, for a message whose queue stored no account: its Received hops
    up to the last one authenticated as the sender (by name, that account or None); which one is
    ours is only known once the server names are."""

    names: dict[str, list[int]] = field(default_factory=dict)
    with_hops: int = 0
    accounts: dict[str, Counter[str]] = field(default_factory=dict)
    hops: Counter[tuple[str, Hops]] = field(default_factory=Counter)

    def add_message(self, position: int, top_by: str | None, account: str | None, domain: str | None,
                    hops: Hops | None) -> None:
        """One message's part (see `message_evidence`): top_by None when it has no Received line."""
        if top_by is not None:
            self.with_hops += 1
            if top_by:
                seen = self.names.setdefault(top_by, [0, position])
                seen[0] += 1
                seen[1] = min(seen[1], position)
        if domain is None:
            return
        if account:
            self.accounts.setdefault(domain, Counter())[account] += 1
        elif hops:
            self.hops[domain, hops] += 1

    def merge(self, other: QueueEvidence) -> None:
        for name, (n, pos) in other.names.items():
            seen = self.names.setdefault(name, [0, pos])
            seen[0] += n
            seen[1] = min(seen[1], pos)
        self.with_hops += other.with_hops
        for domain, users in other.accounts.items():
            self.accounts.setdefault(domain, Counter()).update(users)
        self.hops.update(other.hops)

    def top_names(self) -> list[tuple[str, int]]:
        return [(name, n) for name, (n, _) in sorted(self.names.items(), key=lambda kv: (-kv[1][0], kv[1][1]))]

    def senders(self, ours: SitePolicy) -> tuple[dict[str, set[str]], Counter[str]]:
        """Per domain, the accounts sending as themselves from it, and their messages, given our names."""
        accounts: dict[str, set[str]] = defaultdict(set)
        counts: Counter[str] = Counter()
        for domain, users in self.accounts.items():
            accounts[domain].update(users)
            counts[domain] += sum(users.values())
        for (domain, hops), n in self.hops.items():
            # the topmost hop of ours is the one that counts, as in a queue that stored the account
            user = next((u for by, u in hops if ours.is_our_host(by)), None)
            if user:
                accounts[domain].add(user)
                counts[domain] += n
        return accounts, counts

    @classmethod
    def of(cls, records: Iterable[ParsedRecord]) -> QueueEvidence:
        ev = cls()
        for i, r in enumerate(records):
            ev.add_message(i, *message_evidence(r))
        return ev


def message_evidence(r: ParsedRecord) -> tuple[str | None, str | None, str | None, Hops | None]:
    """(top_by, account, domain, hops) of one message, for QueueEvidence.add_message: the topmost
    Received hop's `by` name ('' if it has none, None without Received lines); and, when it sends
    from an address, the sender's domain with the account the queue stored if it sends as itself,
    else the hops that could show one (None when none could)."""
    top_by = (r.received[0].by or "") if r.received else None
    sender = (r.envelope.mail_from or "").lower()
    if "@" not in sender:
        return top_by, None, None, None
    local, domain = sender.rsplit("@", 1)
    user = (r.envelope.sasl_username or "").lower()
    if user:
        return top_by, user if user in (local, sender) else None, domain, None
    hops: list[tuple[str | None, str | None]] = []
    last = -1
    for h in r.received:
        u = (h.auth_user or "").lower() if h.authenticated else ""
        hops.append((h.by, u if u and u in (local, sender) else None))
        if hops[-1][1]:
            last = len(hops)
    return top_by, None, domain, tuple(hops[:last]) if last > 0 else None


def from_queue(records: Sequence[ParsedRecord] | QueueEvidence, server_names: Sequence[str] | None = None) -> Derived:
    """What the queue itself shows, where the evidence is strong.

    server_names: the `by` name of the topmost Received line of most messages. Every message in our
    queue was received by us, and the topmost line is the one we wrote; lines below it anyone can forge.
    local_domains: domains that at least two SMTP AUTH accounts send from under their own name
    (account alice sending as alice@example.org). One account is not enough: a stolen one may send
    as anyone@gmail.com, and gmail.com must never become local.
    """
    d = Derived()
    ev = records if isinstance(records, QueueEvidence) else QueueEvidence.of(records)
    with_hops = ev.with_hops
    for name, n in ev.top_names()[:3]:
        if n >= SERVER_NAME_MIN and n >= SERVER_NAME_SHARE * with_hops:
            d.add("server_names", name, f"queue: the topmost Received line of {n:,} of {with_hops:,} messages "
                  f"with Received lines is 'by {name}'")
    ours = SitePolicy(server_names=list(server_names if server_names is not None
                                                 else d.values.get("server_names", [])))
    accounts, counts = ev.senders(ours)
    for domain in sorted(accounts):
        users = accounts[domain]
        if len(users) >= LOCAL_DOMAIN_MIN_ACCOUNTS:
            d.add("local_domains", domain, f"queue: {len(users)} SMTP AUTH accounts send as themselves from "
                  f"@{domain} ({counts[domain]:,} messages, e.g. {', '.join(sorted(users)[:3])})")
    for key, vals in d.values.items():
        d.origins[key] = "; ".join(d.evidence[key][v] for v in vals)
    return d


def effective_policy(explicit: SitePolicy, explicit_source: str | None, site: dict[str, Any] | None,
                     records: Sequence[ParsedRecord] | QueueEvidence) -> tuple[SitePolicy, PolicyInfo]:
    """The policy for this snapshot, per key: the explicit file's value if it sets the key, else the MTA's
    recorded configuration, else (server_names and local_domains only) the queue; else the default.
    `records`: the queue's records in triage order, or the QueueEvidence gathered from them."""
    chosen: dict[str, object] = {}
    origins: dict[str, str] = {}
    kinds: set[str] = set()
    given = explicit.model_fields_set
    mta = from_site(site) if site else Derived()
    queue: Derived | None = None
    # server_names first: finding our own hop (for the accounts that show local domains) needs them
    for key in ("server_names", *[k for k in KEYS if k != "server_names"]):
        if key in given:
            origins[key] = explicit_source or "the policy given"
            kinds.add(explicit_source or "the policy given")
            continue
        if key in mta.values:
            chosen[key], origins[key] = mta.values[key], mta.origins[key]
            kinds.add(f"the MTA's configuration recorded in the snapshot ({(site or {}).get('mta')} on "
                      f"{(site or {}).get('host')})")
            continue
        if key in ("server_names", "local_domains"):
            names = explicit.server_names if "server_names" in given else chosen.get("server_names")
            queue = queue or from_queue(records, names if key == "local_domains" else None)  # type: ignore[arg-type]
            if key in queue.values:
                chosen[key], origins[key] = queue.values[key], queue.origins[key]
                kinds.add("the queue")
                continue
        origins[key] = "default"
    policy = explicit
    if chosen:
        data = explicit.model_dump(exclude_unset=True)
        data.update(chosen)
        policy = policy_from_dict(data, source="derived policy")
    info = PolicyInfo(source=" + ".join(sorted(kinds)) or "defaults (no policy file, no MTA configuration)",
                      values={k: list(getattr(policy, k)) for k in KEYS}, origins=origins, notes=mta.notes)
    return policy, info


def describe(policy: SitePolicy, source: str = "the policy given") -> PolicyInfo:
    """A PolicyInfo for a policy used as it is."""
    return PolicyInfo(source=source, values={k: list(getattr(policy, k)) for k in KEYS},
                      origins={k: source if k in policy.model_fields_set else "default" for k in KEYS})


def origin_warnings(records: Sequence[ParsedRecord], policy: SitePolicy) -> list[str]:
    """What the admin must read before approving: a policy that finds our own Received hop in too few
    messages whose queue stored no client address leaves their origin unknown (held for review), and
    usually means server_names is wrong or missing. Call after pipeline.verdicts.resolve_origin."""
    from pipeline.verdicts import records_client

    out: list[str] = []
    needs = [r for r in records if not records_client(r) and r.received]
    missed = [r for r in needs if r.our_hop is None]
    if missed and len(missed) >= max(3, 0.2 * len(needs)):
        names, _ = top_hop_names(missed)
        common = ", ".join(f"{n} ({c:,})" for n, c in names.most_common(3)) or "none"
        ours = ", ".join(policy.server_names + policy.server_ips) or "none"
        out.append(f"the policy's server names and addresses ({ours}) match no Received hop in {len(missed):,} of "
                   f"{len(needs):,} messages whose queue stores no client address ({len(missed) / len(needs):.0%}): "
                   f"their origin is unknown, so they are held for review, not replayed. Commonest topmost 'by' "
                   f"names: {common}. If one is this server, add it to server_names "
                   "(`spoolsweep policy suggest SNAPSHOT` shows the evidence)")
    if records and not policy.local_domains:
        out.append("no local_domains: every recipient counts as external, so mail for our own users cannot be told "
                   "from relayed mail; give --policy or snapshot with the agent so the MTA's own domains are recorded")
    if unnamed := sum(1 for r in records if signed_in_unnamed(r.envelope_inferred)):
        out.append(unnamed_login_warning(unnamed))
    return out


TRUSTED_RUN_WARN = 100  # copies: a run this big that only trust makes valid is named before approval


def trusted_run_warning(campaigns: Sequence[Campaign]) -> list[str]:
    """Runs valid only because they were submitted on the host or from a trusted network (`trusted_bulk`), of
    TRUSTED_RUN_WARN copies or more: an application's mailing, or a script on the host (a web form, a CMS
    plugin) or a machine of a trusted network abused to send spam, which nothing in the queue tells apart."""
    runs = sorted((c for c in campaigns if c.size >= TRUSTED_RUN_WARN and c.verdict is Verdict.valid and c.reasons
                   and c.reasons[0].code is ReasonCode.trusted_bulk), key=lambda c: (-c.size, c.id))
    if not runs:
        return []
    big = runs[0]
    senders = ", ".join(d for d, _ in big.sender_domains.top[:3]) or "none"
    return [f"{len(runs)} run(s), {sum(c.size for c in runs):,} messages, are valid only because they were submitted "
            f"on the host or from a trusted network; the biggest, campaign {big.id}: {big.size:,} copies of "
            f"{big.subject[:80]!r} from {senders} to {big.recipient_domains.distinct:,} recipient domains. If a "
            "script on the host (a web form, a CMS plugin) or a machine of trusted_networks was abused to send spam, "
            "they are its spam: look at them before approving"]


def unnamed_login_warning(n: int) -> str:
    return (f"{n:,} messages were signed in (SMTP AUTH) as an account that neither the queue nor our Received hop "
            "names (Postfix writes it there only with smtpd_sasl_authenticated_header = yes, and a content filter "
            "that hands mail back loses the queue's): they are judged as mail with no account, so our users' own "
            "are held for review; turn the header on before the next incident")


def site_of(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded MTA configuration of a canonical snapshot's meta, with the host it came from."""
    site = meta.get("site")
    if not isinstance(site, dict):
        return None
    return {"host": meta.get("host"), **site}
