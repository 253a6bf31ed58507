"""Query every zone for every target in parallel, and read each answer the way its list documents it.

NXDOMAIN is "not listed". An A record is read against the zone's documented codes (pipeline/data/dnsbl.toml):
"listed" only for a code the list documents as a listing; whitelist and reputation codes are reported as such;
error codes (Spamhaus's 127.255.255.0/24, URIBL's and SURBL's 127.0.0.1), codes the list does not document,
answers outside 127/8, timeouts and SERVFAIL leave the check "unknown" and say why. Bitmask lists (SURBL,
URIBL) are decoded bit by bit. Before a zone is trusted for an address family it must list that family's test
entry and must not list the RFC 5782 never-listed entry, which catches dead zones, wildcarding zones, refusals
and zones with no IPv6 data. Domains are queried as the registered domain (Public Suffix List) unless the
list documents otherwise.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.message
import dns.rcode
import dns.resolver

from pipeline.blocklist.catalogue import Zone, load_catalogue, select_zones
from pipeline.blocklist.models import BlocklistReport, Status, ZoneHealth, ZoneResult
from pipeline.errors import SpoolsweepError
from pipeline.policy import SitePolicy

_CACHES: dict[str | None, dns.resolver.Cache] = {}  # one per resolver: an answer from one is no answer from another
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_KEY_RE = re.compile(r"[A-Za-z0-9-]{1,63}")


class BadNameserver(SpoolsweepError):
    """--nameserver must be HOST[:PORT] (or [IPv6]:PORT) with a port from 1 to 65535:"""


class ResolverUnreachable(SpoolsweepError):
    """The DNS resolver did not answer, so no blocklist could be asked:"""


class KeyUnavailable(SpoolsweepError):
    """A blocklist service key could not be read:"""


@dataclass(frozen=True, slots=True)
class Answer:
    kind: str  # "a", "nxdomain", "nodata", "timeout", "servfail", "error"
    addrs: tuple[str, ...] = ()
    detail: str = ""


@dataclass(slots=True)
class Reading:
    """One answer read against the zone's documentation."""

    status: Status
    meanings: list[str] = field(default_factory=list)
    why: str = ""
    refused: bool = False  # an error code: the list refused the query (public resolver, over limit, bad key)


def split_host_port(spec: str, default_port: int = 53) -> tuple[str, int]:
    """HOST[:PORT], with [v6]:PORT for IPv6; ValueError names what is wrong. Nothing is resolved."""
    spec = spec.strip()
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else (str(default_port) if not rest else None)
    elif spec.count(":") == 1:
        host, port_s = spec.split(":")
    else:
        host, port_s = spec, str(default_port)
    if port_s is None or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"{spec!r}: the port is not a number from 1 to 65535")
    if not host:
        raise ValueError(f"{spec!r}: no host")
    return host, int(port_s)


def parse_nameserver(spec: str) -> tuple[str, int]:
    """A resolver's HOST[:PORT] as (IP, port); a host name is resolved here, once (e.g. localhost)."""
    try:
        host, port = split_host_port(spec)
    except ValueError as e:
        raise BadNameserver(str(e)) from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = str(socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)[0][4][0])
        except (OSError, UnicodeError) as e:
            raise BadNameserver(f"{spec!r}: host {host!r} does not resolve ({e})") from None
    return host, port


def target_kind(target: str) -> str:
    try:
        return "ipv4" if ipaddress.ip_address(target).version == 4 else "ipv6"
    except ValueError:
        return "domain"


@cache
def _psl() -> Any:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()  # the list shipped inside the package: nothing is fetched at run time


def registered_domain(name: str) -> str:
    """mx1.example.co.uk -> example.co.uk (Public Suffix List, ICANN and private sections); a suffix stays as it is."""
    name = name.lower().rstrip(".")
    return _psl().privatesuffix(name) or name


def query_name(target: str, zone: str) -> str:
    """1.2.3.4 -> 4.3.2.1.zone; IPv6 in nibbles; a domain as it is."""
    if target_kind(target) == "domain":
        return f"{target.lower().rstrip('.')}.{zone}."
    # ipaddress, not dns.reversename: dnspython writes an IPv4-mapped IPv6 address (::ffff:7f00:2, the RFC 5782
    # IPv6 test entry) in in-addr.arpa form, which would ask the IPv4 test entry instead
    rev = ipaddress.ip_address(target).reverse_pointer.removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")
    return f"{rev}.{zone}."


ReadSecret = Callable[[str], str]  # a secret's value by id (Secrets Manager: adapters.bootstrap.secret_reader)


