"""The triage workflow: its Step Functions definition (infra/template.yaml holds the same) and a runner of it here.

    Plan -> Facts (map over the shards) -> Decide -> Verdicts (map over the shards) -> Summary

On AWS the state machine runs it: each Task invokes one step's function (functions/triage_<step>.py), and
the two Distributed Maps fan out over the shards `plan` names. On one machine (`spoolsweep up`, the
queues runner, the CLI on a big snapshot) `run_locally` interprets the same definition: the map items in
parallel, every step in a worker process of a pool (so the parent holds nothing of the incident and each
step's peak memory is its own), and every finished step journaled in the store, so a restart resumes
where it stopped. The interpreter knows only what the definition uses: Task (lambda:invoke), Map, Pass,
Parameters/ItemSelector with `.$` paths, ResultSelector, ResultPath and Next/End.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from adapters import names
from pipeline import queues
from pipeline.errors import SpoolsweepError
from pipeline.store import Store

LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
# shards a map runs at once on AWS (the map steps' reserved concurrency is the same)
MAX_CONCURRENCY = 50
# Lambda's own transient failures, retried with backoff; an error of the step itself is not retried
RETRY = [{"ErrorEquals": ["Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
                          "Lambda.TooManyRequestsException"],
          "IntervalSeconds": 2, "MaxAttempts": 6, "BackoffRate": 2, "JitterStrategy": "FULL"}]


class WorkflowError(SpoolsweepError):
    """The triage workflow failed:"""


def _task(step: str, payload: dict, **rest: Any) -> dict:
    return {"Type": "Task", "Resource": LAMBDA_INVOKE,
            "Parameters": {"FunctionName": f"${{{names.triage_step_resource(step)}}}", "Payload": payload},
            "Retry": RETRY, **rest}


def _map(step: str, nxt: str) -> dict:
    return {"Type": "Map", "Label": step.capitalize(), "ItemsPath": "$.plan.shards",
            "ItemSelector": {"incident.$": "$.incident", "shard.$": "$$.Map.Item.Value"},
            "MaxConcurrency": MAX_CONCURRENCY,
            "ItemProcessor": {
                "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                "StartAt": f"{step.capitalize()}OfShard",
                "States": {f"{step.capitalize()}OfShard": _task(
                    step, {"incident.$": "$.incident", "shard.$": "$.shard"},
                    ResultSelector={"message.$": "$.Payload.message"}, End=True)}},
            "ResultPath": None, "Next": nxt}


def definition() -> dict:
    """The state machine's definition (JSONPath); `${TriageXFunction}` stands for a step function's ARN."""
    reduce_in = {"incident.$": "$.incident"}
    return {
        "Comment": "spoolsweep triage of one incident: plan, facts per shard, decide, verdicts per shard, summary",
        "StartAt": "Plan",
        "States": {
            "Plan": _task("plan", reduce_in, ResultSelector={"shards.$": "$.Payload.shards"}, ResultPath="$.plan",
                          Next="Facts"),
            "Facts": _map("facts", "Decide"),
            "Decide": _task("decide", reduce_in, ResultPath=None, Next="Verdicts"),
            "Verdicts": _map("verdicts", "Summary"),
            "Summary": _task("summary", reduce_in, ResultSelector={"message.$": "$.Payload.message",
                                                                   "count.$": "$.Payload.count"},
                             ResultPath="$.summary", End=True),
        },
    }


def step_of(function: str) -> str:
    """The step whose function a Task names (`${TriageFactsFunction}`, or an ARN/name ending in -triage-facts)."""
    for step in names.TRIAGE_STEPS:
        if function in (f"${{{names.triage_step_resource(step)}}}", names.triage_step_function(step)) \
                or function.endswith(f"-triage-{step}"):
            return step
    raise WorkflowError(f"no triage step runs {function!r}")


# ---- the states-language checks the runner makes before running (cfn-lint's schema checks the rest) --

_TYPES = {"Task", "Map", "Pass", "Choice", "Wait", "Succeed", "Fail", "Parallel"}


def lint(machine: Mapping[str, Any], where: str = "") -> list[str]:
    """What is wrong with a definition that a schema cannot see: dangling or missing Next, unreachable or
    unending states, paths that are not paths, a Map's processor and retry fields; [] if nothing."""
    bad: list[str] = []
    states = machine.get("States") or {}
    if machine.get("StartAt") not in states:
        bad.append(f"{where}StartAt {machine.get('StartAt')!r} is not a state")
    for name, st in states.items():
        at = f"{where}{name}: "
        if len(name) > 80:
            bad.append(f"{at}a state name is at most 80 characters")
        kind = st.get("Type")
        if kind not in _TYPES:
            bad.append(f"{at}unknown Type {kind!r}")
            continue
        if kind not in ("Choice", "Succeed", "Fail"):
            if bool(st.get("End")) == ("Next" in st):
                bad.append(f"{at}needs exactly one of Next and End")
            if "Next" in st and st["Next"] not in states:
                bad.append(f"{at}Next {st['Next']!r} is not a state")
        for key in ("ItemsPath", "InputPath", "OutputPath", "ResultPath"):
            if st.get(key) is not None and not str(st[key]).startswith("$"):
                bad.append(f"{at}{key} {st[key]!r} is not a path")
        for key in ("Parameters", "ItemSelector", "ResultSelector"):
            bad += [f"{at}{key}: {p}" for p in _lint_template(st.get(key))]
        for r in st.get("Retry", []):
            if not r.get("ErrorEquals") or r.get("BackoffRate", 2) < 1 or r.get("MaxAttempts", 3) < 0 \
                    or r.get("IntervalSeconds", 1) < 1 or r.get("JitterStrategy", "NONE") not in ("FULL", "NONE"):
                bad.append(f"{at}bad Retry {r}")
        if kind == "Task" and not str(st.get("Resource", "")).startswith("arn:"):
            bad.append(f"{at}Resource is not an ARN")
        if kind == "Map":
            proc = st.get("ItemProcessor") or {}
            conf = proc.get("ProcessorConfig", {})
            if conf.get("Mode", "INLINE") not in ("INLINE", "DISTRIBUTED"):
                bad.append(f"{at}ProcessorConfig Mode {conf.get('Mode')!r}")
            if conf.get("Mode") == "DISTRIBUTED" and conf.get("ExecutionType") not in ("STANDARD", "EXPRESS"):
                bad.append(f"{at}a Distributed Map needs ExecutionType STANDARD or EXPRESS")
            if len(st.get("Label", "")) > 40:
                bad.append(f"{at}Label is at most 40 characters")
            bad += lint(proc, f"{at}")
    seen, todo = set(), [machine.get("StartAt")]
    while todo:
        name = todo.pop()
        if name in seen or name not in states:
            continue
        seen.add(name)
        st = states[name]
        todo += [st.get("Next"), st.get("Default")] + [c.get("Next") for c in st.get("Choices", [])]
    bad += [f"{where}{n}: not reachable from StartAt" for n in states if n not in seen]
    return bad


