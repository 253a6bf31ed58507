"""Triage a snapshot: read, parse, group campaigns, decide, and assemble the manifest."""

from __future__ import annotations

import gc
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from pipeline.archive import ArchiveReport
from pipeline.models import (
    Manifest,
    ParsedRecord,
    PolicyInfo,
    SnapshotInfo,
    message_id,
)
from pipeline.parse import parse_found
from pipeline.policy import SitePolicy
from pipeline.readers import read_snapshot
from pipeline.readers.base import Found
from pipeline.sitepolicy import effective_policy, site_of
from pipeline.verdicts import (
    resolve_origin,
)

Progress = Callable[[str, int, int | None], None]
_PARALLEL_BYTES = 2 << 20  # a snapshot this big (a thousand messages or so) is parsed on every core
_CHUNK = 256


def _noop(stage: str, done: int, total: int | None) -> None:
    pass


def _parse_chunk(args: tuple[list[Found], SitePolicy]) -> list[ParsedRecord]:
    chunk, policy = args
    return [parse_found(f, policy) for f in chunk]


def _chunks(it: Iterable[Found], n: int) -> Iterator[list[Found]]:
    buf: list[Found] = []
    for f in it:
        buf.append(f)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


def parse_all(found: Iterable[Found], policy: SitePolicy, progress: Progress = _noop,
              workers: int | None = None, pool: ProcessPoolExecutor | None = None) -> list[ParsedRecord]:
    """Parse every message, on every core when the queue is big enough to pay for it.

    `pool`: worker processes started before the snapshot was opened (see `parse_pool`); without
    one, they are started once the first chunk shows the queue is big enough."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    out: list[ParsedRecord] = []
    chunks = _chunks(found, _CHUNK)
    if pool is not None:
        _parse_in(pool, chunks, policy, out, progress, workers)
        return out
    first = next(chunks, [])
    out.extend(_parse_chunk((first, policy)))
    progress("parse", len(out), None)
    if len(first) < _CHUNK:
        return out
    if workers <= 1:
        for ch in chunks:
            out.extend(_parse_chunk((ch, policy)))
            progress("parse", len(out), None)
        return out
    with ProcessPoolExecutor(max_workers=workers) as ex:
        _parse_in(ex, chunks, policy, out, progress, workers)
    return out


def _parse_in(ex: ProcessPoolExecutor, chunks: Iterator[list[Found]], policy: SitePolicy, out: list[ParsedRecord],
              progress: Progress, workers: int) -> None:
    # a bounded window of chunks in flight keeps memory flat however large the queue is
    window: deque[Future[list[ParsedRecord]]] = deque()
    for ch in chunks:
        window.append(ex.submit(_parse_chunk, (ch, policy)))
        if len(window) >= 4 * workers:
            out.extend(window.popleft().result())
            progress("parse", len(out), None)
    while window:
        out.extend(window.popleft().result())
        progress("parse", len(out), None)


def _ready() -> None:
    pass


@contextmanager
def parse_pool(source: str | Path, workers: int | None) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes for a big snapshot, started before it is opened: forked from a small parent,
    each stays small (forked later, each would map the snapshot's index and the first chunks too)."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    src = Path(source)
    try:
        big = src.is_file() and src.stat().st_size >= _PARALLEL_BYTES
    except OSError:
        big = False
    if workers <= 1 or not big:
        yield None
        return
    with ProcessPoolExecutor(max_workers=workers) as ex:
        for f in [ex.submit(_ready) for _ in range(workers)]:
            f.result()
        yield ex


DUPLICATE = "duplicate member name in archive"


def prepare(records: list[ParsedRecord]) -> None:
    """Put records in one order whatever order the archive stored them in (path, then digest), so the
    verdicts cannot depend on member order; flag every copy of a name stored more than once (the
    archive walk can only flag the later ones); give each a unique id."""
    records.sort(key=lambda r: (r.path, r.sha256))
    names = Counter(r.path for r in records)
    for r in records:
        if names[r.path] > 1:
            r.defects = [d for d in r.defects if d != DUPLICATE]
            r.defects.append(f"{DUPLICATE}: {names[r.path]} members are named {r.path!r}")
    assign_ids(records)


def assign_ids(records: Sequence[ParsedRecord]) -> None:
    """Give every record a unique id, even two identical members stored under one name."""
    seen: Counter[str] = Counter()
    for r in records:
        base = message_id(r.path, r.sha256)
        seen[base] += 1
        r.id = base if seen[base] == 1 else message_id(f"{r.path}#{seen[base]}", r.sha256)


def decide(records: Sequence[ParsedRecord], policy: SitePolicy, incident: str, snapshot: SnapshotInfo,
           archive_defects: Sequence[str] = (), progress: Progress = _noop,
           policy_info: PolicyInfo | None = None, consume: bool = False) -> Manifest:
    """Group and decide: the pure heart of triage, records and policy in, manifest out; the records are in
    their global order, with their ids. It runs the steps of pipeline.staged over one in-memory shard,
    the same functions the functions and the CLI run over many.

    The records are left as they were, unless `consume`: then they are the caller's to give up, and
    what grouping alone needed (texts, sketches) is dropped from them as soon as the campaigns are
    known."""
    import numpy as np

    from pipeline.staged import LABEL_SAMPLE, plan_records, run_in_memory

    n = len(records)
    if consume:
        for r in records:
            resolve_origin(r, policy)
    progress("campaigns", 0, n)
    plan = plan_records(records, policy, policy_info)
    if consume:
        # Texts were only needed for grouping; a campaign's label needs a sample of its members' texts.
        labels = plan.shards["0"].label
        keep: set[int] = set()
        for lab in plan.campaign_labels:
            keep.update(np.flatnonzero(labels == lab)[:LABEL_SAMPLE].tolist())
        for i, r in enumerate(records):
            if i not in keep:
                r.text = ""
            r.sketch = []
    return run_in_memory({"0": records}, plan, incident, snapshot, archive_defects, progress=progress)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Triage allocates millions of small acyclic objects; the cyclic collector would walk them all
    again and again for nothing (a fifth of the run). It is off meanwhile, and afterwards what
    triage made is frozen (gc.freeze): refcounting still frees it, but the collector no longer walks
    it, which would otherwise cost a second or two at the next allocations after a 100k triage."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.freeze()
            gc.enable()


def triage(source: str | Path, policy: SitePolicy, fmt: str | None = None, incident: str | None = None,
           progress: Progress = _noop, workers: int | None = None, policy_source: str | None = None) -> Manifest:
    """Read a snapshot and return its manifest. The policy used is `policy` where it sets a key, else the
    MTA configuration the snapshot recorded, else what the queue shows (pipeline.sitepolicy)."""
    with paused_gc():
        return _triage(source, policy, fmt, incident, progress, workers, policy_source)


def read_and_parse(source: str | Path, policy: SitePolicy, fmt: str | None = None, progress: Progress = _noop,
                   workers: int | None = None) -> tuple[str, list[ParsedRecord], ArchiveReport]:
    """Every message of a snapshot parsed, in one order (see `prepare`), with the walk's report."""
    report = ArchiveReport()
    with parse_pool(source, workers) as pool:
        name, found, report = read_snapshot(source, policy.limits, fmt=fmt, report=report)
        records = parse_all(found, policy, progress=progress, workers=workers, pool=pool)
    check_read(name, fmt, records, report)
    prepare(records)
    return name, records, report


def check_read(name: str, fmt: str | None, records: Sized, report: ArchiveReport) -> None:
    """A format named with --format that finds no message among the members is the wrong format: an
    empty manifest would tell the admin the queue was empty."""
    if fmt is not None and not records and report.members:
        from pipeline.errors import WrongFormat

        raise WrongFormat(f"--format {fmt} found no message in {report.members:,} member(s) "
                            f"({len(report.skipped):,} skipped as not messages); leave --format out to detect it")


def _triage(source: str | Path, policy: SitePolicy, fmt: str | None, incident: str | None,
            progress: Progress, workers: int | None, policy_source: str | None) -> Manifest:
    name, records, report = read_and_parse(source, policy, fmt, progress, workers)
    used, pinfo = effective_policy(policy, policy_source, site_of(report.meta), records)
    info = SnapshotInfo(source=Path(source).name, format=name, sha256=report.sha256, members_read=report.members,
                        skipped=report.skipped, hosts=[str(report.meta["host"])] if report.meta.get("host") else [])
    return decide(records, used, incident or Path(source).name, info, report.defects, progress=progress,
                  policy_info=pinfo, consume=True)
