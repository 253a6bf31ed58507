"""Peak RSS of every process and time per stage and per triage step, on the CLI and through the functions runner.

    python3 bench/scale_bench.py --messages 100000 [--messages 20000] [--workers 2] [--shard-size 20000]
                                 [--route cli --route functions] [--corpus DIR] [--json FILE]

Each route runs in a process of its own (so one route's memory is not the other's):
  cli        `spoolsweep triage` on a big snapshot: parsed shard by shard into a temporary store, then the
             triage workflow (adapters/workflow.py) with its steps on a pool of --workers processes;
  functions  the embedded default: upload (cut into shards) -> the parse handler per shard -> the triage
             handler (fan-in) running the same workflow on the pool -> the blocklist handler.
Before the routes, the floor of the same snapshot (bench/floor.py: every member read as triage reads it and
hashed, one process, nothing parsed; --no-floor skips it); each route's time is printed over it too. The
machine's speed changes from hour to hour (a third within minutes): that ratio compares across runs,
messages/s alone does not.
Peak RSS per process: the route's own process from its VmHWM (bench/rss.py); each triage step's from its worker's
/proc/self/status VmHWM, counted again from zero before every step (/proc/self/clear_refs), so a step's
figure is its own; every other child (the parse pools) sampled from /proc/<pid>/status every 0.1 s
(VmHWM only grows, so a sample is at most 0.1 s behind the peak). The machine is shared: times are noisy,
compare ratios measured in the same run. Each route prints the SHA-256 of every file of its manifest; when
both ran on one incident, the benchmark says how many message parts are the same bytes and which top-level
fields of manifest.json differ (the summary names the files the shards came from and the policy's source).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.child import result, run_child  # noqa: E402
from bench.rss import peak_rss_mb  # noqa: E402


def _descendants(pid: int) -> list[int]:
    """Every process under pid, from /proc/<pid>/stat's parent ids."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


class Sampler:
    """Every descendant's VmHWM, sampled: pid -> (peak MB, what it is)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.peaks: dict[int, tuple[float, str]] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        me = os.getpid()
        while not self._stop.wait(interval):
            for pid in _descendants(me):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:  # gone between the listing and the read
                    continue
                hwm = next((int(line.split()[1]) / 1024 for line in status.splitlines()
                            if line.startswith("VmHWM:")), 0.0)
                name = ("parse pool worker (a fork of the route's process)" if "--child" in cmd else
                        "forkserver" if "forkserver" in cmd else "resource tracker" if "resource_tracker" in cmd
                        else cmd[:60])
                old = self.peaks.get(pid, (0.0, name))
                self.peaks[pid] = (max(old[0], hwm), old[1] if not cmd.strip() else name)  # an exiting one has none

    def __enter__(self) -> Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def _steps(runs: list) -> list[dict]:
    return [{"step": r.step, "shard": r.shard, "pid": r.pid, "seconds": round(r.seconds, 2),
             "cpu_seconds": round(getattr(r, "cpu_seconds", None) or 0, 2),
             "peak_rss_mb": round(r.peak_rss_mb or 0, 1), "resumed": r.resumed} for r in runs]


def _cpu() -> float:
    """CPU seconds (user + system) of this process and of its children waited for (the parse pool)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def route_cli(snap: Path, n: int, shard_size: int, workers: int) -> dict:
    import tomllib

    from adapters.workflow import StepRun, run_locally, spill_snapshot
    from pipeline.generator import POLICY_TOML
    from pipeline.policy import policy_from_dict
    from pipeline.store import LocalStore

    policy = policy_from_dict(tomllib.loads(POLICY_TOML), source="bench")
    times: dict[str, float] = {}
    runs: list[StepRun] = []
    with tempfile.TemporaryDirectory(prefix="spoolsweep-scale-") as tmp, Sampler() as sampler:
        store = LocalStore(tmp)
        t0, c0 = time.perf_counter(), _cpu()
        total = spill_snapshot(store, snap, policy, None, "bench", shard_size, workers)
        times["parse (into shards)"] = time.perf_counter() - t0
        cpu = {"parse (route + parse pool)": _cpu() - c0}
        t = time.perf_counter()
        run_locally(store, "bench", None, workers=workers, isolate=True, direct=(policy, "bench"),
                    on_step=runs.append)
        times["triage workflow"] = time.perf_counter() - t
        times["total"] = time.perf_counter() - t0
        digests, fields, size = _manifest_digests(store)
    assert total == n, total
    return {"times": times, "cpu": cpu, "steps": _steps(runs), "children": sampler.peaks, "manifest_bytes": size,
            "manifest_sha256": digests, "summary_fields_sha256": fields}