def _lint_template(t: Any) -> list[str]:
    if isinstance(t, dict):
        return [p for k, v in t.items() for p in
                ([f"{k} {v!r} is not a path"] if k.endswith(".$") and not str(v).startswith("$")
                 else _lint_template(v))]
    return []


# ---- the interpreter -----------------------------------------------------------------------------

def path(doc: Any, expr: str, ctx: Mapping[str, Any] | None = None) -> Any:
    """A reference path: `$`, `$.a.b`, or `$$.a.b` (the context object)."""
    if expr.startswith("$$"):
        doc, expr = ctx or {}, expr[1:]
    if expr == "$":
        return doc
    if not expr.startswith("$."):
        raise WorkflowError(f"path {expr!r} is not a reference path")
    for part in expr[2:].split("."):
        if not isinstance(doc, dict) or part not in doc:
            raise WorkflowError(f"path {expr!r} is not in the state's input")
        doc = doc[part]
    return doc


def resolve(template: Any, doc: Any, ctx: Mapping[str, Any] | None = None) -> Any:
    """Parameters, ItemSelector or ResultSelector applied: a `key.$` takes the value at its path."""
    if isinstance(template, dict):
        return {(k[:-2] if k.endswith(".$") else k): (path(doc, v, ctx) if k.endswith(".$") else resolve(v, doc, ctx))
                for k, v in template.items()}
    if isinstance(template, list):
        return [resolve(v, doc, ctx) for v in template]
    return template


