"""CPU seconds of parsing the found messages of incidents, in one process, with the caches' state.

    python bench/parse_cpu.py SNAPSHOT [SNAPSHOT...] [--rounds 3] [--profile N]

Each snapshot's messages are read once (read_snapshot), then parse_found runs over all of them: a
warm-up pass over the first 200, then `rounds` timed passes (time.process_time). The first timed pass
starts from caches filled by 200 messages only, as a parse worker does; later passes find them full,
so the first pass is the figure to compare with a run, the best of the rest the steady state. The
collector is off while they run, as in triage's parse workers (forked inside pipeline.triage.paused_gc):
on, it walks every message held here again and again, which doubled the figures and credited any
change that allocates less with a gain no worker sees. Per
message, and how full the normalise and features caches are afterwards. --profile N: cProfile of
one more pass, the N busiest functions (cProfile inflates builtin calls: find places with it, and
confirm a gain by the timed passes).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("snapshots", type=Path, nargs="+")
    ap.add_argument("--policy", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="empty the caches before each snapshot")
    a = ap.parse_args()

    from pipeline import features, normalise
    from pipeline.archive import ArchiveReport
    from pipeline.parse import parse_found
    from pipeline.policy import SitePolicy, load_policy
    from pipeline.readers import read_snapshot

    policy_path = a.policy
    if policy_path is None and (a.snapshots[0].parent / "site.toml").exists():
        policy_path = a.snapshots[0].parent / "site.toml"
    policy = load_policy(policy_path) if policy_path else SitePolicy()
    for snap in a.snapshots:
        _fmt, found_iter, _r = read_snapshot(snap, policy.limits, report=ArchiveReport())
        found = list(found_iter)
        if a.fresh:
            normalise._WORDS.clear()
            normalise._LINES.clear()
            normalise._HIDES.clear()
            features._keys_of.cache_clear()
            features.registered_domain.cache_clear()
        for f in found[:200]:
            parse_found(f, policy)
        gc.collect()
        gc.disable()
        times = []
        for _ in range(a.rounds):
            t = time.process_time()
            for f in found:
                parse_found(f, policy)
            times.append(time.process_time() - t)
        gc.enable()
        n = len(found)
        rest = min(times[1:]) if len(times) > 1 else times[0]
        print(f"{snap.name}: {n} messages, first pass {times[0] * 1000 / n:.3f} ms/msg, "
              f"best of the rest {rest * 1000 / n:.3f} ms/msg ({' '.join(f'{x:.2f}' for x in times)} s)")
        print(f"  caches: _WORDS {len(normalise._WORDS)}, _LINES {len(normalise._LINES)}, "
              f"_HIDES {len(normalise._HIDES)}, "
              f"_keys_of {features._keys_of.cache_info()}, registered_domain {features.registered_domain.cache_info()}")
        if a.profile:
            pr = cProfile.Profile()
            pr.enable()
            for f in found:
                parse_found(f, policy)
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(a.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
