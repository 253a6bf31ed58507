"""A worked model of the AWS run (shards, parallel functions, memory, wall time, dollars) from measured times.

    python3 bench/cloud_model.py [--messages 100000] [--shard-size 20000] [--concurrency 50] [--json FILE]
                                 [--scale bench-out/scale.json]

It measures the real handlers through the embedded default with one process per step, as each
Lambda runs them (the parse function has 1,769 MB, which AWS sizes at exactly one vCPU): the time
of one parse shard, of the triage workflow over the parsed shards, and of dispatch. The triage
workflow is what the template deploys: the fan-in function starts the Step Functions state machine,
whose five steps are functions of 3,008 MB, the two map steps one invocation per shard (Distributed
Map, at most --concurrency at once). Each step's own time and peak RSS come from
bench/scale_bench.py's functions route (--scale; its largest incident). From those it prices 100k,
1M and 10M messages with AWS's list prices (below, us-east-1). Map steps take the same time per
shard at any size; the reduces are scaled from the measured run by the exponent bench/triage_bench.py
measured (bench-out/triage.json; 1.0 if absent), and their memory linearly, and the table says
whether that still fits in 3,008 MB.
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
PARSE_MB = 1769
STEP_MB = 3008  # every triage step function (infra/template.yaml)
FAN_IN_MB = 512
SFN_TRANSITION = 0.025 / 1000  # Step Functions standard workflows, per state transition
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
          exponent: float, snapshot_mb_per_msg: float, steps: dict[str, dict[str, float]],
          handlers_n: int | None = None) -> dict[str, object]:
    """One incident of n messages on the stack: shards, waves, every step's time and memory, dollars.

    `steps`: per step kind, its measured seconds and peak RSS (per shard for the maps) at measured_n;
    `measured`: the handlers' times at handlers_n messages (measured_n when not given), dispatch scaled from it.
    """
    shards = math.ceil(n / shard_size)
    t_shard = measured["parse_per_shard"]
    waves = math.ceil(shards / concurrency)
    scale = (n / measured_n) ** exponent
    t_dispatch = measured["dispatch"] * (n / (handlers_n or measured_n))
    t_blocklist = measured["blocklist"]
    step_rows, sfn_wall, step_gb_s, fits = {}, 0.0, 0.0, True
    # an idle worker's size (interpreter, libraries): what a step holds beyond it grows with the incident
    base = min(m["peak_rss_mb"] for m in steps.values()) if len(steps) > 1 else 0.0
    for step, m in steps.items():
        if step in ("facts", "verdicts"):  # one invocation per shard, at most `concurrency` at once
            secs, mb, calls = m["seconds"], m["peak_rss_mb"], shards
            wall = waves * secs
        else:
            secs, mb, calls = m["seconds"] * scale, base + (m["peak_rss_mb"] - base) * max(1.0, n / measured_n), 1
            wall = secs
        step_rows[step] = {"seconds": secs, "peak_rss_mb": mb, "invocations": calls}
        fits = fits and mb < STEP_MB * 0.9 and secs < LAMBDA_MAX_S * 0.8
        sfn_wall += wall
        step_gb_s += calls * secs * STEP_MB / 1024
    parse_gb_s = shards * t_shard * PARSE_MB / 1024
    dispatch_gb_s = t_dispatch * DISPATCH_MB / 1024
    fan_in_gb_s = shards * 0.5 * FAN_IN_MB / 1024  # one short listing per parsed shard's event
    lambda_usd = (parse_gb_s + step_gb_s + fan_in_gb_s + dispatch_gb_s + t_blocklist * 0.5) * LAMBDA_GB_S
    # parent: 5 states + the 2 maps' ends; each map item: a child execution of ~3 transitions
    transitions = 7 + 2 * shards * 3
    sfn_usd = transitions * SFN_TRANSITION
    invocations = shards + shards + 3 + 2 * shards + math.ceil(n / 400)
    parts = math.ceil(n / 400)
    requests_usd = invocations * LAMBDA_REQUEST + 4 * invocations * SQS_REQUEST + parts * 2 * SQS_FIFO_REQUEST
    objects = 6 * shards + 10 + parts  # per shard: its part, parsed shard, meta, facts, verdicts, markers
    s3_usd = objects * (S3_PUT + 3 * S3_GET) + n * snapshot_mb_per_msg * 3 / 1024 * S3_GB_MONTH
    wall = waves * t_shard + sfn_wall + t_blocklist + t_dispatch
    return {"messages": n, "shards": shards, "parallel_functions": min(shards, concurrency), "waves": waves,
            "parse_seconds_per_shard": t_shard, "steps": step_rows, "steps_fit_3008_mb": fits,
            "triage_wall_seconds": sfn_wall, "sfn_transitions": transitions,
            "dispatch_seconds": t_dispatch, "wall_seconds": wall, "lambda_gb_s": parse_gb_s + step_gb_s + dispatch_gb_s,
            "usd_compute": lambda_usd, "usd_step_functions": sfn_usd, "usd_requests": requests_usd,
            "usd_s3_month": s3_usd, "usd_total": lambda_usd + sfn_usd + requests_usd + s3_usd}


def _steps(path: Path, triage_seconds: float) -> tuple[dict[str, dict[str, float]], int | None, str]:
    """Per step kind: seconds (max over shards for the maps) and peak RSS, from scale_bench's biggest
    incident: its functions route, else its CLI route (the same step functions, in the same workers)."""
    try:
        every = json.loads(path.read_text())
        rows = [r for r in every if r["route"] == "functions"] or [r for r in every if r["route"] == "cli"]
        row = max(rows, key=lambda r: r["messages"])
    except (OSError, ValueError, KeyError):
        return ({"summary": {"seconds": triage_seconds, "peak_rss_mb": 0.0}}, None,
                f"no {path}: the whole triage counted as one step of unknown memory")
    out: dict[str, dict[str, float]] = {}
    for st in row["steps"]:
        m = out.setdefault(st["step"], {"seconds": 0.0, "peak_rss_mb": 0.0})
        m["seconds"] = max(m["seconds"], st["seconds"])
        m["peak_rss_mb"] = max(m["peak_rss_mb"], st["peak_rss_mb"])
    return out, int(row["messages"]), (f"steps measured by bench/scale_bench.py at {row['messages']:,} messages "
                                        f"({row['route']} route)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--shard-size", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=50, help="the parse function's reserved concurrency and "
                    "the Distributed Maps' MaxConcurrency")
    ap.add_argument("--scale", type=Path, default=ROOT / "bench-out" / "scale.json")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--reuse", type=Path, help="a --json of an earlier run: its measured times, not measured again")
    a = ap.parse_args()

    if a.reuse:
        measured = json.loads(a.reuse.read_text())["measured"]
    else:
        from bench.functions_e2e import run
        from pipeline.generator import find_corpus, load_corpus

        times = run(a.messages, a.shard_size, 1, load_corpus(find_corpus()))
        shards = math.ceil(a.messages / a.shard_size)
        measured = {"parse_per_shard": times["parse"] / shards, "triage": times["triage"],
                    "blocklist": times.get("blocklist", 0.0), "dispatch": times["approve+dispatch"],
                    "messages": a.messages}
    steps, steps_n, steps_why = _steps(a.scale, measured["triage"])
    ref = ROOT / "bench-out" / "incident100000.tar.gz"  # MB per message of a snapshot (stored thrice: in, parsed, out)
    snap_mb = ref.stat().st_size / 2**20 / 100_000 if ref.exists() else 0.002
    e, why = _exponent()
    print(f"\nmeasured here, one process per step ({a.messages:,} messages, shards of {a.shard_size:,}): "
          f"parse {measured['parse_per_shard']:.1f} s per shard, triage workflow {measured['triage']:.1f} s, "
          f"dispatch {measured['dispatch']:.1f} s, blocklists {measured['blocklist']:.1f} s; {steps_why}; {why}")
    for step, m in steps.items():
        print(f"  {step:<9} {m['seconds']:7.1f} s{' per shard' if step in ('facts', 'verdicts') else ''}, "
              f"peak RSS {m['peak_rss_mb']:,.0f} MB")
    handlers_n = measured.get("messages", a.messages)  # the handlers' run (a --reuse file's own size)
    rows = [model(n, measured, steps_n or handlers_n, a.shard_size, a.concurrency, e, snap_mb, steps, handlers_n)
            for n in (100_000, 1_000_000, 10_000_000)]
    heads = " | ".join(f"{r['messages']:,} messages" for r in rows)
    print(f"\n| | {heads} |\n|---|---|---|---|")

    def cell(r: dict, label: str) -> str:
        st = r["steps"]
        if label == "shards":
            return f"{r['shards']} ({r['parallel_functions']} at a time, {r['waves']} wave(s))"
        if label in st:
            m = st[label]
            per = " per shard" if label in ("facts", "verdicts") else ""
            return f"{m['seconds']:.0f} s{per}, {m['peak_rss_mb']:,.0f} MB"
        return ""

    lines = [("shards (parse functions, map items)", lambda r: cell(r, "shards")),
             ("parse, per shard (1,769 MB)", lambda r: f"{r['parse_seconds_per_shard']:.0f} s")]
    lines += [(f"triage {s} (3,008 MB)", lambda r, s=s: cell(r, s)) for s in steps]
    lines += [("every triage step within 3,008 MB and 720 s", lambda r: "yes" if r["steps_fit_3008_mb"] else "**no**"),
              ("triage workflow wall time", lambda r: f"{r['triage_wall_seconds']:.0f} s"),
              ("dispatch (10,240 MB)", lambda r: f"{r['dispatch_seconds']:.0f} s"),
              ("wall time, upload landed to instructions sent", lambda r: f"{r['wall_seconds']:.0f} s"),
              ("Lambda GB-s", lambda r: f"{r['lambda_gb_s']:,.0f}"),
              ("compute $", lambda r: f"${r['usd_compute']:.3f}"),
              ("Step Functions $ (state transitions)", lambda r: f"${r['usd_step_functions']:.4f} "
                                                                f"({r['sfn_transitions']:,})"),
              ("requests $", lambda r: f"${r['usd_requests']:.4f}"),
              ("S3 for a month $", lambda r: f"${r['usd_s3_month']:.3f}"),
              ("total $", lambda r: f"${r['usd_total']:.2f}")]
    for label, f in lines:
        print(f"| {label} | {' | '.join(f(r) for r in rows)} |")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"measured": measured, "steps": steps, "exponent": e, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
