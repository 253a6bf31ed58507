"""What the parse stage costs a message in CPU, with and without issue 14's grouping features.

    python bench/parse_budget.py SNAPSHOT [--policy site.toml] [--workers 2] [--shard-size 20000] [--runs 2]

The parse stage of the CLI's shard route (adapters.workflow.spill_snapshot into a store in a temporary
folder: read_snapshot, and parse_into_shards on a pool of `--workers` forked parse processes) runs in a
fresh process, twice a run and alternating:

- `as shipped`: the parse as triage runs it;
- `no grouping features`: the same, with the link, Reply-To, digest and subject keys, the MinHash sketch
  and the template shape left out (pipeline.parse._set_grouping and pipeline.parse.shape replaced in
  the route process before the pool forks, so its workers inherit the replacements; only a bounce
  that the careful parser reads still works out its quoted copy's shape, which is then not kept). The texts are
  still normalised and cut as before; what is left is what the parse cost before those features,
  plus what other issues added (the index checks, hidden-text detection, columns and Parquet).

For each it prints the CPU of the route process (its imports, reading the archive, cutting chunks,
handing them over) and of the workers together (parsing, the columns, the Parquet files), each over the
messages, and the throughput that CPU allows on
as many cores as workers if every core were busy all the time. Issue 19's bar, 4,000 messages a
second on 2 cores, is 500 CPU-microseconds a message for the whole triage; the map and reduce steps
that follow the parse are not in these figures (bench/triage_steps_bench.py measures them).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.child import result, run_child  # noqa: E402

BUDGET_US = 500.0  # issue 19: 4,000 msg/s on 2 cores, the whole triage


def _without_grouping_features() -> None:
    """Leave the grouping features out of every parse from now on (this process and those it forks)."""
    import pipeline.parse as parse
    from pipeline.models import ParsedRecord
    from pipeline.normalise import MAX_TEXT

    def no_features(rec: ParsedRecord, g: object) -> None:  # _set_grouping's assignments, less its features
        rec.keys, rec.sketch = [], []
        rec.text = rec.text[:MAX_TEXT]
        rec.bounced_original_text = rec.bounced_original_text[:MAX_TEXT]

    vars(parse).update(_set_grouping=no_features, shape=lambda data: "")


def _child(snap: Path, policy_path: Path | None, workers: int, shard_size: int, bare: bool) -> dict[str, float]:
    from adapters.workflow import spill_snapshot
    from pipeline.policy import SitePolicy, load_policy
    from pipeline.store import LocalStore

    if bare:
        _without_grouping_features()
    policy = load_policy(policy_path) if policy_path else SitePolicy()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        n = spill_snapshot(LocalStore(d), snap, policy, None, "bench", shard_size, workers)
    wall = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the pool has been shut down: its workers reaped
    return {"messages": n, "wall": wall, "route_cpu": own.ru_utime + own.ru_stime,
            "workers_cpu": kids.ru_utime + kids.ru_stime}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("snapshot", type=Path)
    ap.add_argument("--policy", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", choices=["shipped", "bare"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        result(_child(a.snapshot, a.policy, a.workers, a.shard_size, a.child == "bare"))
        return 0

    rows = []
    for run in range(a.runs):
        for kind in ("shipped", "bare"):
            args = [str(a.snapshot), "--workers", str(a.workers), "--shard-size", str(a.shard_size), "--child", kind]
            r, why = run_child(__file__, args + (["--policy", str(a.policy)] if a.policy else []))
            if r is None:
                print(f"run {run + 1} {kind}: failed ({why})", file=sys.stderr)
                return 1
            r.update(run=run + 1, kind=kind)
            rows.append(r)
            n = r["messages"]
            route, work = 1e6 * r["route_cpu"] / n, 1e6 * r["workers_cpu"] / n
            ceiling = a.workers * 1e6 / (route + work)
            label = "as shipped" if kind == "shipped" else "no grouping features"
            print(f"run {run + 1} {label:<21} {n:,} messages in {r['wall']:.1f} s: CPU a message route {route:.0f} µs"
                  f" + workers {work:.0f} µs = {route + work:.0f} µs ({100 * (route + work) / BUDGET_US:.0f} % of"
                  f" issue 19's whole budget); at most {ceiling:,.0f} msg/s on {a.workers} busy cores", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"snapshot": a.snapshot.name, "workers": a.workers, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