def _put_result(doc: Any, result: Any, result_path: str | None) -> Any:
    if result_path is None:
        return doc
    if result_path == "$":
        return result
    out = dict(doc)
    parts = result_path[2:].split(".")
    target = out
    for p in parts[:-1]:
        target[p] = dict(target.get(p, {}))
        target = target[p]
    target[parts[-1]] = result
    return out


Call = Callable[[str, dict], dict]


@dataclass
class Interpreter:
    """Runs a definition: `call(function, payload)` stands for Lambda; a Map's items run `parallel` at once."""

    call: Call
    parallel: int = 1
    visited: list[str] = field(default_factory=list)  # the states entered, in order (the tests read it)

    def run(self, machine: Mapping[str, Any], doc: Any, ctx: Mapping[str, Any] | None = None) -> Any:
        states = machine["States"]
        name = machine["StartAt"]
        while True:
            if name not in states:
                raise WorkflowError(f"state {name!r} is not defined")
            st = states[name]
            self.visited.append(name)
            doc = self._state(name, st, doc, ctx)
            if st.get("End") or st["Type"] in ("Succeed", "Fail"):
                return doc
            name = st["Next"]

    def _state(self, name: str, st: Mapping[str, Any], doc: Any, ctx: Mapping[str, Any] | None) -> Any:
        kind = st["Type"]
        if kind == "Pass":
            passed = resolve(st["Parameters"], doc, ctx) if "Parameters" in st else st.get("Result", doc)
            return _put_result(doc, passed, st.get("ResultPath", "$"))
        if kind == "Task":
            if st["Resource"] != LAMBDA_INVOKE:
                raise WorkflowError(f"state {name}: only {LAMBDA_INVOKE} tasks run here, not {st['Resource']}")
            params = resolve(st["Parameters"], doc, ctx)
            result: Any = {"StatusCode": 200, "Payload": self.call(params["FunctionName"], params["Payload"])}
        elif kind == "Map":
            items = path(doc, st.get("ItemsPath", "$"), ctx)
            if not isinstance(items, list):
                raise WorkflowError(f"state {name}: {st.get('ItemsPath')} is not a list")
            inner = st["ItemProcessor"]
            inputs = [resolve(st["ItemSelector"], doc, {**(ctx or {}), "Map": {"Item": {"Index": i, "Value": v}}})
                      if "ItemSelector" in st else v for i, v in enumerate(items)]
            with ThreadPoolExecutor(max_workers=max(1, min(self.parallel, st.get("MaxConcurrency") or 10**6))) as ex:
                result = list(ex.map(lambda x: Interpreter(self.call, self.parallel).run(inner, x), inputs))
            self.visited.extend(f"{name}/{s}" for s in inner["States"])
        elif kind == "Fail":
            raise WorkflowError(f"state {name}: {st.get('Error', 'failed')}: {st.get('Cause', '')}")
        elif kind == "Succeed":
            return doc
        else:
            raise WorkflowError(f"state {name}: type {kind} is not run here")
        if "ResultSelector" in st:
            result = resolve(st["ResultSelector"], result, ctx)
        return _put_result(doc, result, st.get("ResultPath", "$"))


# ---- on one machine: every step in a pool worker, journaled in the store --------------------------

