"""Query every zone for every target in parallel, and read the answers the way the lists define them.

NXDOMAIN is "not listed"; an A record in 127.0.0.0/8 is "listed" with the zone's meaning for the
code; Spamhaus's 127.255.255.252/254/255, any answer outside 127/8, timeouts and SERVFAIL leave the
check "unknown" and say why. Before a zone is trusted it must list its test entry (127.0.0.2, or
::FFFF:7F00:2 for IPv6, or its documented test domain) and must not list 127.0.0.1 or a name
under .invalid, which catches dead and wildcarding zones (RFC 5782).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import dns.asyncresolver
import dns.exception
import dns.inet
import dns.resolver
import dns.reversename

from pipeline.blocklist.catalogue import Zone, load_catalogue
from pipeline.blocklist.models import BlocklistReport, Status, ZoneHealth, ZoneResult
from pipeline.policy import SitePolicy

# Codes that mean "your query was refused", not "listed" (Spamhaus return codes documentation).
ERROR_CODES = {
    "127.255.255.252": "Spamhaus: typing error in the DNSBL name",
    "127.255.255.254": "Spamhaus: query through a public or open resolver is refused; use your own resolver",
    "127.255.255.255": "Spamhaus: excessive number of queries from this resolver",
}
_CACHES: dict[str | None, dns.resolver.Cache] = {}  # one per resolver: an answer from one is no answer from another
ZONE_ERRORS = {"multi.uribl.com": {"127.0.0.1": "URIBL refused the query (public resolver or over its limit)"}}


@dataclass(frozen=True, slots=True)
class Answer:
    kind: str  # "a", "nxdomain", "nodata", "timeout", "servfail", "error"
    addrs: tuple[str, ...] = ()
    detail: str = ""


def parse_nameserver(spec: str) -> tuple[str, int]:
    """HOST[:PORT], with [v6]:PORT for IPv6."""
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if spec.count(":") == 1:
        host, port = spec.split(":")
        return host, int(port)
    return spec, 53


def target_kind(target: str) -> str:
    try:
        return "ipv4" if ipaddress.ip_address(target).version == 4 else "ipv6"
    except ValueError:
        return "domain"


def query_name(target: str, zone: str) -> str:
    """1.2.3.4 -> 4.3.2.1.zone; IPv6 in nibbles; a domain as it is."""
    if target_kind(target) == "domain":
        return f"{target.lower().rstrip('.')}.{zone}."
    rev = dns.reversename.from_address(target).to_text(omit_final_dot=True)
    rev = rev.removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")
    return f"{rev}.{zone}."


class Checker:
    def __init__(self, nameserver: str | None = None, timeout: float = 2.0, retries: int = 1,
                 concurrency: int = 64) -> None:
        if nameserver:
            host, port = parse_nameserver(nameserver)
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            self.resolver.nameservers = [host]
            self.resolver.port = port
        else:
            self.resolver = dns.asyncresolver.Resolver()
        self.resolver.timeout = timeout
        self.resolver.lifetime = timeout
        if nameserver not in _CACHES:
            _CACHES[nameserver] = dns.resolver.Cache()
        self.resolver.cache = _CACHES[nameserver]  # answers kept for their TTL, across checks: no needless queries
        self.retries = retries
        self.sem = asyncio.Semaphore(concurrency)
        self.nameserver = nameserver

    async def query(self, name: str, rdtype: str = "A") -> Answer:
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
                    last = Answer("servfail", detail=f"SERVFAIL or refused: {str(e)[:120]}")
                except dns.exception.DNSException as e:
                    return Answer("error", detail=f"{type(e).__name__}: {str(e)[:120]}")
            if attempt < self.retries:
                await asyncio.sleep(0.05)
        return last

    async def health(self, zone: Zone) -> ZoneHealth:
        """Does the zone list its test entry, and only that (not 127.0.0.1, not .invalid)?"""
        if zone.status == "dead":
            return ZoneHealth(zone=zone.zone, working=False, why=zone.why_dead or "listed as dead in the catalogue")
        if "domain" in zone.lists and not {"ipv4", "ipv6"} & set(zone.lists):
            positive, negative = zone.test or "test", "test.invalid"
        elif "ipv4" in zone.lists:
            positive, negative = "127.0.0.2", "127.0.0.1"
        else:
            positive, negative = "::ffff:7f00:2", "::ffff:7f00:1"
        pos, neg = await asyncio.gather(self.query(query_name(positive, zone.zone)),
                                        self.query(query_name(negative, zone.zone)))
        if pos.kind in ("timeout", "servfail", "error"):
            return ZoneHealth(zone=zone.zone, working=False, why=f"test query failed: {pos.detail or pos.kind}")
        if pos.kind != "a" or not any(a.startswith("127.") for a in pos.addrs):
            return ZoneHealth(zone=zone.zone, working=False,
                              why=f"does not list its test entry {positive}: dead, or not answering this resolver")
        if neg.kind == "a":
            return ZoneHealth(zone=zone.zone, working=False,
                              why=f"lists {negative}, which no list may list: it answers for everything (wildcard)")
        return ZoneHealth(zone=zone.zone, working=True)

    async def check(self, target: str, zone: Zone) -> ZoneResult:
        base = {"target": target, "zone": zone.zone, "delist_url": zone.delist, "expires": zone.expires}
        ans = await self.query(query_name(target, zone.zone))
        if ans.kind in ("nxdomain", "nodata"):
            return ZoneResult(status=Status.not_listed, **base)
        if ans.kind != "a":
            return ZoneResult(status=Status.unknown, why=ans.detail or ans.kind, **base)
        outside = [a for a in ans.addrs if not a.startswith("127.")]
        if outside:
            return ZoneResult(status=Status.unknown, codes=list(ans.addrs), **base,
                              why=f"answer {', '.join(outside)} is outside 127.0.0.0/8: the resolver rewrites "
                                  "NXDOMAIN or the zone is broken")
        errors = {**ERROR_CODES, **ZONE_ERRORS.get(zone.zone, {})}
        if failed := [a for a in ans.addrs if a in errors]:
            return ZoneResult(status=Status.unknown, codes=list(ans.addrs), why="; ".join(errors[a] for a in failed),
                              **base)
        txt = await self.query(query_name(target, zone.zone), "TXT")
        return ZoneResult(status=Status.listed, codes=list(ans.addrs), meanings=[zone.meaning(a) for a in ans.addrs],
                          txt=list(txt.addrs) if txt.kind == "a" else [], **base)


async def _run(targets: Sequence[str], zones: Sequence[Zone], checker: Checker) -> BlocklistReport:
    jobs = [(t, z) for t in targets for z in zones if target_kind(t) in z.lists]
    # only the zones some target needs are probed: no query that answers nothing we asked
    needed = list({z.zone: z for _, z in jobs}.values()) + [z for z in zones if z.status == "dead"]
    health = await asyncio.gather(*(checker.health(z) for z in {z.zone: z for z in needed}.values()))
    working = {h.zone for h in health if h.working}
    results = await asyncio.gather(*(checker.check(t, z) for t, z in jobs if z.zone in working))
    skipped = [ZoneResult(target=t, zone=z.zone, status=Status.unknown, delist_url=z.delist,
                          why="zone not trusted: " + next(h.why for h in health if h.zone == z.zone))
               for t, z in jobs if z.zone not in working and z.status != "dead"]
    order = {s: i for i, s in enumerate((Status.listed, Status.unknown, Status.not_listed))}
    rows = sorted([*results, *skipped], key=lambda r: (r.target, order[r.status], r.zone))
    return BlocklistReport(checked_at=datetime.now(UTC), nameserver=checker.nameserver, targets=list(targets),
                           results=rows, zones=[h for h in health if not h.working])


def check_targets(targets: Iterable[str], nameserver: str | None = None, zones: Sequence[Zone] | None = None,
                  timeout: float = 2.0) -> BlocklistReport:
    """Check IPv4/IPv6 addresses and domains against the catalogue (or the given zones)."""
    tlist = list(dict.fromkeys(t.strip().lower().rstrip(".") for t in targets if t.strip()))
    zlist = list(zones if zones is not None else load_catalogue())
    return asyncio.run(_run(tlist, zlist, Checker(nameserver, timeout=timeout)))


def check_policy(policy: SitePolicy, nameserver: str | None = None, timeout: float = 2.0) -> BlocklistReport:
    """The site's own addresses, HELO names and domains, against the policy's zones or the catalogue."""
    zones = load_catalogue()
    if policy.blocklist_zones is not None:
        wanted = set(policy.blocklist_zones)
        zones = tuple(z for z in zones if z.zone in wanted)
    return check_targets([*policy.server_ips, *policy.server_names, *policy.local_domains], nameserver, zones,
                         timeout)
