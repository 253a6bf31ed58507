"""Review at scale: how many groups hold a big incident's review messages, and how fast the review pages answer.

    python3 bench/review_groups_bench.py [--sizes 20000 100000] [--shop-share 0.01] [--style plain|spamware]

For each size it generates an incident with the web shop (bench-out/review-<style><N>.tar.gz, reused when there),
triages it twice, with the generator's site policy and with the office network 192.0.2.0/24 left out of
trusted_networks (so much more is held for review), and prints per run: review messages, groups, the bound
(one group per 20 review messages plus 10), whether every review message is in exactly one group, the time
grouping took, the largest groups' sentences, then the console's review pages' time and size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--shop-share", type=float, default=0.01)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--style", default="plain", help="the generator's style: plain or spamware")
    a = ap.parse_args()
    from starlette.testclient import TestClient

    from console.app import create_app
    from pipeline.generator import POLICY_TOML, find_corpus, iter_incident, load_corpus, write_canonical
    from pipeline.manifest_io import write_manifest
    from pipeline.models import Verdict
    from pipeline.policy import policy_from_dict
    from pipeline.review_groups import budget, group_review
    from pipeline.triage import triage
    from tests.support.review import review_policy

    corpus = None
    for n in a.sizes:
        snap = ROOT / "bench-out" / (f"review{n}.tar.gz" if a.style == "plain" else f"review-{a.style}{n}.tar.gz")
        if not snap.exists():
            corpus = corpus or load_corpus(find_corpus())
            snap.parent.mkdir(parents=True, exist_ok=True)
            write_canonical(iter_incident(*corpus, n=n, seed=n, shop=int(n * a.shop_share), style=a.style), snap)
        for name, policy in (("site policy", policy_from_dict(tomllib.loads(POLICY_TOML))),
                             ("office net untrusted", review_policy())):
            t = time.perf_counter()
            m = triage(snap, policy, incident="big")
            took = time.perf_counter() - t
            review = [x for x in m.messages if x.verdict is Verdict.review]
            per_group = Counter(x.review_group for x in review)
            exact = (None not in per_group and all(per_group[g.id] == g.messages for g in m.review_groups)
                     and len(per_group) == len(m.review_groups))
            t = time.perf_counter()
            group_review(m.messages, spam_ips={s.client_ip for s in m.sources})
            grouping = time.perf_counter() - t
            print(f"\n{m.totals.messages:,} messages ({a.style}), {name}: triage {took:.1f} s; "
                  f"review {len(review):,} in {len(m.review_groups):,} groups (bound {budget(len(review)):,}); "
                  f"every review message in exactly one group: {'yes' if exact else 'NO'}; "
                  f"grouping {grouping * 1000:.0f} ms")
            for g in m.review_groups[:8]:
                print(f"  #{g.id:<3} {g.messages:>6,}  {g.rule:<24} {g.summary[:110]}")
            if len(m.review_groups) > 8:
                rest = sum(g.messages for g in m.review_groups[8:])
                print(f"  ... {len(m.review_groups) - 8} more groups with {rest:,} messages")
            for c in m.campaigns[:3]:
                print(f"  campaign #{c.id} ({c.size:,}): {c.subject[:60]!r} / {c.phrase!r}")
            with tempfile.TemporaryDirectory(prefix="spoolsweep-review-bench-") as tmp:
                write_manifest(m, Path(tmp) / "manifests" / "big")
                token = "bench-token-" + "x" * 20
                c = TestClient(create_app(Path(tmp), token, warm=False))
                auth = {"Authorization": f"Bearer {token}"}
                t = time.perf_counter()
                assert c.get("/api/incidents/big", headers=auth).status_code == 200
                print(f"  console first load {time.perf_counter() - t:.2f} s")
                ids = ",".join(str(x.id) for x in m.campaigns[:60])
                last = max(1, -(-len(m.review_groups) // 20))
                for path in ("/api/incidents/big", "/api/incidents/big/review-groups",
                             f"/api/incidents/big/review-groups?page={last}",
                             f"/api/incidents/big/pictures?kind=campaign&ids={ids}",
                             "/api/incidents/big/review-groups/1/messages?page=2",
                             "/api/incidents/big/approval-summary"):
                    t = time.perf_counter()
                    c.get(path, headers=auth)  # the first call of the review pages builds their index
                    first = time.perf_counter() - t
                    times = []
                    for _ in range(a.repeat):
                        t = time.perf_counter()
                        r = c.get(path, headers=auth)
                        times.append(time.perf_counter() - t)
                    if r.status_code != 200:
                        print(f"  {path:<60} HTTP {r.status_code}")
                        continue
                    times.sort()
                    median = times[len(times) // 2]
                    print(f"  {path[:60]:<60} first {first * 1000:7.1f} ms, then median {median * 1000:7.1f} ms"
                          f"  {len(r.content) / 1024:7.1f} KiB")


if __name__ == "__main__":
    main()
