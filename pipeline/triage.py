"""Triage a snapshot: read, parse, group campaigns, decide, and assemble the manifest."""

from __future__ import annotations

import gc
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

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

if TYPE_CHECKING:
    import numpy as np

    from pipeline.campaigns import Grouping

Progress = Callable[[str, int, int | None], None]
_PARALLEL_BYTES = 2 << 20  # a snapshot this big (a thousand messages or so) is parsed on every core
_CHUNK = 256
_T = TypeVar("_T")


def _noop(stage: str, done: int, total: int | None) -> None:
    pass


def _parse_chunk(args: tuple[list[Found], SitePolicy]) -> list[ParsedRecord]:
    chunk, policy = args
    return [parse_found(f, policy) for f in chunk]


class Batch(NamedTuple):
    """One chunk parsed, as the triage route takes it back from a parse worker: the records without
    their sketches, and what grouping reads of them packed into bytes (per record, its
    `feature_digest` and its sketch as SKETCH_PERM uint32, zeros when it has none): a sketch as a list
    of 64 Python ints cost more to unpickle than the rest of its record, and the digest is the one
    grouping input that needs the text, so the main process (the one serial stage) never computes it."""

    records: list[ParsedRecord]
    digest: bytes
    sketch: bytes
    has_sketch: bytes


def _parse_batch(args: tuple[list[Found], SitePolicy]) -> Batch:
    import numpy as np

    from pipeline.campaigns import feature_digest, own_digest
    from pipeline.features import SKETCH_PERM

    records = _parse_chunk(args)
    sketch = np.zeros((len(records), SKETCH_PERM), dtype=np.uint32)
    has = np.zeros(len(records), dtype=bool)
    digests = []
    for i, r in enumerate(records):
        digests.append(feature_digest(r.text, r.keys, r.shape, r.sketch, own_digest(r)))
        if len(r.sketch) == SKETCH_PERM:
            sketch[i] = r.sketch
            has[i] = True
        r.sketch = []
    return Batch(records, b"".join(digests), sketch.tobytes(), has.tobytes())


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
    out: list[ParsedRecord] = []

    def take(records: list[ParsedRecord]) -> int:
        out.extend(records)
        return len(out)

    _parse_chunks(found, policy, progress, workers, pool, _parse_chunk, take)
    return out


class Unsorted(NamedTuple):
    """Grouping's input with the records in the order they were read (`Parsed.unsorted`): what a worker is
    sent to label them while this process sorts them (the labels do not depend on the messages' order:
    pipeline.campaigns)."""

    digest: bytes
    sketch: bytes
    has_sketch: bytes
    shapes: list[str]
    keys: list[list[str]]
    bounce: bytes

    def grouping(self) -> Grouping:
        import numpy as np

        from pipeline.campaigns import Grouping
        from pipeline.features import SKETCH_PERM

        n = len(self.shapes)
        return Grouping.assemble(np.frombuffer(self.digest, dtype="S16"),
                                 np.frombuffer(self.sketch, dtype=np.uint32).reshape(n, SKETCH_PERM),
                                 np.frombuffer(self.has_sketch, dtype=bool), self.shapes, self.keys,
                                 np.frombuffer(self.bounce, dtype=bool))


