"""Wall time to check one IPv4 and one IPv6 address against the whole catalogue, on a local DNS server.

    python bench/blocklist_bench.py [--rounds 5]

The server (dnslib on 127.0.0.1) answers for every catalogue zone like a healthy list: the test
entries listed, the addresses under test listed on a few zones, NXDOMAIN elsewhere.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.blocklist import check as check_mod
from pipeline.blocklist import load_catalogue
from pipeline.blocklist.check import check_targets, query_name
from tests.support.dns_server import LocalDNS, ZoneResolver
from tests.support.dnsbl_replay import KEYS, plan

V4, V6 = "192.0.2.25", "2001:db8::25"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    for name, key in KEYS.items():  # the keyed zones too, with the fixture's fake keys
        os.environ.setdefault(f"SPOOLSWEEP_{name.upper()}_KEY", key)
    zones = [z for z in load_catalogue() if z.status != "dead"]
    records: dict[str, tuple[list[str], list[str]]] = {}
    for z in zones:
        records.update({k: v for k, v in plan(z).records.items() if "replay" not in k and "198.18." not in k})
    for z in zones[:3]:
        code = next(c for c, v in z.codes.items() if v.kind == "listed")
        records[query_name(V4, z.zone).rstrip(".")] = ([code], ["listed for the benchmark"])
    with LocalDNS(ZoneResolver(records, set(), set(), set())) as server:
        times = []
        for _ in range(a.rounds):
            check_mod._CACHES.clear()  # every round asks the server again
            t0 = time.perf_counter()
            rep = check_targets([V4, V6], server.nameserver, zones)
            times.append(time.perf_counter() - t0)
    print(f"{len(zones)} zones, {len(rep.results)} checks (+ 2 health queries per zone and family): "
          f"best {min(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s; "
          f"{len(rep.listed())} listed, {len(rep.zones)} zones not working")


if __name__ == "__main__":
    main()
