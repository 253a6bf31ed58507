"""Benchmark triage's five steps over a sharded incident: peak RSS and time of every step, each in its own process.

    python bench/triage_steps_bench.py --size 100000 --shards 5 [--style plain] [--corpus DIR] [--json out.json]

The incident is generated once and parsed once into `--shards` parsed shards of a local store (cached
under bench-out/). Then every step (plan, facts per shard, decide, verdicts per shard, summary) runs in
a fresh process through pipeline.service.triage.run_step, so each peak RSS is that step's own; and,
on the same shards, today's one-process triage (every record loaded, tests/reference_decide.py, the
decide that the steps replace) for comparison. Timings on a shared machine are noisy: compare the
ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rss import peak_rss_mb  # noqa: E402

INCIDENT = "bench"


def _prepare(args: argparse.Namespace, out: Path) -> Path:
    """The store with the incident's parsed shards (made once per size, style and shard count)."""
    from pipeline import queues
    from pipeline.columnar import shard_bytes
    from pipeline.generator import find_corpus, iter_incident, load_corpus, write_canonical
    from pipeline.policy import load_policy
    from pipeline.shards import ShardMeta
    from pipeline.store import LocalStore
    from pipeline.triage import read_and_parse

    root = out / f"steps-{args.style}-{args.size}-{args.shards}"
    done = root / "ready"
    if done.exists():
        return root
    snap = out / f"steps-{args.style}-{args.size}.tar.gz"
    if not snap.exists():
        ham, spam = load_corpus(find_corpus(args.corpus))
        write_canonical(iter_incident(ham, spam, n=args.size, seed=1, style=args.style), snap)
    policy = load_policy(args.policy)
    t0 = time.perf_counter()
    _, records, report = read_and_parse(snap, policy)
    print(f"parsed {len(records):,} messages in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    store = LocalStore(root / "store")
    k = args.shards
    for i in range(k):
        shard = f"mx1.snap.part-{i + 1:04d}-of-{k:04d}"
        part = records[i::k]  # each shard's messages in no particular global order
        meta = ShardMeta(incident=INCIDENT, host="mx1", source=f"incoming/{INCIDENT}/mx1/{shard}", shard=shard,
                         part=i + 1, parts=k, format="canonical", members_read=len(part), messages=len(part),
                         skipped=[], defects=[], site=None)
        store.put(queues.shard_meta_key(INCIDENT, shard), meta.model_dump_json().encode())
        store.put(queues.parsed_key(INCIDENT, shard), shard_bytes(part))
    done.write_text("ok")
    return root


def _child(step: str, root: str, shard: str | None, policy_path: str | None) -> None:
    import pipeline.service.triage  # imports are not the step's time
    import pipeline.staged  # noqa: F401
    from pipeline.policy import load_policy
    from pipeline.store import LocalStore

    policy = load_policy(policy_path)
    store = LocalStore(Path(root) / "store")
    t0 = time.perf_counter()
    if step == "today":
        from pipeline import queues
        from pipeline.manifest_io import manifest_bytes
        from pipeline.service.triage import load_records, parsed_shards, snapshot_info
        from pipeline.shards import ShardMeta
        from pipeline.sitepolicy import effective_policy
        from pipeline.triage import prepare
        from tests.reference_decide import decide

        shards = parsed_shards(store, INCIDENT)
        metas = [ShardMeta.model_validate_json(store.get(queues.shard_meta_key(INCIDENT, s))) for s in shards]
        records = load_records(store, INCIDENT, shards)
        prepare(records)
        used, pinfo = effective_policy(policy, None, None, records)
        m = decide(records, used, INCIDENT, snapshot_info(metas), [], policy_info=pinfo, consume=True)
        data = manifest_bytes(m)
        (Path(root) / "today.json").write_bytes(data)
        msg = f"{len(records)} messages"
    else:
        from pipeline.service.triage import run_step

        msg = run_step(step, store, INCIDENT, shard, policy, None).message
    print(json.dumps({"step": step, "shard": shard, "seconds": round(time.perf_counter() - t0, 2),
                      "peak_rss_mb": round(peak_rss_mb()), "message": msg}))


def _run(step: str, root: Path, shard: str | None, policy: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", step, "--root", str(root)]
    if shard:
        cmd += ["--shard", shard]
    if policy:
        cmd += ["--policy", policy]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(f"{step} {shard or ''} failed:\n{res.stderr[-3000:]}")
    out: dict = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"{step:9} {shard or '':32} {out['seconds']:8.1f} s {out['peak_rss_mb']:7,} MB  {out['message']}",
          flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--style", default="plain")
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--policy", help="a site policy file (default: the generator's)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--skip-today", action="store_true")
    ap.add_argument("--child")
    ap.add_argument("--root")
    ap.add_argument("--shard")
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.root, args.shard, args.policy)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.policy is None:
        from pipeline.generator import POLICY_TOML

        pol = args.out / "generated-policy.toml"
        pol.write_text(POLICY_TOML)
        args.policy = str(pol)
    root = _prepare(args, args.out)
    from pipeline.service.plan import parsed_shards
    from pipeline.store import LocalStore

    store = LocalStore(root / "store")
    for k in [*store.list(f"state/{INCIDENT}/triage/"), *store.list(f"manifests/{INCIDENT}/")]:
        p = root / "store" / k
        p.unlink(missing_ok=True)
    results = [_run("plan", root, None, args.policy)]
    shards = parsed_shards(store, INCIDENT)
    results += [_run("facts", root, s, args.policy) for s in shards]
    results.append(_run("decide", root, None, args.policy))
    results += [_run("verdicts", root, s, args.policy) for s in shards]
    results.append(_run("summary", root, None, args.policy))
    total = sum(r["seconds"] for r in results)
    print(f"{'steps':9} {'(sum, one after another)':32} {total:8.1f} s {max(r['peak_rss_mb'] for r in results):7,} MB"
          " (largest step)")
    if not args.skip_today:
        today = _run("today", root, None, args.policy)
        results.append(today)
        from pipeline.manifest_io import manifest_bytes, read_manifest

        # the steps write a summary and parts (pipeline.manifest_io): read whole, as one file it is today's
        same = (root / "today.json").read_bytes() == manifest_bytes(read_manifest(store, INCIDENT))
        print(f"manifest identical to today's: {same}; time steps/today {total / today['seconds']:.2f}, "
              f"largest step RSS / today's {max(r['peak_rss_mb'] for r in results[:-1]) / today['peak_rss_mb']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