def _manifest_digests(store: object) -> tuple[dict[str, str], dict[str, str], int]:
    """The SHA-256 of manifest.json and of every part (two runs, two versions or two routes, wrote the same
    manifest exactly when these are equal); of each top-level field of manifest.json, as canonical JSON (where
    two routes' summaries differ, which fields do: where the policy came from, say, and not a verdict), and of
    the policy's values alone ("policy values"); and manifest.json's size. Each file is read once."""
    import hashlib

    from pipeline import queues

    key = queues.manifest_key("bench")
    base = key.rsplit("/", 1)[0] + "/"
    files = {k: store.get(k) for k in sorted(store.list(base))}  # type: ignore[attr-defined]
    summary = files[key]
    top = json.loads(summary)
    # the policy's values apart from where it came from (a file on the CLI, the store's on the functions route)
    top["policy values"] = {k: v for k, v in top.get("policy", {}).items() if k not in ("source", "origins")}
    fields = {k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest() for k, v in top.items()}
    return {k[len(base):]: hashlib.sha256(data).hexdigest() for k, data in files.items()}, fields, len(summary)


def route_functions(snap: Path, n: int, shard_size: int, workers: int) -> dict:
    from adapters.bootstrap import embedded_settings
    from adapters.runtime import LocalRunner
    from adapters.workflow import StepRun
    from pipeline.generator import POLICY_TOML, SERVER_NAME
    from pipeline.service import incidents
    from pipeline.store import LocalStore

    times: dict[str, float] = {}
    runs: list[StepRun] = []
    import adapters.workflow as wf

    real = wf.run_locally

    def watched(*a, **kw):  # the triage handler's run, with each step's figures kept for this report
        kw["on_step"] = runs.append
        return real(*a, **kw)

    wf.run_locally = watched
    with tempfile.TemporaryDirectory(prefix="spoolsweep-scale-") as tmp, Sampler() as sampler:
        root = Path(tmp) / "home"
        incidents.keys_init(root)
        store = LocalStore(root)
        incidents.put_policy(store, POLICY_TOML.encode())
        t0 = time.perf_counter()
        # uploaded under the host the snapshot names, as its agent would name itself
        incidents.upload(store, snap, "bench", SERVER_NAME, shard_size=shard_size)
        times["upload (cut into shards)"] = time.perf_counter() - t0
        runner = LocalRunner(root, settle=0, settings=embedded_settings(root, workers))
        runner.run_until_idle(timeout=7200)
        times |= {f"{s} handler(s)": runner.timings.get(s, 0.0) for s in ("parse", "triage", "blocklist")}
        times["total"] = time.perf_counter() - t0
        assert not runner.dead(), runner.dead()
        digests, fields, size = _manifest_digests(store)
    return {"times": times, "steps": _steps(runs), "children": sampler.peaks, "manifest_bytes": size,
            "manifest_sha256": digests, "summary_fields_sha256": fields}


def child(route: str, snap: Path, n: int, shard_size: int, workers: int) -> None:
    if route == "floor":  # bench/floor.py, in a process of its own as the routes are
        from bench.floor import read_and_hash

        result({"seconds": read_and_hash(snap)[1]})
        return
    fn = route_cli if route == "cli" else route_functions
    out = fn(snap, n, shard_size, workers)
    out["self_peak_rss_mb"] = peak_rss_mb()  # (bench/rss.py: not ru_maxrss, which a big parent inflates)
    out["self_pid"] = os.getpid()
    result(out)


def report(route: str, n: int, r: dict, floor: float | None = None) -> dict:
    print(f"\n== {route}: {n:,} messages ==")
    for stage, s in r["times"].items():
        print(f"  {stage:<28} {s:8.1f} s")
    print(f"  {'throughput':<28} {n / r['times']['total']:8,.0f} messages/s")
    if floor:
        print(f"  {'over the floor':<28} {r['times']['total'] / floor:8.1f} ×")
    # what a shared machine's load changes least
    for stage, s in r.get("cpu", {}).items():
        print(f"  CPU {stage:<24} {s:8.1f} s")
    by_step: dict[str, list[dict]] = defaultdict(list)
    for s in r["steps"]:
        by_step[s["step"]].append(s)
    print(f"  {'step':<10} {'runs':>5} {'sum s':>8} {'max s':>7} {'CPU s':>8} {'max peak RSS MB':>16}")
    for step, rows in by_step.items():
        print(f"  {step:<10} {len(rows):>5} {sum(x['seconds'] for x in rows):8.1f} "
              f"{max(x['seconds'] for x in rows):7.1f} {sum(x.get('cpu_seconds', 0) for x in rows):8.1f} "
              f"{max(x['peak_rss_mb'] for x in rows):16,.0f}")
    procs: dict[int, tuple[float, str]] = {int(k): tuple(v) for k, v in r["children"].items()}
    for s in r["steps"]:
        old = procs.get(s["pid"], (0.0, "workflow step worker"))
        procs[s["pid"]] = (max(old[0], s["peak_rss_mb"]), "workflow step worker")
    print(f"  peak RSS of every process: route process {r['self_peak_rss_mb']:,.0f} MB (pid {r['self_pid']})")
    kinds: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for pid, (mb, what) in procs.items():
        kinds[what].append((mb, pid))
    for what, peaks in sorted(kinds.items(), key=lambda kv: -max(kv[1])[0]):
        if len(peaks) > 4:  # the functions route's parse pools, two a shard: how many, and their range
            (lo, _), (hi, top) = min(peaks), max(peaks)
            print(f"    {len(peaks)} × {what}: {lo:,.0f}–{hi:,.0f} MB (the largest pid {top})")
            continue
        for mb, pid in sorted(peaks, reverse=True):
            print(f"    pid {pid:<8} {mb:8,.0f} MB  {what}")
    peak = max([r["self_peak_rss_mb"]] + [mb for mb, _ in procs.values()])
    print(f"  largest process {peak:,.0f} MB; manifest {r['manifest_bytes'] / 2**20:,.1f} MiB")
    for name, digest in r.get("manifest_sha256", {}).items():
        print(f"    sha256 {digest[:16]}  {name}")
    return {"route": route, "messages": n, "times": r["times"], "floor_seconds": floor, "steps": r["steps"],
            "process_peaks_mb": {str(k): v[0] for k, v in procs.items()}, "self_peak_rss_mb": r["self_peak_rss_mb"],
            "largest_process_mb": peak, "manifest_sha256": r.get("manifest_sha256", {}),
            "summary_fields_sha256": r.get("summary_fields_sha256", {})}


