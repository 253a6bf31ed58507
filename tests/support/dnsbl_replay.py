"""A DNS fixture generated from the catalogue itself: every documented code of every zone, plus undocumented ones.

Each case is one target whose answer is one code; the expected status comes from the kind the catalogue gives
the code (listed / allow / reputation / error), never from the checker, so the checker's reading is what is tested.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field

from pipeline.blocklist import Status, Zone
from pipeline.blocklist.check import query_name, registered_domain

KEYS = {"spamhaus_dqs": "dqstestkey0123456789abcdef", "abusix": "abusixtestkey0123456789"}
EXPECT = {"listed": Status.listed, "allow": Status.allowlisted, "reputation": Status.reputation,
          "error": Status.unknown}


@dataclass
class Case:
    target: str
    answer: list[str]
    status: Status
    says: str  # text the report must carry (a meaning, or why it is unknown)


@dataclass
class Plan:
    zone: Zone
    records: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    cases: list[Case] = field(default_factory=list)


def _targets(family: str) -> Iterator[str]:
    for i in range(1, 10_000):
        yield {"ipv4": f"198.18.{i // 250}.{i % 250 + 1}", "ipv6": f"2001:db8:5::{i:x}",
               "domain": f"mx1.c{i}-replay.org"}[family]


def _addr(zone: Zone, code: str) -> str:
    return f"127.0.0.{code}" if zone.bitmask else code


def _documented(zone: Zone, addr: str) -> tuple[Status, str]:
    """What the catalogue says about one answer: its code, else the range holding it, else nothing (unknown)."""
    c = zone.codes.get(addr) or next((c for n, c in zone.ranges.items()
                                      if ipaddress.ip_address(addr) in ipaddress.IPv4Network(n)), None)
    return (EXPECT[c.kind], c.means) if c else (Status.unknown, "not a code")


def plan(zone: Zone) -> Plan:
    p = Plan(zone)
    name = zone.zone.replace("{key}", KEYS[zone.key]) if zone.key else zone.zone
    good = next(c for c, v in zone.codes.items() if v.kind != "error")
    for fam in zone.lists:
        p.records[query_name(zone.test_entry(fam), name).rstrip(".")] = ([_addr(zone, good)], ["test entry"])
    cases: list[tuple[list[str], Status, str]] = []
    for code, c in zone.codes.items():
        cases.append(([_addr(zone, code)], EXPECT[c.kind], c.means))
    listed_bits = [c for c, v in zone.codes.items() if v.kind == "listed"]
    if zone.bitmask and len(listed_bits) > 1:  # several sub-lists at once: every bit decoded
        total = sum(int(b) for b in listed_bits)
        for b in listed_bits:
            cases.append(([f"127.0.0.{total}"], Status.listed, zone.codes[b].means))
    # a code inside each documented range, and answers the catalogue does not document: unknown, never listed
    for net, c in zone.ranges.items():
        inside = next(str(a) for a in reversed(list(ipaddress.IPv4Network(net))) if str(a) not in zone.codes)
        cases.append(([inside], EXPECT[c.kind], c.means))
    if zone.bitmask:
        spare = next(b for b in (1 << i for i in range(8)) if str(b) not in zone.codes)
        cases.append(([f"127.0.0.{spare}"], Status.unknown, "not a code"))
    else:  # (a bitmask list reads only the last octet: 127.255.255.250 would be a sum of bits)
        for addr in (next(f"127.0.0.{n}" for n in range(77, 255) if f"127.0.0.{n}" not in zone.codes),
                     "127.255.255.250", "127.1.2.3"):
            cases.append(([addr], *_documented(zone, addr)))
    cases.append((["192.0.2.1"], Status.unknown, "outside 127.0.0.0/8"))
    for fam in zone.lists:
        for (answer, status, says), target in zip(cases, _targets(fam), strict=False):
            asked = registered_domain(target) if fam == "domain" and zone.domain_form == "registered" else target
            p.records[query_name(asked, name).rstrip(".")] = (answer, [f"txt for {target}"])
            p.cases.append(Case(target, answer, status, says))
    return p
