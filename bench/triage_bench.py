"""Benchmark triage: quality against ground truth, throughput, peak memory, and the read-and-hash floor.

    python bench/triage_bench.py --sizes 20000 100000 [--style spamware|plain] [--json bench-out/triage.json]

Each size is generated once (cached under bench-out/), then measured in a fresh process so peak RSS
is that run's own. The floor is the bare cost of streaming the same archive and hashing every member,
measured twice: with the standard library's tarfile, and with the reader triage uses (libarchive
when installed). Triage time is the archive in to manifest.json written; imports are reported apart.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rss import peak_rss_mb  # noqa: E402


def _child(kind: str, snap: str, policy: str, workers: int) -> None:
    import os

    t_import = time.perf_counter()
    if kind == "floor-stdlib":
        os.environ["SPOOLSWEEP_TAR_READER"] = "tarfile"
    from bench.floor import read_and_hash
    from pipeline.policy import load_policy

    out: dict = {}
    if kind.startswith("floor"):
        n, seconds = read_and_hash(snap)
        out = {"messages": n, "seconds": seconds}
    else:
        import tempfile

        from pipeline.generator import score
        from pipeline.manifest_io import write_manifest
        from pipeline.triage import triage

        pol = load_policy(policy)
        out["import_seconds"] = time.perf_counter() - t_import
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        last = [t0]

        def progress(stage: str, done: int, total: int | None) -> None:
            now = time.perf_counter()
            stages[stage] = stages.get(stage, 0.0) + now - last[0]
            last[0] = now

        # what a user waits for: the archive in, the manifest on disk
        with tempfile.TemporaryDirectory() as tmp:
            m = triage(snap, pol, workers=workers, progress=progress)
            t1 = time.perf_counter()
            write_manifest(m, Path(tmp))
            t2 = time.perf_counter()
        stages["manifest build"] = t1 - last[0]
        stages["manifest write"] = t2 - t1
        out["seconds"] = t2 - t0
        truth = Path(snap).with_name(Path(snap).name.split(".")[0] + ".truth.jsonl")
        s = score(m.messages, truth)
        s.pop("by_kind")
        out.update({"messages": m.totals.messages, "quality": s, "stages": stages})
    out["peak_rss_mb"] = peak_rss_mb()
    out["children_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--style", choices=["spamware", "plain"], default="spamware",
                    help="the generator's style: spamware (copies varied as bulk-mail tools vary them) or plain "
                         "(the original generator, per-copy tokens only)")
    ap.add_argument("--dir", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--peer", choices=["spamassassin"], default=None,
                    help="also run a content filter from Debian (apt-get install spamassassin spamd spamc)")
    ap.add_argument("--peer-sample", type=int, default=400, help="messages the peer filter scans")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child(a.child[0], a.child[1], a.child[2], a.workers)
        return
    from pipeline.generator import POLICY_TOML, find_corpus, iter_incident, load_corpus, write_canonical

    a.dir.mkdir(parents=True, exist_ok=True)
    policy = a.dir / "site.toml"
    policy.write_text(POLICY_TOML)
    ham = spam = None
    rows = []
    for n in a.sizes:
        snap = a.dir / (f"incident{n}.tar.gz" if a.style == "plain" else f"incident{n}-{a.style}.tar.gz")
        if not snap.exists():
            if ham is None:
                ham, spam = load_corpus(find_corpus())
            print(f"generating {n:,} messages -> {snap}", file=sys.stderr)
            write_canonical(iter_incident(ham, spam or [], n=n, seed=n, style=a.style), snap)
        res = {}
        for kind in ("floor-stdlib", "floor", "triage"):
            p = subprocess.run([sys.executable, __file__, "--workers", str(a.workers), "--child", kind, str(snap),
                                str(policy)], capture_output=True, text=True, check=True)
            res[kind] = json.loads(p.stdout.strip().splitlines()[-1])
        f, fs, t = res["floor"], res["floor-stdlib"], res["triage"]
        row = {"messages": n, "mb": snap.stat().st_size / 2**20,
               "floor_stdlib_msgs_per_s": fs["messages"] / fs["seconds"],
               "floor_msgs_per_s": f["messages"] / f["seconds"], "triage_msgs_per_s": t["messages"] / t["seconds"],
               "triage_seconds": t["seconds"], "import_seconds": t["import_seconds"],
               "triage_mb_per_s": snap.stat().st_size / 2**20 / t["seconds"],
               "ratio_to_floor_stdlib": t["seconds"] / fs["seconds"], "ratio_to_floor": t["seconds"] / f["seconds"],
               "peak_rss_mb": t["peak_rss_mb"], "workers_peak_rss_mb": t["children_peak_rss_mb"],
               "stages": t["stages"], **t["quality"]}
        if a.peer:
            from bench.peer import run_spamassassin, sample_from_snapshot

            truth = {}
            for line in snap.with_name(snap.name.split(".")[0] + ".truth.jsonl").read_text().splitlines():
                entry = json.loads(line)
                truth[entry["path"]] = entry["label"]
            peer = run_spamassassin(sample_from_snapshot(snap, truth, a.peer_sample))
            if peer is None:
                print("  peer: spamd/spamc not found or did not start", file=sys.stderr)
            else:
                row["peer"] = peer
                row["ratio_to_peer"] = row["triage_msgs_per_s"] / peer["msgs_per_s"]
        rows.append(row)
        print(f"{n:>9,} msgs ({row['mb']:,.0f} MB)  floor: stdlib {row['floor_stdlib_msgs_per_s']:,.0f}/s, "
              f"libarchive {row['floor_msgs_per_s']:,.0f}/s  triage {row['triage_msgs_per_s']:,.0f}/s "
              f"{row['triage_mb_per_s']:.1f} MB/s ({row['triage_seconds']:.1f} s + {row['import_seconds']:.1f} s "
              f"imports; {row['ratio_to_floor_stdlib']:.1f}x stdlib floor, {row['ratio_to_floor']:.1f}x libarchive "
              f"floor)  peak RSS {row['peak_rss_mb']:,.0f} MB (+ each worker {row['workers_peak_rss_mb']:,.0f} MB)"
              f"  valid->spam {row['valid_as_spam']}  spam->valid {row['spam_as_valid_share']:.3%}  "
              f"review {row['review_share']:.2%}")
        print("           stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in t["stages"].items()))
        if "peer" in row:
            pr = row["peer"]
            print(f"           peer SpamAssassin (spamd --local, {pr['messages']} sampled): {pr['msgs_per_s']:.1f}/s "
                  f"-> spoolsweep is {row['ratio_to_peer']:.0f}x faster; peer deleted "
                  f"{pr['valid_as_spam_share']:.1%} of valid, replayed {pr['spam_as_valid_share']:.1%} of spam")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
