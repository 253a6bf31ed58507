"""A worked model of the AWS run (shards, parallel functions, memory, wall time, dollars) from measured times.

    python3 bench/cloud_model.py [--messages 100000] [--shard-size 20000] [--concurrency 50] [--json FILE]

It measures the real handlers through the embedded default with one process per step, as each
Lambda runs them (the parse function has 1,769 MB, which AWS sizes at exactly one vCPU): the time
of one parse shard, of the triage step over the parsed shards, and of dispatch. From those it
prices an incident of 100k and of 1M messages with AWS's list prices (below, us-east-1), and
compares the same job on one machine. The 1M row is scaled from the measured run by the exponent
bench/triage_bench.py measured (bench-out/triage.json; 1.0 if absent) and says so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# us-east-1 list prices (x86), read from aws.amazon.com/<service>/pricing; free tiers ignored
LAMBDA_GB_S = 0.0000166667
LAMBDA_REQUEST = 0.20 / 1e6
SQS_REQUEST = 0.40 / 1e6
SQS_FIFO_REQUEST = 0.50 / 1e6
S3_PUT = 0.005 / 1000
S3_GET = 0.0004 / 1000
S3_GB_MONTH = 0.023
# EC2 on-demand, Linux: the m7i family is priced linearly in size ($0.4032/h for m7i.2xlarge)
EC2 = {"m7i.large (2 vCPU, 8 GiB)": 0.1008, "m7i.xlarge (4 vCPU, 16 GiB)": 0.2016,
       "m7i.2xlarge (8 vCPU, 32 GiB)": 0.4032}
PARSE_MB = 1769
TRIAGE_MB = 10240
DISPATCH_MB = 10240
LAMBDA_MAX_S = 900


def _exponent() -> tuple[float, str]:
    path = ROOT / "bench-out" / "triage.json"
    try:
        rows = sorted(json.loads(path.read_text()), key=lambda r: r["messages"])
    except (OSError, ValueError, KeyError):
        return 1.0, "no bench-out/triage.json: linear scaling assumed"
    if len(rows) < 2:
        return 1.0, "one size in bench-out/triage.json: linear scaling assumed"
    a, b = rows[0], rows[-1]
    e = math.log(b["triage_seconds"] / a["triage_seconds"]) / math.log(b["messages"] / a["messages"])
    return e, f"time exponent {e:.2f} measured by bench/triage_bench.py from {a['messages']:,} to {b['messages']:,}"


def model(n: int, measured: dict[str, float], measured_n: int, shard_size: int, concurrency: int,
          exponent: float, snapshot_mb_per_msg: float) -> dict[str, object]:
    shards = math.ceil(n / shard_size)
    t_shard = measured["parse_per_shard"]
    waves = math.ceil(shards / concurrency)
    scale = (n / measured_n) ** exponent
    t_triage = measured["triage"] * scale
    t_dispatch = measured["dispatch"] * (n / measured_n)
    t_blocklist = measured["blocklist"]
    triage_on_lambda = t_triage < LAMBDA_MAX_S * 0.8 and measured["triage_rss_mb"] * scale < TRIAGE_MB * 0.8
    parse_gb_s = shards * t_shard * PARSE_MB / 1024
    dispatch_gb_s = t_dispatch * DISPATCH_MB / 1024
    lambda_usd = (parse_gb_s + dispatch_gb_s + t_blocklist * 0.5) * LAMBDA_GB_S
    triage_where = "Lambda, 10,240 MB"
    if triage_on_lambda:
        lambda_usd += t_triage * TRIAGE_MB / 1024 * LAMBDA_GB_S
        triage_usd = 0.0
    else:
        triage_where = "m7i.xlarge (16 GiB) against the bucket"
        triage_usd = t_triage / 3600 * EC2["m7i.xlarge (4 vCPU, 16 GiB)"]
    invocations = shards + 3 + math.ceil(n / 400)  # parse, triage, blocklist, dispatch, ~1 FIFO part per 400
    parts = math.ceil(n / 400)
    requests_usd = invocations * LAMBDA_REQUEST + 4 * invocations * SQS_REQUEST + parts * 2 * SQS_FIFO_REQUEST
    objects = 3 * shards + 10 + parts
    s3_usd = objects * (S3_PUT + S3_GET) + n * snapshot_mb_per_msg * 3 / 1024 * S3_GB_MONTH
    wall = waves * t_shard + t_triage + t_blocklist + t_dispatch
    return {"messages": n, "shards": shards, "parallel_parse_functions": min(shards, concurrency), "waves": waves,
            "parse_seconds_per_shard": t_shard, "triage_seconds": t_triage, "triage_runs_on": triage_where,
            "dispatch_seconds": t_dispatch, "wall_seconds": wall, "lambda_gb_s": parse_gb_s + dispatch_gb_s,
            "usd_compute": lambda_usd + triage_usd, "usd_requests": requests_usd, "usd_s3_month": s3_usd,
            "usd_total": lambda_usd + triage_usd + requests_usd + s3_usd}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--shard-size", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=50, help="ParseFunction's reserved concurrency")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    import resource

    from bench.functions_e2e import run
    from pipeline.generator import find_corpus, load_corpus

    corpus = load_corpus(find_corpus())
    times = run(a.messages, a.shard_size, 1, corpus)
    shards = math.ceil(a.messages / a.shard_size)
    measured = {"parse_per_shard": times["parse"] / shards, "triage": times["triage"],
                "blocklist": times.get("blocklist", 0.0), "dispatch": times["approve+dispatch"],
                "triage_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    ref = ROOT / "bench-out" / "incident100000.tar.gz"  # MB per message of a snapshot (stored thrice: in, parsed, out)
    snap_mb = ref.stat().st_size / 2**20 / 100_000 if ref.exists() else 0.002
    e, why = _exponent()
    print(f"\nmeasured here, one process per step ({a.messages:,} messages, shards of {a.shard_size:,}): "
          f"parse {measured['parse_per_shard']:.1f} s per shard, triage {measured['triage']:.1f} s, "
          f"dispatch {measured['dispatch']:.1f} s, blocklists {measured['blocklist']:.1f} s; "
          f"peak RSS of this process {measured['triage_rss_mb']:,.0f} MB; {why}")
    rows = [model(n, measured, a.messages, a.shard_size, a.concurrency, e, snap_mb) for n in (100_000, 1_000_000)]
    heads = " | ".join(f"{r['messages']:,} messages" for r in rows)
    print(f"\n| | {heads} |\n|---|---|---|")
    for label, key, fmt in [("shards (parallel parse functions)", None, ""),
                            ("parse, per shard (1,769 MB)", "parse_seconds_per_shard", "{:.0f} s"),
                            ("triage", None, ""),
                            ("dispatch (10,240 MB)", "dispatch_seconds", "{:.0f} s"),
                            ("wall time, upload landed to instructions sent", "wall_seconds", "{:.0f} s"),
                            ("Lambda GB-s (parse + dispatch)", "lambda_gb_s", "{:,.0f}"),
                            ("compute $", "usd_compute", "${:.3f}"), ("requests $", "usd_requests", "${:.4f}"),
                            ("S3 for a month $", "usd_s3_month", "${:.3f}"), ("total $", "usd_total", "${:.2f}")]:
        cells = []
        for r in rows:
            if key is None and label.startswith("shards"):
                cells.append(f"{r['shards']} ({r['parallel_parse_functions']} at a time, {r['waves']} wave(s))")
            elif key is None:
                cells.append(f"{r['triage_seconds']:.0f} s on {r['triage_runs_on']}")
            else:
                cells.append(fmt.format(r[key]))
        print(f"| {label} | {' | '.join(cells)} |")
    machine = []
    for path in (ROOT / "bench-out" / "triage.json",):
        try:
            for row in json.loads(path.read_text()):
                if row["messages"] in (100_000, 1_000_000):
                    price = EC2["m7i.large (2 vCPU, 8 GiB)"] if row["peak_rss_mb"] < 7000 else EC2[
                        "m7i.xlarge (4 vCPU, 16 GiB)"]
                    machine.append((row["messages"], row["triage_seconds"], row["peak_rss_mb"], price))
        except (OSError, ValueError, KeyError):
            pass
    for n, secs, rss, price in machine:
        print(f"one machine, {n:,} messages: whole triage {secs:.0f} s on this 2-core machine, peak RSS {rss:,.0f} MB"
              f" -> an m7i of that size ${price}/h: ${secs / 3600 * price:.4f} of compute")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"measured": measured, "exponent": e, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