@dataclass
class StepRun:
    """One step's run in a worker: where, how long, and the worker's peak RSS during it."""

    step: str
    shard: str | None
    pid: int
    seconds: float
    peak_rss_mb: float | None
    resumed: bool = False
    cpu_seconds: float | None = None  # the worker's CPU time during the step (user + system)


@dataclass
class WorkflowRun:
    incident: str
    output: dict
    steps: list[StepRun]
    seconds: float

    def summary(self) -> str:
        return str(self.output.get("summary", {}).get("message", ""))


def _journal_key(incident: str, step: str, shard: str | None) -> str:
    return queues.workflow_journal_key(incident, step, shard)


_WORKER_HANDLERS: dict[str, Callable[[dict, Any], dict]] = {}


def _peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> None:
    """Start this process's peak-RSS count again (Linux: writing 5 to clear_refs), so the next step's is its own."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass


def call_step(step: str, settings: Mapping[str, object], payload: dict, worker: bool = True) -> tuple[dict, dict]:
    """Run one step's handler in this (worker) process: its output, and how long and how big it was.

    In a worker the peak-RSS count starts again first, so the figure is this step's own.
    """
    from adapters.runtime import LocalContext

    cache = f"{step}\n{json.dumps(settings, sort_keys=True, default=str)}"
    handler = _WORKER_HANDLERS.get(cache)
    if handler is None:
        import importlib

        handler = importlib.import_module(names.TRIAGE_STEPS[step]).handler.configured(**settings)
        _WORKER_HANDLERS[cache] = handler
    if worker:
        _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    out = handler(payload, LocalContext(function_name=names.triage_step_function(step), memory_limit_in_mb=3008))
    return out, {"pid": os.getpid(), "seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(),
                 "cpu_seconds": time.process_time() - c0}


def call_run_step(root: str, step: str, payload: dict, policy: Any, policy_source: str | None,
                  worker: bool = True) -> tuple[dict, dict]:
    """Run one step straight through the service (no handler): the CLI's route, with its own policy object."""
    from pipeline.service.triage import run_step
    from pipeline.store import LocalStore

    if worker:
        _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    out = run_step(step, LocalStore(root), payload["incident"], payload.get("shard"), policy, policy_source)
    return out.model_dump(mode="json"), {"pid": os.getpid(), "seconds": time.perf_counter() - t0,
                                         "peak_rss_mb": _peak_rss_mb(), "cpu_seconds": time.process_time() - c0}


def _pool(workers: int) -> ProcessPoolExecutor:
    # not fork: the map's threads are running when the pool starts its workers
    method = "forkserver" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def run_locally(store: Store, incident: str, settings: Mapping[str, object] | None, workers: int = 1,
                pool: ProcessPoolExecutor | None = None, isolate: bool | None = None,
                on_step: Callable[[StepRun], None] | None = None,
                direct: tuple[Any, str | None] | None = None) -> WorkflowRun:
    """Run the triage workflow of an incident here: the definition the state machine runs, steps on a pool.

    Each finished step's output is journaled under the incident's state/ before the next one starts, so a
    second run (a restart, a duplicated event) skips what is done and redoes only the rest. The steps run
    in worker processes when there are several workers (or `isolate`), else in this process. Each step is
    its function's handler built with `settings`, or, with `direct=(policy, policy_source)` and a store
    folder, the service's run_step itself (the CLI, whose policy is a file of its own).
    """
    from pipeline.store import LocalStore

    if direct is not None and not isinstance(store, LocalStore):
        raise WorkflowError("run_step straight through the service needs a store folder")
    root = str(store.root) if isinstance(store, LocalStore) else ""
    runs: list[StepRun] = []
    isolate = workers > 1 or pool is not None if isolate is None else isolate
    owned = pool is None and isolate
    ex = pool or (_pool(max(1, workers)) if isolate else None)

    def call(function: str, payload: dict) -> dict:
        step = step_of(function)
        shard = payload.get("shard")
        key = _journal_key(incident, step, shard)
        if store.exists(key):
            done = json.loads(store.get(key))
            run = StepRun(step, shard, os.getpid(), 0.0, None, resumed=True)
        else:
            if direct is not None:
                args: tuple = (call_run_step, root, step, payload, *direct)
            else:
                args = (call_step, step, dict(settings or {}), payload)
            if ex is None:
                done, stats = args[0](*args[1:], worker=False)
            else:
                fut: Future = ex.submit(*args)
                done, stats = fut.result()
            store.put(key, json.dumps(done, sort_keys=True).encode())
            run = StepRun(step, shard, stats["pid"], stats["seconds"], stats["peak_rss_mb"],
                          cpu_seconds=stats.get("cpu_seconds"))
        runs.append(run)
        if on_step:
            on_step(run)
        return done

    machine = definition()
    if problems := lint(machine):
        raise WorkflowError("; ".join(problems))
    t0 = time.perf_counter()
    try:
        output = Interpreter(call, parallel=max(1, workers)).run(machine, {"incident": incident})
    finally:
        if owned and ex is not None:
            ex.shutdown()
    return WorkflowRun(incident, output, runs, time.perf_counter() - t0)


