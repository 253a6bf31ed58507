"""Peak RSS and time of writing a big manifest as parts, approving it, dispatching that, and console pages over it.

    python3 bench/manifest_parts_bench.py [--messages 1000000] [--per-part 50000]

The messages are synthetic: a few template ManifestMessages (valid, spam in campaigns, review in groups, with
envelopes, reasons and subjects of a real manifest's size) repeated with distinct ids, paths and digests, streamed
into the writer (never a list). Each stage runs in a process of its own and reports its own peak RSS
(VmHWM, bench/rss.py), so a figure is that stage's, not the largest so far.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rss import peak_rss_mb  # noqa: E402

INC, HOST = "big", "mx1"


def _messages(n: int) -> Iterator:
    from pipeline.models import Envelope, ManifestMessage, Reason, ReasonCode, Verdict

    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    for i in range(n):
        kind = i % 10
        v = Verdict.valid if kind < 2 else Verdict.review if kind == 9 else Verdict.spam
        env = Envelope(mail_from=f"user{i % 977}@example.{'com' if v is Verdict.valid else 'biz'}",
                       rcpt_to=[f"rcpt{(i * 7 + j) % 50_000}@example.org" for j in range(1 + i % 3)],
                       client_address=f"198.51.{(i // 256) % 256}.{i % 256}", helo="client.example.net",
                       protocol="ESMTP", arrival_time=t0 + timedelta(seconds=i * 3), queue_name="deferred",
                       queue_id=f"{i:012X}")
        yield ManifestMessage(
            id=hashlib.sha256(b"%d" % i).hexdigest()[:24], path=f"deferred/{i % 16:X}/{i:012X}",
            sha256=hashlib.sha256(b"body%d" % i).hexdigest(), size=2_000 + i % 5_000, format="postfix",
            queue_id=f"{i:012X}", queue_name="deferred", envelope=env,
            subject=f"Your invoice {i % 5_000} is ready - please review the attached statement",
            from_header=f'"Billing {i % 97}" <billing@example.biz>', message_id=f"<{i}@example.biz>",
            campaign=(i % 40) if v is Verdict.spam else None, verdict=v, confidence=0.93,
            reasons=[Reason(code=ReasonCode.relayed, text="relayed for an outside client to outside recipients",
                            weight="spam" if v is Verdict.spam else "info")],
            review_group=(i % 7) if v is Verdict.review else None)


def _summary(n: int):
    from pipeline.models import Campaign, Manifest, ReasonCode, ReviewGroup, SnapshotInfo, Spread, Totals, Verdict

    valid = sum(1 for i in range(n) if i % 10 < 2)
    review = sum(1 for i in range(n) if i % 10 == 9)
    sp = Spread(distinct=1, top=[("example.biz", 1)])
    camps = [Campaign(id=c, size=sum(1 for i in range(c, n, 40) if 2 <= i % 10 < 9), label="invoice statement",
                      sample_subjects=["Your invoice"], sender_domains=sp, recipient_domains=sp, client_ips=sp,
                      accounts=sp, verdict=Verdict.spam, confidence=0.9, reasons=[]) for c in range(40)]
    groups = [ReviewGroup(id=g, rule=ReasonCode.relayed, shared={}, summary="held", messages=sum(
        1 for i in range(n) if i % 10 == 9 and i % 7 == g), campaigns=[], client_ips=sp, sender_domains=sp,
        recipient_domains=sp, accounts=sp, sample_ids=[], sample_subjects=[], suggested=Verdict.review,
        suggested_reason="") for g in range(7)]
    return Manifest(incident=INC, snapshot=SnapshotInfo(source="synthetic", format="postfix", hosts=[HOST]),
                    policy_sha256="0" * 64, totals=Totals(messages=n, valid=valid, spam=n - valid - review,
                                                          review=review, bytes=0, campaigns=40),
                    campaigns=camps, accounts=[], sources=[], messages=[], review_groups=groups)


def stage(name: str, root: Path, n: int, per_part: int) -> dict:
    from pipeline.store import LocalChannel, LocalStore

    store = LocalStore(root)
    out: dict = {}
    t = time.perf_counter()
    if name == "write":
        from pipeline.manifest_io import write_manifest_parts

        write_manifest_parts(store, _summary(n), _messages(n), per_part=per_part)
        out["parts"] = sum(1 for k in store.list(f"manifests/{INC}/") if k.endswith(".parquet"))
        out["mb"] = sum(f.stat().st_size for f in (root / "manifests" / INC).rglob("*") if f.is_file()) / 2**20
    elif name == "approve":
        from pipeline.service.incidents import approve

        done = approve(store, INC, "bench")
        out["approval_mb"] = len(store.get(done.key)) / 2**20
    elif name == "dispatch":
        from pipeline import queues
        from pipeline.instructions import generate_keypair
        from pipeline.service.dispatch import dispatch

        [key] = store.list(queues.approvals_prefix(INC))
        priv, _ = generate_keypair()
        out["result"] = dispatch(store, LocalChannel(root / "channel"), key, priv, "bench").summary
    elif name == "console":
        from starlette.testclient import TestClient

        from console.app import create_app

        token = "bench-token-" + "x" * 20
        c = TestClient(create_app(root, token, warm=False))
        auth = {"Authorization": f"Bearer {token}"}
        t1 = time.perf_counter()
        assert c.get("/api/incidents", headers=auth).status_code == 200
        out["first load (index)"] = round(time.perf_counter() - t1, 2)
        for path in (f"/api/incidents/{INC}/messages?verdict=spam&page=40", f"/api/incidents/{INC}",
                     f"/api/incidents/{INC}/review-groups", f"/api/incidents/{INC}/messages?q=invoice%204999",
                     f"/api/incidents/{INC}/approval-summary"):
            t1 = time.perf_counter()
            r = c.get(path, headers=auth)
            assert r.status_code == 200, (path, r.text[:300])
            out[path.split(INC)[1] or "/"] = round(time.perf_counter() - t1, 2)
    out["seconds"] = time.perf_counter() - t
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--per-part", type=int, default=50_000)
    ap.add_argument("--stages", nargs="+", default=["write", "approve", "dispatch", "console"],
                    help="which stages, in order (each needs the ones before it)")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.stage:
        print(json.dumps(stage(a.stage, Path(a.root), a.messages, a.per_part)))
        return
    with tempfile.TemporaryDirectory(prefix="spoolsweep-parts-bench-") as tmp:
        print(f"{a.messages:,} synthetic messages, parts of {a.per_part:,}; each stage in its own process")
        for name in a.stages:
            cp = subprocess.run([sys.executable, __file__, "--stage", name, "--root", tmp, "--messages",
                                 str(a.messages), "--per-part", str(a.per_part)], capture_output=True, text=True,
                                check=False)
            if cp.returncode != 0:
                print(f"  {name}: failed\n{cp.stderr[-2000:]}")
                return
            r = json.loads(cp.stdout.strip().splitlines()[-1])
            rss, s = r.pop("peak_rss_mb"), r.pop("seconds")
            print(f"  {name:<17} peak RSS {rss:8.0f} MB  {s:7.1f} s  {json.dumps(r)}")


if __name__ == "__main__":
    main()
