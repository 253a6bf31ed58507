"""Parse a snapshot or shard under incoming/<incident>/<host>/ into parsed/<incident>/<shard>.parquet.

A whole snapshot larger than the split size is not parsed here: it is cut into part files beside it
(incoming/.../<stem>.part-0001-of-0050.tar.zst), whose own events parse them in parallel. The whole
file stays as evidence and never becomes a parsed shard itself.
"""

from __future__ import annotations

import json
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline import queues
from pipeline.archive import ArchiveReport
from pipeline.columnar import ipc_bytes, of_ipc, parquet_bytes, table_of
from pipeline.errors import PoisonEvent, SnapshotError
from pipeline.parse import parse_found
from pipeline.policy import SitePolicy
from pipeline.readers import read_snapshot
from pipeline.readers.base import Found
from pipeline.service import StepResult
from pipeline.shards import ShardMeta, cut_of, file_sha256, of_one_name, shard_of, split_snapshot
from pipeline.sitepolicy import site_of
from pipeline.store import Store
from pipeline.triage import parse_pool, paused_gc

CHUNK = 256  # messages a parser process is handed at once
Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class ParseOptions:
    workers: int = 1  # parser processes; 1 in Lambda (no /dev/shm)
    split_bytes: int = 0  # split a whole snapshot bigger than this; 0 never
    shard_size: int = 20000  # messages per part when splitting


@dataclass(frozen=True)
class Incoming:
    """An object under incoming/: incoming/<incident>/<host>/<filename>."""

    key: str
    size: int | None = None  # as the event said, if it did

    @property
    def parts(self) -> tuple[str, str, str]:
        try:
            incident, host, filename = queues.parts_of(self.key, queues.INCOMING, 3)
        except ValueError as e:
            raise PoisonEvent(str(e)) from None
        return incident, host, filename


# ---- messages into parsed shards, on every core ---------------------------------------------------------
# A parser process parses a chunk AND turns it into columns: what crosses back is an Arrow IPC stream
# (a copy of a few buffers to pickle), not a list of pydantic records. A shard's Parquet file is written
# by a parser process too, from its chunks' streams, while the others go on parsing the next shard's
# chunks: the window of chunks in flight stays full across shard boundaries.
# The cyclic collector is paused while a chunk is parsed or a shard written, and in this process while it
# reads the snapshot, as the in-memory triage's parser processes run (forked inside its paused_gc): a record
# is tens of acyclic objects, and the collector walked them for nothing (4-6 % of this stage's CPU).

def parse_chunk(args: tuple[list[Found], SitePolicy]) -> bytes:
    """A parser process's task: a chunk's records as columns (pipeline.columnar.SCHEMA), an IPC stream."""
    chunk, policy = args
    with paused_gc(freeze=False):
        return ipc_bytes(table_of([parse_found(f, policy) for f in chunk]))


def write_shard(args: tuple[list[bytes], str]) -> int:
    """A parser process's task: a shard's chunks (IPC streams, in order) as its Parquet file; its rows."""
    parts, path = args
    with paused_gc(freeze=False):
        table = pa.concat_tables([of_ipc(b) for b in parts]) if parts else table_of([])
        Path(path).write_bytes(parquet_bytes(table))
        return len(table)


def _now(fn: Callable[[Any], Any], arg: Any) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_result(fn(arg))
    return f


def _cut(found: Iterable[Found], shard_size: int) -> Iterator[tuple[list[Found], bool]]:
    """Chunks of at most CHUNK messages, none across a shard's end; each says whether it ends its shard
    (the last one may be empty: the shard ended with the chunk before)."""
    buf: list[Found] = []
    in_shard = 0
    for f in found:
        buf.append(f)
        in_shard += 1
        if in_shard >= shard_size:
            yield buf, True
            buf, in_shard = [], 0
        elif len(buf) >= CHUNK:
            yield buf, False
            buf = []
    if in_shard:
        yield buf, True