def resolve_key(name: str, read_secret: ReadSecret | None = None) -> str | None:
    """SPOOLSWEEP_<NAME>_KEY, or the secret named by SPOOLSWEEP_<NAME>_SECRET, read with read_secret; never printed."""
    var = f"SPOOLSWEEP_{name.upper()}"
    value = os.environ.get(f"{var}_KEY", "").strip()
    if not value and (secret := os.environ.get(f"{var}_SECRET", "").strip()):
        if read_secret is None:
            raise KeyUnavailable(f"{var}_SECRET is set, but this command reads no secrets store")
        try:
            value = read_secret(secret).strip()
        except SpoolsweepError as e:
            raise KeyUnavailable(f"{var}_SECRET={secret}: {e}") from None
        except Exception as e:  # whatever the store raises, the message names the secret, never its value
            raise KeyUnavailable(f"{var}_SECRET={secret}: {type(e).__name__}") from None
        if value.startswith("{"):  # a JSON secret: {"key": "..."}
            try:
                value = str(json.loads(value).get("key", "")).strip()
            except (ValueError, AttributeError):
                raise KeyUnavailable(f"{var}_SECRET={secret}: JSON without a \"key\" field") from None
    if not value:
        return None
    if not _KEY_RE.fullmatch(value):
        raise KeyUnavailable(f"{var}: the key is not a single DNS label (letters, digits, '-')")
    return value


def interpret(zone: Zone, addrs: Iterable[str]) -> Reading:
    """The answer's A records, read against the zone's documented codes."""
    errors: list[str] = []
    listed: list[str] = []
    allow: list[str] = []
    rep: list[str] = []
    undocumented: list[str] = []
    outside: list[str] = []
    ranges = [(ipaddress.IPv4Network(n), c) for n, c in zone.ranges.items()]
    for a in addrs:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            outside.append(a)
            continue
        if ip.version != 4 or ip not in _LOOPBACK:
            outside.append(a)
            continue
        if zone.bitmask:
            found = [(f"{a} bit {b}", zone.codes.get(str(b))) for b in (1 << i for i in range(8))
                     if int(a.split(".")[3]) & b] or [(a, None)]
        else:
            found = [(a, zone.codes.get(a) or next((c for net, c in ranges if ip in net), None))]
        for label, c in found:
            if c is None:
                undocumented.append(label)
            elif c.kind == "error":
                errors.append(f"{label}: {c.means}")
            else:
                {"listed": listed, "allow": allow, "reputation": rep}[c.kind].append(c.means)
    meanings = listed + rep + allow
    if errors or outside:
        why = "; ".join(errors + ([f"answer {', '.join(outside)} is outside 127.0.0.0/8: the resolver rewrites "
                                   "NXDOMAIN or the zone is broken"] if outside else []))
        return Reading(Status.unknown, meanings, why, refused=bool(errors))
    if listed:
        extra = f"; also {', '.join(undocumented)}, which {zone.name} does not document" if undocumented else ""
        return Reading(Status.listed, meanings, extra.removeprefix("; "))
    if undocumented:
        return Reading(Status.unknown, meanings, f"answer {', '.join(undocumented)} is not a code {zone.name} "
                                                 f"documents ({zone.docs or 'no documentation'}): neither listed "
                                                 "nor not listed")
    if rep:
        return Reading(Status.reputation, meanings)
    return Reading(Status.allowlisted, meanings)