# ---- the CLI on a big snapshot: parsed shard by shard into a store, then the same workflow -----------

def spill_snapshot(store: Store, source: Any, policy: Any, fmt: str | None, incident: str, shard_size: int,
                   workers: int | None = None, progress: Callable[[str, int, int | None], None] | None = None) -> int:
    """Parse a snapshot into parsed shards of at most shard_size messages in the store; how many messages.

    The parser processes parse chunks and write the shards' Parquet files (pipeline.service.parse.
    parse_into_shards): this process only reads the snapshot and hands them out. Every shard's metadata
    names the snapshot itself (its file name, format and digest), as if it had been uploaded whole, so
    the manifest says what was read.
    """
    import re
    import tempfile
    from pathlib import Path

    from pipeline.archive import ArchiveReport
    from pipeline.readers import read_snapshot
    from pipeline.service.parse import parse_into_shards, write_shard
    from pipeline.shards import ShardMeta
    from pipeline.sitepolicy import site_of
    from pipeline.triage import check_read, parse_pool

    progress = progress or (lambda stage, done, total: None)
    report = ArchiveReport()
    with tempfile.TemporaryDirectory(prefix="spoolsweep-spill-") as tmp:
        with parse_pool(source, workers) as pool:
            name, found, report = read_snapshot(source, policy.limits, fmt=fmt, report=report)
            parts = parse_into_shards(found, policy, shard_size, Path(tmp), pool,
                                      workers if workers is not None else (os.cpu_count() or 1), progress)
        total = sum(count for _, count in parts)
        check_read(name, fmt, range(total), report)
        host = str(report.meta.get("host") or "")  # a spool names none: the manifest names none, as read whole
        base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(source).name).lstrip("._-") or "snapshot"
        n = max(1, len(parts))
        if not parts:
            empty = Path(tmp) / "empty.parquet"
            write_shard(([], str(empty)))
            parts.append((empty, 0))
        for i, (path, count) in enumerate(parts, 1):
            shard = queues.check_name("shard", f"{host or 'local'}.{base}"[:100] + f".part-{i:04d}-of-{n:04d}")
            last = i == n  # the snapshot's counts and defects are told once
            meta = ShardMeta(incident=incident, host=host, source=Path(source).name, shard=shard, part=i, parts=n,
                             format=name, sha256=report.sha256, members_read=report.members if last else 0,
                             messages=count, skipped=report.skipped if last else [],
                             defects=report.defects if last else [], site=site_of(report.meta))
            store.put(queues.shard_meta_key(incident, shard), meta.model_dump_json().encode())
            store.put(queues.parsed_key(incident, shard), path.read_bytes())
    return total