def parse_into_shards(found: Iterable[Found], policy: SitePolicy, shard_size: int, out_dir: Path,
                      pool: Executor | None = None, workers: int = 1,
                      progress: Progress | None = None) -> list[tuple[Path, int]]:
    """Parse messages into Parquet shards of at most shard_size messages (out_dir/<i>.parquet): the files
    and their messages, in order; none for no message. On the pool's processes when there is one (a
    window of 4 chunks a worker in flight, so memory stays flat however big the queue), else here."""
    with paused_gc(freeze=False):
        return _parse_into_shards(found, policy, shard_size, out_dir, pool, workers, progress)


def _parse_into_shards(found: Iterable[Found], policy: SitePolicy, shard_size: int, out_dir: Path,
                       pool: Executor | None, workers: int, progress: Progress | None) -> list[tuple[Path, int]]:
    run: Callable[[Callable[[Any], Any], Any], Future[Any]] = pool.submit if pool is not None else _now
    window: deque[tuple[Future[Any] | None, int, bool]] = deque()
    shard: list[bytes] = []
    writes: list[tuple[Path, Future[Any]]] = []
    parsed = 0

    def take() -> None:
        nonlocal shard, parsed
        fut, size, last = window.popleft()
        if fut is not None:
            shard.append(fut.result())
            parsed += size
            if progress:
                progress("parse", parsed, None)
        if last:
            path = out_dir / f"{len(writes)}.parquet"
            writes.append((path, run(write_shard, (shard, str(path)))))
            shard = []
            # at most two shards' chunks wait to be written
            if len(writes) > 2:
                writes[-3][1].result()

    for chunk, last in _cut(found, shard_size):
        window.append((run(parse_chunk, (chunk, policy)) if chunk else None, len(chunk), last))
        del chunk
        if len(window) >= 4 * max(1, workers):
            take()
    while window:
        take()
    return [(path, fut.result()) for path, fut in writes]


def local_copy(store: Store, key: str, tmp: Path) -> Path:
    """The object as a local file: the store's own file, a streamed download, or a copy."""
    root = getattr(store, "root", None)
    if isinstance(root, Path) and (root / key).is_file():
        return root / key
    path = tmp / key.rsplit("/", 1)[-1]
    download = getattr(store, "download", None)
    if download is not None:
        download(key, path)  # S3: multipart, streamed to /tmp, never all in memory
    else:
        path.write_bytes(store.get(key))
    return path


def split_object(store: Store, obj: Incoming, policy: SitePolicy, shard_size: int) -> StepResult:
    """Cut a whole snapshot into part files under incoming/; re-running rewrites nothing."""
    incident, host, filename = obj.parts
    with tempfile.TemporaryDirectory(prefix="spoolsweep-split-") as tmp:
        parts = split_snapshot(local_copy(store, obj.key, Path(tmp)), Path(tmp) / "parts", host, shard_size,
                               policy.limits)
        new = {queues.incoming_key(incident, host, p.name): p for p in parts}
        # parts already there are this snapshot's, cut before (a duplicate event): a part's bytes depend on the
        # snapshot's alone. Others of its name mean it changed since it was cut; so does one part that differs
        # (every part names the snapshot's sha256 in its "cut"), so one is read, not all of them again.
        prefix = obj.key[: -len(filename)]
        there = [k for k in of_one_name(store.list(prefix), prefix, host, filename) if k != obj.key]
        if any(k not in new for k in there) or (there and store.get(there[0]) != new[there[0]].read_bytes()):
            raise PoisonEvent(f"{obj.key} changed after it was cut into parts (the parts under {prefix} are of the "
                              "snapshot as it was): triage goes on with those; upload the new snapshot as another "
                              "incident")
        written = 0
        for pkey, p in new.items():
            if pkey not in there:
                store.put(pkey, p.read_bytes())
                written += 1
    return StepResult(f"split into {len(parts)} part(s) ({written} new) beside {filename}")