class Checker:
    def __init__(self, nameserver: str | None = None, timeout: float = 2.0, retries: int = 1,
                 concurrency: int = 64, read_secret: ReadSecret | None = None) -> None:
        self.read_secret = read_secret
        if nameserver:
            host, port = parse_nameserver(nameserver)
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            self.resolver.nameservers = [host]
            self.resolver.port = port
        else:
            try:
                self.resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                raise ResolverUnreachable("no nameserver configured on this host; name one with --nameserver") \
                    from None
        self.resolver.timeout = timeout
        self.resolver.lifetime = timeout
        if nameserver not in _CACHES:
            _CACHES[nameserver] = dns.resolver.Cache()
        self.resolver.cache = _CACHES[nameserver]  # answers kept for their TTL, across checks: no needless queries
        self.retries = retries
        self.timeout = timeout
        self.sem = asyncio.Semaphore(concurrency)
        self.nameserver = nameserver
        self.keys: dict[str, str] = {}

    def redact(self, text: str) -> str:
        for k in self.keys.values():
            text = text.replace(k, "<key>")
        return text

    def zone_name(self, zone: Zone) -> str | None:
        if zone.key is None:
            return zone.zone
        if zone.key not in self.keys:
            key = resolve_key(zone.key, self.read_secret)
            if key is None:
                return None
            self.keys[zone.key] = key
        return zone.zone.replace("{key}", self.keys[zone.key])

    async def probe(self) -> None:
        """One query to the resolver itself: an unreachable or refusing resolver is one clear error, not N unknowns."""
        q = dns.message.make_query(".", "NS")
        why = "no nameserver"
        for ns in self.resolver.nameservers:
            host = ns if isinstance(ns, str) else getattr(ns, "address", str(ns))
            label = self.nameserver or host
            try:
                r = await dns.asyncquery.udp(q, host, port=self.resolver.port, timeout=self.timeout)
            except dns.exception.Timeout:
                why = f"{label}: no answer within {self.timeout:g} s"
                continue
            except (OSError, dns.exception.DNSException) as e:
                why = f"{label}: {getattr(e, 'strerror', None) or type(e).__name__}"
                continue
            if r.rcode() == dns.rcode.REFUSED:
                why = f"{label}: it refuses our queries (REFUSED)"
                continue
            return
        raise ResolverUnreachable(why)

    async def query(self, name: str, rdtype: str = "A") -> Answer:
        last = Answer("error", detail="no attempt")
        for attempt in range(self.retries + 1):
            async with self.sem:
                try:
                    ans = await self.resolver.resolve(name, rdtype)
                    return Answer("a", tuple(sorted(r.to_text().strip('"') for r in ans)))
                except dns.resolver.NXDOMAIN:
                    return Answer("nxdomain")
                except dns.resolver.NoAnswer:
                    return Answer("nodata")
                except dns.exception.Timeout:
                    last = Answer("timeout", detail=f"no answer within {self.resolver.lifetime:g} s")
                except dns.resolver.NoNameservers as e:
                    last = Answer("servfail", detail=self.redact(f"SERVFAIL or refused: {str(e)[:160]}"))
                except (OSError, dns.exception.DNSException) as e:
                    return Answer("error", detail=self.redact(f"{type(e).__name__}: {str(e)[:160]}"))
            if attempt < self.retries:
                await asyncio.sleep(0.05)
        return last

    async def health(self, zone: Zone, family: str) -> ZoneHealth:
        """Does the zone list this family's test entry, and not the never-listed one?"""
        base = {"zone": zone.id, "family": family, "test_entry": zone.test_entry(family)}
        if zone.status == "dead":
            return ZoneHealth(working=False, why=f"dead since {zone.dead_since}: {zone.why_dead} ({zone.dead_source})",
                              **base)
        name = self.zone_name(zone)
        if name is None:
            return ZoneHealth(working=False, why=f"needs a key: set SPOOLSWEEP_{(zone.key or '').upper()}_KEY or "
                                                 f"SPOOLSWEEP_{(zone.key or '').upper()}_SECRET", **base)
        positive, negative = zone.test_entry(family), zone.never_entry(family)
        pos, neg = await asyncio.gather(self.query(query_name(positive, name)), self.query(query_name(negative, name)))
        if pos.kind in ("timeout", "servfail", "error"):
            return ZoneHealth(working=False, why=f"test query failed: {pos.detail or pos.kind}", **base)
        if pos.kind != "a":
            return ZoneHealth(working=False, why=f"does not list its {family} test entry {positive}: dead, no "
                                                 f"{family} data, or not answering this resolver", **base)
        got = interpret(zone, pos.addrs)
        if got.status is Status.unknown:
            what = "refused the query" if got.refused else "answered its test entry with"
            return ZoneHealth(working=False, why=f"{what} {got.why}", **base)
        if neg.kind == "a":
            bad = interpret(zone, neg.addrs)
            if bad.refused:
                return ZoneHealth(working=False, why=f"refused the query {bad.why}", **base)
            if bad.status in (Status.listed, Status.unknown):
                return ZoneHealth(working=False, why=f"lists {negative}, which no list may list: it answers for "
                                                     "everything (wildcard)", **base)
        return ZoneHealth(working=True, **base)

    async def check(self, target: str, zone: Zone) -> ZoneResult:
        asked = target
        if target_kind(target) == "domain" and zone.domain_form == "registered":
            asked = registered_domain(target)
        base = {"target": target, "zone": zone.id, "delist_url": zone.delist, "docs_url": zone.docs,
                "expires": zone.expires, "queried": asked if asked != target else None}
        qname = query_name(asked, self.zone_name(zone) or zone.zone)
        ans = await self.query(qname)
        if ans.kind in ("nxdomain", "nodata"):
            return ZoneResult(status=Status.not_listed, **base)
        if ans.kind != "a":
            return ZoneResult(status=Status.unknown, why=ans.detail or ans.kind, **base)
        got = interpret(zone, ans.addrs)
        txt: list[str] = []
        if got.status is Status.listed:
            t = await self.query(qname, "TXT")
            txt = [self.redact(x) for x in t.addrs] if t.kind == "a" else []
        return ZoneResult(status=got.status, codes=list(ans.addrs), meanings=got.meanings, why=got.why, txt=txt,
                          **base)


