"""How fast the console's pages answer for a big incident: triage a generated snapshot, then time each API call.

    python3 bench/console_bench.py [--messages 100000]

Uses the benchmark's cached incident (bench-out/incident<N>.tar.gz, made by bench/triage_bench.py) when it is
there. Prints the first load (the manifest parsed and indexed once per change) and each page's call after it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    from starlette.testclient import TestClient

    from console.app import create_app
    from pipeline.generator import POLICY_TOML, find_corpus, iter_incident, load_corpus, write_canonical
    from pipeline.manifest_io import write_manifest
    from pipeline.policy import policy_from_dict
    from pipeline.triage import triage

    snap = ROOT / "bench-out" / f"incident{a.messages}.tar.gz"
    if not snap.exists():
        ham, spam = load_corpus(find_corpus())
        snap.parent.mkdir(parents=True, exist_ok=True)
        write_canonical(iter_incident(ham, spam, n=a.messages, seed=a.messages), snap)
    with tempfile.TemporaryDirectory(prefix="spoolsweep-console-bench-") as tmp:
        m = triage(snap, policy_from_dict(tomllib.loads(POLICY_TOML)), incident="big")
        out = Path(tmp) / "manifests" / "big"
        write_manifest(m, out)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())  # the summary and its parts
        token = "bench-token-" + "x" * 20
        c = TestClient(create_app(Path(tmp), token, warm=False))
        auth = {"Authorization": f"Bearer {token}"}
        t = time.perf_counter()
        assert c.get("/api/incidents/big", headers=auth).status_code == 200
        first = time.perf_counter() - t
        print(f"{m.totals.messages:,} messages, manifest {size / 2**20:.0f} MB: first load {first:.2f} s "
              "(parse + index, once per manifest change; the console warms it in the background at start)")
        mid = m.messages[len(m.messages) // 2].id
        pages = ["/api/incidents", "/api/incidents/big", "/api/incidents/big/messages?verdict=spam&page=40",
                 "/api/incidents/big/messages?verdict=valid", "/api/incidents/big/messages?q=window",
                 "/api/incidents/big/messages?campaign=1&page=3", f"/api/incidents/big/messages/{mid}",
                 "/api/incidents/big/timeline", "/api/incidents/big/approval-summary",
                 "/api/incidents/big/receipts"]
        for path in pages:
            times = []
            for _ in range(a.repeat):
                t = time.perf_counter()
                r = c.get(path, headers=auth)
                times.append(time.perf_counter() - t)
                assert r.status_code == 200, (path, r.status_code)
            times.sort()
            print(f"  {path:<58} median {times[len(times) // 2] * 1000:7.1f} ms  worst {times[-1] * 1000:7.1f} ms"
                  f"  {len(r.content) / 1024:7.1f} KiB")


if __name__ == "__main__":
    main()