def _unchanged_since_parsed(store: Store, obj: Incoming, incident: str, shard: str) -> None:
    """An event for an object already parsed (a duplicate, or a retry) is done; for one that changed since, it is
    refused: the shard, and any manifest, hold the object as it was, and taking the event as done would say
    nothing of the new one."""
    mkey = queues.shard_meta_key(incident, shard)
    if not store.exists(mkey) or not store.exists(obj.key):
        return
    then = ShardMeta.model_validate_json(store.get(mkey)).object_sha256
    if then is None:  # parsed before the digest was kept
        return
    with tempfile.TemporaryDirectory(prefix="spoolsweep-parse-") as tmp:
        now = file_sha256(local_copy(store, obj.key, Path(tmp)))
    if now != then:
        raise PoisonEvent(f"{obj.key} changed after it was parsed (sha256 {then[:12]}… then, {now[:12]}… now): "
                          "triage goes on with the object parsed; upload the new snapshot as another incident")


def parse_object(store: Store, obj: Incoming, policy: SitePolicy, options: ParseOptions = ParseOptions()) -> StepResult:
    """Parse one snapshot object into its shard of records, as columns (or split it); a second run finds it done."""
    incident, host, filename = obj.parts
    if filename.startswith("."):
        return StepResult("skipped: hidden file", done=False)
    try:
        name = shard_of(host, filename)
    except ValueError as e:
        raise PoisonEvent(str(e)) from None
    if options.split_bytes and name.parts == 1 and obj.size is not None and obj.size > options.split_bytes:
        return split_object(store, obj, policy, options.shard_size)
    out = queues.parsed_key(incident, name.shard)
    for done in (out, queues.legacy_parsed_key(incident, name.shard)):
        if store.exists(done):
            _unchanged_since_parsed(store, obj, incident, name.shard)
            return StepResult(f"already parsed: {done}", done=False)
    where = {"incident": incident, "host": host, "source": obj.key, "shard": name.shard, "part": name.part,
             "parts": name.parts}
    report = ArchiveReport()
    with tempfile.TemporaryDirectory(prefix="spoolsweep-parse-") as tmp:
        path = local_copy(store, obj.key, Path(tmp))
        shard = Path(tmp) / "shard"
        shard.mkdir()
        written: list[tuple[Path, int]]
        try:
            with parse_pool(path, options.workers) as pool:
                fmt, found, report = read_snapshot(path, policy.limits, report=report)
                written = parse_into_shards(found, policy, 1 << 62, shard, pool, options.workers)
        except SnapshotError as e:
            # the snapshot stays in incoming/ as evidence; triage goes on and names the loss
            fmt, written = "unreadable", []
            report.defects.append(f"{obj.key}: {e}")
            store.put(queues.corrupt_key(incident, name.shard), json.dumps({**where, "error": str(e)}).encode())
        if not written:
            write_shard(([], str(shard / "empty.parquet")))
            written = [(shard / "empty.parquet", 0)]
        [(parquet, count)] = written
        # a part cut from a snapshot is described as that snapshot (its name, format and digest; what its read
        # found besides messages, told by its last part); what reading the part itself found is told too
        cut, bad = cut_of(report.meta)
        if cut is None:
            seen = {"format": fmt, "sha256": report.sha256, "members_read": report.members, "skipped": report.skipped,
                    "defects": [*report.defects, *bad]}
        else:
            seen = {"snapshot": cut.source, "format": cut.format, "sha256": cut.sha256,
                    "members_read": cut.members_read, "skipped": cut.skipped,
                    "defects": [*report.defects, *cut.defects]}
        meta = ShardMeta(incident=incident, host=host, source=obj.key, shard=name.shard, part=name.part,
                         parts=name.parts, messages=count, object_sha256=report.sha256, **seen,
                         # the MTA's own configuration the agent recorded: triage derives the policy from it
                         site=site_of(report.meta))
        store.put(queues.shard_meta_key(incident, name.shard), meta.model_dump_json().encode())
        # written last: its presence (and its S3 event) means the shard is complete
        store.put(out, parquet.read_bytes())
    return StepResult(f"{count} messages -> {out}", count)