_ORDER = {s: i for i, s in enumerate((Status.listed, Status.unknown, Status.reputation, Status.allowlisted,
                                      Status.not_listed))}


async def _run(targets: Sequence[str], zones: Sequence[Zone], checker: Checker, chosen: bool) -> BlocklistReport:
    await checker.probe()
    jobs = [(t, z) for t in targets for z in zones if target_kind(t) in z.lists and z.status == "live"]
    # only the (zone, family) pairs some target needs are probed: no query that answers nothing we asked
    pairs = list(dict.fromkeys((z.id, target_kind(t)) for t, z in jobs))
    by_id = {z.id: z for z in zones}
    dead = [(z.id, z.lists[0]) for z in zones if z.status == "dead"]
    health = await asyncio.gather(*(checker.health(by_id[zid], fam) for zid, fam in [*pairs, *dead]))
    verdict = {(h.zone, h.family): h for h in health}
    results = await asyncio.gather(*(checker.check(t, z) for t, z in jobs
                                     if verdict[(z.id, target_kind(t))].working))
    skipped = []
    for t, z in jobs:
        h = verdict[(z.id, target_kind(t))]
        if h.working or (h.why.startswith("needs a key") and not chosen):
            continue  # a keyed zone nobody chose and nobody has a key for is no unknown, just not asked
        skipped.append(ZoneResult(target=t, zone=z.id, status=Status.unknown, delist_url=z.delist, docs_url=z.docs,
                                  why=f"zone not trusted for {h.family}: {h.why}"))
    rows = sorted([*results, *skipped], key=lambda r: (r.target, _ORDER[r.status], r.zone))
    return BlocklistReport(checked_at=datetime.now(UTC), nameserver=checker.nameserver, targets=list(targets),
                           results=rows, zones=[h for h in health if not h.working])


def check_targets(targets: Iterable[str], nameserver: str | None = None, zones: Sequence[Zone] | None = None,
                  timeout: float = 2.0, chosen: bool = False, read_secret: ReadSecret | None = None) -> BlocklistReport:
    """Check IPv4/IPv6 addresses and domains against the catalogue (or the given zones).

    chosen: the zones were named by the admin (policy blocklist_zones), so a keyed zone without its key
    is an unknown check, not a quiet skip.
    """
    tlist = list(dict.fromkeys(t.strip().lower().rstrip(".") for t in targets if t.strip()))
    zlist = list(zones if zones is not None else load_catalogue())
    return asyncio.run(_run(tlist, zlist, Checker(nameserver, timeout=timeout, read_secret=read_secret), chosen))


def check_policy(policy: SitePolicy, nameserver: str | None = None, timeout: float = 2.0,
                 read_secret: ReadSecret | None = None) -> BlocklistReport:
    """The site's own addresses, HELO names and domains, against the policy's zones or the catalogue."""
    zones = select_zones(load_catalogue(), policy.blocklist_zones)
    return check_targets([*policy.server_ips, *policy.server_names, *policy.local_domains], nameserver, zones,
                         timeout, chosen=policy.blocklist_zones is not None, read_secret=read_secret)


async def _check_catalogue(zones: Sequence[Zone], checker: Checker) -> list[ZoneHealth]:
    await checker.probe()
    pairs = [(z, fam) for z in zones if z.status == "live" for fam in z.lists]
    return list(await asyncio.gather(*(checker.health(z, fam) for z, fam in pairs)))


def check_catalogue(zones: Sequence[Zone], nameserver: str, timeout: float = 2.0,
                    read_secret: ReadSecret | None = None) -> list[ZoneHealth]:
    """Every live zone's test entries, per address family, through the resolver the admin names."""
    return asyncio.run(_check_catalogue(zones, Checker(nameserver, timeout=timeout, read_secret=read_secret)))
