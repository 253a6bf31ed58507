"""Peak memory and time of triage's plan step over an incident's parsed shards.

    python bench/plan_memory.py --store DIR --incident INC [--parse-jobs 2] [--shards N ...] [--json OUT]

The incident's snapshot must be in DIR/incoming/ already (`spoolsweep generate -n 1000000 --style
plain X.tar.zst`, then `spoolsweep upload X.tar.zst --incident INC --host mx1 --shard-size 20000
--store DIR`). With --parse-jobs, the shards not parsed yet are parsed first (the parse service, one
process a shard at a time, that many at once). Then, for each count given with --shards (default:
all), the plan step runs in a fresh process over the first N shards (the incident cut short: the
plan does not need the rest), and its peak RSS (VmHWM), the RSS after its imports, and its seconds
are printed, with the share of time spent reading shards. The process stores no plan (--write to
store it). On a shared machine the seconds are noisy; the peak RSS is not.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _parse_some(store_dir: str, keys: list[str]) -> int:
    from pipeline.policy import SitePolicy
    from pipeline.service.parse import Incoming, ParseOptions, parse_object
    from pipeline.store import LocalStore

    store = LocalStore(store_dir)
    n = 0
    for k in keys:
        r = parse_object(store, Incoming(k), SitePolicy(), ParseOptions(workers=1))
        n += r.count
        print(f"  {k}: {r.summary}", file=sys.stderr, flush=True)
    return n


def parse_pending(store_dir: Path, incident: str, jobs: int) -> None:
    from pipeline import queues
    from pipeline.shards import shard_of
    from pipeline.store import LocalStore

    store = LocalStore(store_dir)
    todo = []
    for k in sorted(store.list(queues.incoming_prefix(incident))):
        _, host, name = k.split("/")[1:4]
        shard = shard_of(host, name).shard
        if ".part-" not in name:
            continue  # the whole snapshot: its parts are parsed, not it
        if not (store.exists(queues.parsed_key(incident, shard)) or
                store.exists(queues.legacy_parsed_key(incident, shard))):
            todo.append(k)
    print(f"parsing {len(todo)} shard(s) with {jobs} process(es)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(jobs) as pool:
        n = sum(pool.starmap(_parse_some, [(str(store_dir), todo[i::jobs]) for i in range(jobs)]))
    print(f"parsed {n:,} messages in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)


def _measure(store_dir: str, incident: str, count: int | None, write: bool, out: mp.Queue) -> None:
    import numpy  # noqa: F401  # the imports' memory is reported apart
    import pyarrow  # noqa: F401

    from pipeline.plan import plan_step, write_plan
    from pipeline.policy import SitePolicy
    from pipeline.service.plan import first_site, parsed_shards, shard_data, shard_metas
    from pipeline.store import LocalStore

    base = _rss_mb("VmRSS")
    store = LocalStore(store_dir)
    shards = parsed_shards(store, incident)[:count]
    site, _ = first_site(shard_metas(store, incident, shards))
    read_s = 0.0

    def read(s: str) -> bytes:
        nonlocal read_s
        t = time.perf_counter()
        data = shard_data(store, incident, s)
        read_s += time.perf_counter() - t
        return data

    t0 = time.perf_counter()
    plan = plan_step(incident, shards, read, SitePolicy(), None, site)
    secs = time.perf_counter() - t0
    if write:
        write_plan(store, plan)
    out.put({"shards": len(shards), "messages": plan.total, "campaigns": len(plan.campaign_sizes),
             "peak_rss_mb": round(_rss_mb("VmHWM"), 1), "rss_after_imports_mb": round(base, 1),
             "seconds": round(secs, 1), "store_read_seconds": round(read_s, 1),
             "policy_source": plan.policy_info.source})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--incident", required=True)
    ap.add_argument("--parse-jobs", type=int, default=0, help="parse the shards not parsed yet, this many at once")
    ap.add_argument("--shards", type=int, nargs="*", default=None, help="plan over the first N shards (each N)")
    ap.add_argument("--write", action="store_true", help="store the plan")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.parse_jobs:
        parse_pending(a.store, a.incident, a.parse_jobs)
    rows = []
    ctx = mp.get_context("spawn")  # a fresh interpreter: its peak is the plan's alone
    for count in a.shards or [None]:
        q: mp.Queue = ctx.Queue()
        p = ctx.Process(target=_measure, args=(str(a.store), a.incident, count, a.write, q))
        p.start()
        row = q.get()
        p.join()
        rows.append(row)
        print(f"plan over {row['shards']} shard(s), {row['messages']:,} messages: peak RSS {row['peak_rss_mb']:,.0f} MB "
              f"({row['rss_after_imports_mb']:.0f} MB after imports), {row['seconds']:.1f} s "
              f"({row['store_read_seconds']:.1f} s reading shards), {row['campaigns']:,} campaigns", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
