"""End-to-end time through the embedded default (upload -> parse -> triage -> blocklists -> approve -> dispatch).

    python3 bench/functions_e2e.py --messages 20000 [--messages 100000] [--shard-size 5000] [--workers N]

Prints, per size, the wall time of each step as the local runner drives the same Lambda handlers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.bootstrap import embedded_settings
from adapters.runtime import LocalRunner
from pipeline import queues
from pipeline.generator import POLICY_TOML, find_corpus, generate, load_corpus, write_canonical
from pipeline.manifest_io import ManifestReader
from pipeline.service import incidents
from pipeline.store import LocalChannel, LocalStore


def run(n: int, shard_size: int, workers: int | None, corpus: tuple[list[bytes], list[bytes]]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="spoolsweep-bench-") as tmp:
        snap = Path(tmp) / f"bench{n}.tar.zst"
        t = time.perf_counter()
        write_canonical(generate(*corpus, n=n, seed=1), snap)
        gen = time.perf_counter() - t
        root = Path(tmp) / "home"
        incidents.keys_init(root)
        store = LocalStore(root)
        incidents.put_policy(store, POLICY_TOML.encode())
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        keys = incidents.upload(store, snap, "bench", "mx1", shard_size=shard_size)
        times["upload+split"] = time.perf_counter() - t0
        runner = LocalRunner(root, settle=0, settings=embedded_settings(root, workers))
        runner.run_until_idle(timeout=7200)
        times |= {step: runner.timings.get(step, 0.0) for step in ("parse", "triage", "blocklist")}
        m = ManifestReader(store, "bench").summary
        t = time.perf_counter()
        incidents.approve(store, "bench", by="bench")
        runner.run_until_idle()
        times["approve+dispatch"] = time.perf_counter() - t
        times["total"] = time.perf_counter() - t0
        assert m.totals.messages == n, m.totals
        parts = len(LocalChannel(root / "channel").receive("mx1", max_messages=100_000))
        assert parts == len(list(store.list(queues.instructions_prefix("mx1")))) >= 1
        dead = runner.dead()
        assert not dead, dead
        print(f"\n{n:,} messages in {len(keys)} shard(s) of <= {shard_size:,} "
              f"(generating the snapshot took {gen:.1f} s, not counted); "
              f"valid {m.totals.valid:,} spam {m.totals.spam:,} review {m.totals.review:,}; "
              f"{parts} signed instruction part(s)")
        for step, s in times.items():
            print(f"  {step:<18} {s:8.2f} s")
        print(f"  {'throughput':<18} {n / times['total']:8,.0f} messages/s")
        return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, action="append", help="incident size (repeatable; default 20000)")
    ap.add_argument("--shard-size", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=None, help="parser processes (default: one per core)")
    args = ap.parse_args()
    corpus = load_corpus(find_corpus())
    print(f"cores: {os.cpu_count()}, parse workers: {args.workers or os.cpu_count()}")
    for n in args.messages or [20000]:
        run(n, args.shard_size, args.workers, corpus)


if __name__ == "__main__":
    main()
