"""Check that parsing and triage give byte-identical results before and after a change meant to be speed only.

    python bench/parse_identity.py SNAPSHOT [SNAPSHOT...] --out before.jsonl
    (change the code)
    python bench/parse_identity.py SNAPSHOT [SNAPSHOT...] --out after.jsonl --against before.jsonl

For every message of each snapshot, in one process: the parsed record's fields as JSON (the grouping
features among them: normalised text, sketch, URL and digest keys, shape) with the digest of that
line; then the whole triage's manifest, its run-dependent fields (times, ids of the run) left out.
With --against, the first differing record or manifest field is named and the exit status is 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_RUN_FIELDS = {"created", "generated_at", "started", "finished", "duration_seconds", "triage_seconds"}


def _strip(o: object) -> object:
    if isinstance(o, dict):
        return {k: _strip(v) for k, v in o.items() if k not in _RUN_FIELDS}
    if isinstance(o, list):
        return [_strip(v) for v in o]
    return o


def lines_of(snap: Path, policy_path: Path | None) -> list[str]:
    from pipeline.archive import ArchiveReport
    from pipeline.parse import parse_found
    from pipeline.policy import SitePolicy, load_policy
    from pipeline.readers import read_snapshot
    from pipeline.triage import triage

    policy = load_policy(policy_path) if policy_path else SitePolicy()
    out: list[str] = []
    _fmt, found_all, _report = read_snapshot(snap, policy.limits, report=ArchiveReport())
    for found in found_all:
        rec = parse_found(found, policy)
        line = json.dumps(rec.model_dump(mode="json"), sort_keys=True)
        out.append(f"{snap.name}:record {hashlib.sha256(line.encode()).hexdigest()[:16]} {line}")
    m = triage(snap, policy, workers=1)
    line = json.dumps(_strip(m.model_dump(mode="json")), sort_keys=True)
    out.append(f"{snap.name}:manifest {hashlib.sha256(line.encode()).hexdigest()[:16]} {line}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("snapshots", type=Path, nargs="+")
    ap.add_argument("--policy", type=Path, default=None, help="site.toml (default: the one beside the first snapshot)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--against", type=Path, default=None)
    a = ap.parse_args()
    policy = a.policy
    if policy is None and (a.snapshots[0].parent / "site.toml").exists():
        policy = a.snapshots[0].parent / "site.toml"
    lines = [ln for s in a.snapshots for ln in lines_of(s, policy)]
    a.out.write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} lines -> {a.out}")
    if a.against is None:
        return 0
    before = a.against.read_text().splitlines()
    if len(before) != len(lines):
        print(f"DIFFERENT: {len(before)} lines before, {len(lines)} now")
        return 1
    for old, new in zip(before, lines, strict=True):
        if old != new:
            o, n = json.loads(old.split(" ", 2)[2]), json.loads(new.split(" ", 2)[2])
            diff = {k for k in set(o) | set(n) if o.get(k) != n.get(k)}
            print(f"DIFFERENT: {old.split(' ', 1)[0]} {o.get('path', '')}: fields {sorted(diff)}")
            for k in sorted(diff)[:3]:
                print(f"  {k}: before {str(o.get(k))[:300]!r}\n  {k}: now    {str(n.get(k))[:300]!r}")
            return 1
    print(f"IDENTICAL: {len(lines)} records and manifests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