class Parsed:
    """Every record parsed (`parse_grouped`), with what grouping reads of them, chunk by chunk as packed
    by the workers (`Batch`)."""

    def __init__(self) -> None:
        self.records: list[ParsedRecord] = []
        self.batches: deque[tuple[int, bytes, bytes, bytes]] = deque()  # (first record, digest, sketch, has)

    def take(self, b: Batch) -> int:
        self.batches.append((len(self.records), b.digest, b.sketch, b.has_sketch))
        self.records.extend(b.records)
        return len(self.records)

    def grouping(self, order: Sequence[int]) -> Grouping:
        """The clusterer's input with the records in `order` (which `prepare` put them in: self.records
        is that list); the packed chunks are let go as they are copied."""
        import numpy as np

        from pipeline.campaigns import Grouping
        from pipeline.features import SKETCH_PERM

        n = len(self.records)
        at = np.empty(n, dtype=np.int64)  # where each record read went
        at[np.asarray(order, dtype=np.int64)] = np.arange(n, dtype=np.int64)
        digest = np.empty(n, dtype="S16")
        sketch = np.zeros((n, SKETCH_PERM), dtype=np.uint32)
        has = np.zeros(n, dtype=bool)
        while self.batches:
            lo, d, sk, h = self.batches.popleft()
            to = at[lo:lo + len(d) // 16]
            digest[to] = np.frombuffer(d, dtype="S16")
            sketch[to] = np.frombuffer(sk, dtype=np.uint32).reshape(-1, SKETCH_PERM)
            has[to] = np.frombuffer(h, dtype=bool)
        return Grouping.assemble(digest, sketch, has, [r.shape for r in self.records], [r.keys for r in self.records],
                                 np.fromiter((r.bounce for r in self.records), dtype=bool, count=n))

    def unsorted(self) -> Unsorted:
        """The clusterer's input with the records as read (before `prepare`); the packed chunks are let go."""
        parts = list(self.batches)
        self.batches.clear()
        return Unsorted(b"".join(p[1] for p in parts), b"".join(p[2] for p in parts), b"".join(p[3] for p in parts),
                        [r.shape for r in self.records], [r.keys for r in self.records],
                        bytes(r.bounce for r in self.records))


def parse_grouped(found: Iterable[Found], policy: SitePolicy, progress: Progress = _noop,
                  workers: int | None = None, pool: ProcessPoolExecutor | None = None) -> Parsed:
    """`parse_all` for the triage route: the records come back without their sketches, and grouping's
    input, packed, beside them (`Batch`)."""
    out = Parsed()
    _parse_chunks(found, policy, progress, workers, pool, _parse_batch, out.take)
    return out


def _parse_chunks(found: Iterable[Found], policy: SitePolicy, progress: Progress, workers: int | None,
                  pool: ProcessPoolExecutor | None, work: Callable[[tuple[list[Found], SitePolicy]], _T],
                  take: Callable[[_T], int]) -> None:
    """Every chunk through `work`, in a worker process once the queue is big enough; `take` is given
    each result in order and says how many records it holds by then."""
    workers = workers if workers is not None else (os.cpu_count() or 1)

    def put(result: _T) -> None:
        progress("parse", take(result), None)

    chunks = _chunks(found, _CHUNK)
    if pool is not None:
        _parse_in(pool, chunks, policy, work, put, workers)
        return
    first = next(chunks, [])
    put(work((first, policy)))
    if len(first) < _CHUNK:
        return
    if workers <= 1:
        for ch in chunks:
            put(work((ch, policy)))
        return
    with ProcessPoolExecutor(max_workers=workers) as ex:
        _parse_in(ex, chunks, policy, work, put, workers)


def _parse_in(ex: ProcessPoolExecutor, chunks: Iterator[list[Found]], policy: SitePolicy,
              work: Callable[[tuple[list[Found], SitePolicy]], _T], put: Callable[[_T], None], workers: int) -> None:
    # a bounded window of chunks in flight keeps memory flat however large the queue is
    window: deque[Future[_T]] = deque()
    for ch in chunks:
        window.append(ex.submit(work, (ch, policy)))
        if len(window) >= 4 * workers:
            put(window.popleft().result())
    while window:
        put(window.popleft().result())


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


def prepare(records: list[ParsedRecord]) -> list[int]:
    """Put records in one order whatever order the archive stored them in (path, then digest), so the
    verdicts cannot depend on member order; flag every copy of a name stored more than once (the
    archive walk can only flag the later ones); give each a unique id. Returns where each record now
    first was (a stable sort, as list.sort)."""
    keys = [(r.path, r.sha256) for r in records]  # a list's lookup costs less than a lambda's two attributes
    order = sorted(range(len(records)), key=keys.__getitem__)
    records[:] = [records[i] for i in order]
    names = Counter(r.path for r in records)
    if len(names) == len(records):  # no name stored twice: nothing to flag
        assign_ids(records)
        return order
    for r in records:
        if names[r.path] > 1:
            r.defects = [d for d in r.defects if d != DUPLICATE]
            r.defects.append(f"{DUPLICATE}: {names[r.path]} members are named {r.path!r}")
    assign_ids(records)
    return order


def assign_ids(records: Sequence[ParsedRecord]) -> None:
    """Give every record a unique id, even two identical members stored under one name."""
    seen: Counter[str] = Counter()
    for r in records:
        base = message_id(r.path, r.sha256)
        seen[base] += 1
        r.id = base if seen[base] == 1 else message_id(f"{r.path}#{seen[base]}", r.sha256)


def _labels(args: tuple[Grouping | Unsorted, float]) -> np.ndarray:
    from pipeline.clusterer import CampaignClusterer

    grouping, threshold = args
    if isinstance(grouping, Unsorted):
        grouping = grouping.grouping()
    labels: np.ndarray = CampaignClusterer(threshold=threshold).fit_grouping(grouping).labels_
    return labels


def decide(records: Sequence[ParsedRecord], policy: SitePolicy, incident: str, snapshot: SnapshotInfo,
           archive_defects: Sequence[str] = (), progress: Progress = _noop,
           policy_info: PolicyInfo | None = None, consume: bool = False, grouping: Grouping | None = None,
           pool: ProcessPoolExecutor | None = None, labels: Callable[[], np.ndarray] | None = None) -> Manifest:
    """Group and decide: the pure heart of triage, records and policy in, manifest out; the records are in
    their global order, with their ids. It runs the steps of pipeline.staged over one in-memory shard,
    the same functions the functions and the CLI run over many.

    The records are left as they were, unless `consume`: then they are the caller's to give up, and
    what grouping alone needed (texts, sketches) is dropped from them as soon as the campaigns are
    known. `grouping`: the clusterer's input for the records as they are (`Parsed.grouping`), else it is
    read from them (their texts and sketches). `pool`: worker processes (the parse's, idle by now): with
    a grouping, the labels are worked out in one of them while this process settles the records'
    origins, contexts and facts, which do not need them; the campaigns' words, while it decides and
    writes the verdicts (the same functions, the same results). `labels`: gives the records' grouping
    labels, worked out elsewhere (asked for once those facts are known)."""
    import numpy as np

    from pipeline.staged import LABEL_SAMPLE, Words, plan_records, rows_and_facts, run_in_memory, words_of_samples

    n = len(records)
    threshold = policy.thresholds.campaign_similarity
    if grouping is not None:
        if len(grouping.digest) != n:
            raise ValueError(f"a grouping of {len(grouping.digest)} messages for {n} records")
        if pool is not None and labels is None:
            labels = pool.submit(_labels, (grouping, threshold)).result
    if consume:
        for r in records:
            resolve_origin(r, policy)
    progress("campaigns", 0, n)
    ready = {"0": rows_and_facts(records, policy, settled=consume)} if labels is not None else None
    given = labels() if labels is not None else _labels((grouping, threshold)) if grouping is not None else None
    plan = plan_records(records, policy, policy_info,
                        labels=np.asarray(given, dtype=np.int64) if given is not None else None)
    words: Future[list[Words]] | None = None
    if consume or pool is not None:
        # A campaign's words are read from its first members (the verdicts step's sample of it): worked
        # out in a worker, if there is one, while this process decides. Texts were only needed for
        # grouping and those words: the other members' are dropped.
        label = plan.shards["0"].label
        first = [np.flatnonzero(label == lab)[:LABEL_SAMPLE].tolist() for lab in plan.campaign_labels]
        if pool is not None:
            words = pool.submit(words_of_samples, [([records[i].subject for i in m], [records[i].text for i in m])
                                                   for m in first])
        if consume:
            keep = set().union(*first)
            for i, r in enumerate(records):
                if i not in keep:
                    r.text = ""
                r.sketch = []
    return run_in_memory({"0": records}, plan, incident, snapshot, archive_defects, progress=progress, settled=consume,
                         ready=ready, words=words.result if words is not None else None)


@contextmanager
def paused_gc(freeze: bool = True) -> Iterator[None]:
    """Triage allocates millions of small acyclic objects; the cyclic collector would walk them all
    again and again for nothing (a fifth of the run). It is off meanwhile, and afterwards, with
    `freeze`, what triage made is frozen (gc.freeze): refcounting still frees it, but the collector no
    longer walks it, which would otherwise cost a second or two at the next allocations after a 100k
    triage. Without it (a step in a long-lived worker, which keeps nothing it made) the collector is
    simply on again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            if freeze:
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


def _read_grouped(source: str | Path, policy: SitePolicy, fmt: str | None, progress: Progress,
                  workers: int | None, pool: ProcessPoolExecutor | None
                  ) -> tuple[str, list[ParsedRecord], ArchiveReport, Grouping | None, Callable[[], np.ndarray] | None]:
    """`read_and_parse`, with the clusterer's input packed by the workers; the records keep no sketch.
    With a pool, the records are labelled in one of its workers while they are sorted here: the labels
    are given by the last callable (in the records' order; policy.thresholds is the effective policy's,
    pipeline.sitepolicy.KEYS); else the clusterer's input is given, in their order."""
    import numpy as np

    report = ArchiveReport()
    name, found, report = read_snapshot(source, policy.limits, fmt=fmt, report=report)
    parsed = parse_grouped(found, policy, progress=progress, workers=workers, pool=pool)
    records = parsed.records
    check_read(name, fmt, records, report)
    if pool is None:
        return name, records, report, parsed.grouping(prepare(records)), None
    job = pool.submit(_labels, (parsed.unsorted(), policy.thresholds.campaign_similarity))
    order = np.asarray(prepare(records), dtype=np.int64)
    return name, records, report, None, lambda: job.result()[order]


def check_read(name: str, fmt: str | None, records: Sized, report: ArchiveReport) -> None:
    """A format named with --format that finds no message among the members is the wrong format: an
    empty manifest would tell the admin the queue was empty."""
    if fmt is not None and not records and report.members:
        from pipeline.errors import WrongFormat

        raise WrongFormat(f"--format {fmt} found no message in {report.members:,} member(s) "
                            f"({len(report.skipped):,} skipped as not messages); leave --format out to detect it")


def _triage(source: str | Path, policy: SitePolicy, fmt: str | None, incident: str | None,
            progress: Progress, workers: int | None, policy_source: str | None) -> Manifest:
    # the pool outlives the parse: one of its workers works out the campaign labels (`decide`)
    with parse_pool(source, workers) as pool:
        name, records, report, grouping, labels = _read_grouped(source, policy, fmt, progress, workers, pool)
        used, pinfo = effective_policy(policy, policy_source, site_of(report.meta), records)
        if used.thresholds != policy.thresholds:  # the labels under way used the policy given's
            raise RuntimeError("the effective policy changed the thresholds (pipeline.sitepolicy.KEYS)")
        info = SnapshotInfo(source=Path(source).name, format=name, sha256=report.sha256,
                            members_read=report.members, skipped=report.skipped,
                            hosts=[str(report.meta["host"])] if report.meta.get("host") else [])
        return decide(records, used, incident or Path(source).name, info, report.defects, progress=progress,
                      policy_info=pinfo, consume=True, grouping=grouping, pool=pool, labels=labels)