def compare_routes(rows: list[dict]) -> None:
    """Whether the routes of one size wrote the same manifest: its message parts, and manifest.json field by field."""
    first, *rest = rows
    for other in rest:
        a, b = first["manifest_sha256"], other["manifest_sha256"]
        parts = sorted(k for k in a.keys() | b.keys() if k != "manifest.json")
        same = [k for k in parts if a.get(k) == b.get(k)]
        fa, fb = first["summary_fields_sha256"], other["summary_fields_sha256"]
        differ = sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
        if "policy" in differ and "policy values" not in differ:
            differ[differ.index("policy")] = "policy (where it came from; its values are the same)"
        print(f"\n{first['route']} and {other['route']}, {first['messages']:,} messages: "
              f"{len(same)} of {len(parts)} message parts the same bytes; manifest.json "
              + ("the same bytes" if a.get("manifest.json") == b.get("manifest.json")
                 else f"differs in {', '.join(differ) or 'its layout only'}"))


def _in_child(route: str, snap: Path, n: int, shard_size: int, workers: int) -> dict | None:
    """`child` run in a process of its own (bench/child.py): its result, or None (said why)."""
    out, why = run_child(__file__, ["--child", route, str(snap), "--messages", str(n),
                                    "--shard-size", str(shard_size), "--workers", str(workers)])
    if out is None:
        print(f"{route} failed ({why})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, action="append", help="incident size (repeatable; default 100000)")
    ap.add_argument("--route", action="append", choices=["cli", "functions"], help="default: both")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--shard-size", type=int, default=20000)
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-floor", action="store_true", help="skip the read + SHA-256 floor of each snapshot")
    ap.add_argument("--child", nargs=2, metavar=("ROUTE", "SNAPSHOT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        route, snap = a.child
        child(route, Path(snap), (a.messages or [0])[0], a.shard_size, a.workers)
        return
    from pipeline.generator import find_corpus, iter_incident, load_corpus, write_canonical

    corpus = load_corpus(find_corpus(a.corpus))
    print(f"cores: {os.cpu_count()}, workers: {a.workers}, shards of {a.shard_size:,}; the machine is shared: "
          "times are noisy")
    rows = []
    with tempfile.TemporaryDirectory(prefix="spoolsweep-scale-snap-") as tmp:
        for n in a.messages or [100_000]:
            snap = Path(tmp) / f"bench{n}.tar.zst"
            t = time.perf_counter()
            write_canonical(iter_incident(*corpus, n=n, seed=1), snap)  # streamed: a million fit in no memory
            print(f"\n{n:,} messages generated in {time.perf_counter() - t:.0f} s (not counted), "
                  f"{snap.stat().st_size / 2**20:,.0f} MiB")
            done = []
            floor = None if a.no_floor else (_in_child("floor", snap, n, a.shard_size, a.workers) or {}).get("seconds")
            if floor:
                print(f"  floor (read + SHA-256, one process: bench/floor.py): {floor:.1f} s, "
                      f"{n / floor:,.0f} messages/s")
            for route in a.route or ["cli", "functions"]:
                if (result := _in_child(route, snap, n, a.shard_size, a.workers)) is None:
                    continue
                rows.append(report(route, n, result, floor))
                done.append(rows[-1])
                if a.json:  # after every route: a long run cut short keeps what it measured
                    a.json.parent.mkdir(parents=True, exist_ok=True)
                    a.json.write_text(json.dumps(rows, indent=1))
            if len(done) > 1:
                compare_routes(done)


if __name__ == "__main__":
    main()
