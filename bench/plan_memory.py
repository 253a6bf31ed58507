"""Peak memory and time of triage's plan step over an incident's parsed shards.

    python bench/plan_memory.py --store DIR --incident INC [--parse-jobs 2] [--shards N ...] [--replicate K]
                                [--json OUT]

The incident's snapshot must be in DIR/incoming/ already (`spoolsweep generate -n 1000000 --style
plain X.tar.zst`, then `spoolsweep upload X.tar.zst --incident INC --host mx1 --shard-size 20000
--store DIR`). With --parse-jobs, the shards not parsed yet are parsed first (the parse service, one
process a shard at a time, that many at once). Then, for each count given with --shards (default:
all), the plan step runs in a fresh process over the first N shards (the incident cut short: the
plan does not need the rest), and its peak RSS (VmHWM), the RSS after its imports, and its seconds
are printed, with the share of time spent reading shards. The process stores no plan (--write to
store it). With --replicate K, a synthetic incident K times as big is made from the parsed shards'
columns (see `replicate`: parsing a million messages takes an hour on two cores) and measured
instead. On a shared machine the seconds are noisy; the peak RSS is not.
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


def replicate(store_dir: Path, incident: str, times: int, seed: int = 1) -> str:
    """A synthetic incident `times` as big, from the parsed shards' plan columns only: each row
    copied with another path and digest and 8 of its 64 sketch values redrawn (a near-duplicate
    of its original, as a spam run's copies are; valid mail becomes runs too, so the grouping has
    more links to follow than a real incident of that size). Written as incident <incident>-x<times>."""
    import hashlib

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import queues
    from pipeline.columnar import read_columns
    from pipeline.features import SKETCH_PERM
    from pipeline.plan import COLUMNS
    from pipeline.service.plan import parsed_shards, shard_data, shard_metas
    from pipeline.shards import part_name, stem
    from pipeline.store import LocalStore

    store = LocalStore(store_dir)
    out = f"{incident}-x{times}"
    shards = parsed_shards(store, incident)
    metas = shard_metas(store, incident, shards)
    rng = np.random.default_rng(seed)
    total = len(shards) * times
    k = 0
    for c in range(times):
        for s, meta in zip(shards, metas, strict=True):
            k += 1
            name = f"{meta.host}.{stem(part_name('synthetic', k, total))}"
            key = queues.parsed_key(out, name)
            if store.exists(key):
                continue
            t = read_columns(shard_data(store, incident, s), COLUMNS)
            n = len(t)
            paths = [f"{p}~{c}" for p in t.column("path").to_pylist()]
            shas = [hashlib.sha256(f"{h}{c}".encode()).hexdigest() for h in t.column("sha256").to_pylist()]
            digs = [hashlib.blake2b(d + bytes([c % 256, c // 256]), digest_size=16).digest()
                    for d in t.column("digest").to_pylist()]
            sk = t.column("sketch").combine_chunks()
            has = sk.is_valid().to_numpy(zero_copy_only=False)
            mat = np.zeros((n, SKETCH_PERM), dtype="<u4")
            if has.any():
                flat = np.frombuffer(sk.buffers()[1], dtype="<u4", count=(sk.offset + n) * SKETCH_PERM)
                mat[:] = flat[sk.offset * SKETCH_PERM:].reshape(n, SKETCH_PERM)
            if c:
                cols = rng.integers(0, SKETCH_PERM, size=(n, 8))
                np.put_along_axis(mat, cols, rng.integers(0, 2**32, size=(n, 8), dtype=np.uint64).astype("<u4"),
                                  axis=1)
            sketches = pa.array([m.tobytes() if h else None for m, h in zip(mat, has, strict=True)],
                                pa.binary(4 * SKETCH_PERM))
            t = t.set_column(t.schema.get_field_index("path"), "path", pa.array(paths, pa.string()))
            t = t.set_column(t.schema.get_field_index("sha256"), "sha256", pa.array(shas, pa.string()))
            t = t.set_column(t.schema.get_field_index("digest"), "digest", pa.array(digs, pa.binary(16)))
            t = t.set_column(t.schema.get_field_index("sketch"), "sketch", sketches)
            sink = pa.BufferOutputStream()
            pq.write_table(t, sink, compression="zstd")
            store.put(queues.shard_meta_key(out, name), meta.model_copy(update={"incident": out, "shard": name})
                      .model_dump_json().encode())
            store.put(key, sink.getvalue().to_pybytes())
        print(f"  copy {c + 1} of {times} written", file=sys.stderr, flush=True)
    return out


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
    ap.add_argument("--replicate", type=int, default=0,
                    help="measure a synthetic incident this many times as big instead (see `replicate`)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.parse_jobs:
        parse_pending(a.store, a.incident, a.parse_jobs)
    incident = replicate(a.store, a.incident, a.replicate) if a.replicate > 1 else a.incident
    rows = []
    ctx = mp.get_context("spawn")  # a fresh interpreter: its peak is the plan's alone
    for count in a.shards or [None]:
        q: mp.Queue = ctx.Queue()
        p = ctx.Process(target=_measure, args=(str(a.store), incident, count, a.write, q))
        p.start()
        row = q.get()
        p.join()
        rows.append(row)
        print(f"plan over {row['shards']} shard(s), {row['messages']:,} messages: "
              f"peak RSS {row['peak_rss_mb']:,.0f} MB "
              f"({row['rss_after_imports_mb']:.0f} MB after imports), {row['seconds']:.1f} s "
              f"({row['store_read_seconds']:.1f} s reading shards), {row['campaigns']:,} campaigns", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
