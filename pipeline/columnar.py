"""Parsed shards as columns: one Parquet file a shard, so a reduce reads only the columns it needs.

A shard's records are written by the parse step (`shard_bytes`; the parser processes send their
chunks' tables as IPC streams, `ipc_bytes`, and `parquet_bytes` writes the same file of them) and read
back whole by the map steps (`read_records`, which gives back exactly the records written:
`model_dump()` is equal; only `record` is validated, the other columns are set as they are). The
plan step reads small columns only (`read_columns`, `grouping`, `queue_evidence`, `ids`); the
campaign labels read `text` for a sample of rows.

Columns (one row per message, in the order the parse step wrote them):

    path, sha256       string: the triage order is (path, sha256) over every shard
    digest             binary(16): pipeline.campaigns.feature_digest, the exact-duplicate fold
    sketch             binary(256): 64 little-endian uint32, null without a sketch
    keys               list<string>: invariant keys, in the record's order
    shape              string: template fingerprint
    bounce             bool: a bounce (grouping counts a copy and the bounces quoting it as one copy)
    text               string: normalised text (read for a label's sample only)
    top_by             string: the topmost Received hop's `by` ('' none), null without Received lines
    account, domain    string: what pipeline.sitepolicy.message_evidence gives (the queue's policy
    hop_by, hop_user   list<string>: evidence), hop_* only for a message whose queue stored no account
    client             string: the client the queue stored (pipeline.campaigns.client_evidence)
    client_hops        list<string>: without one, the Received hops ("by<TAB>ip") to find ours in; with a
                       loopback client, what tells whether a filter stands between (pipeline.origin)
    quoted_hops        list<string>: for a bounce quoting too few words, the quoted copy's hops
    record             string: the ParsedRecord's JSON without path, sha256, text, keys, shape and
                       (when it is in its column) sketch

Shards written before (`<shard>.jsonl.zst`, ParsedRecord JSON lines) are read by every function
here as well: `read_records` reads them as they are, the column readers build the same columns; so are
Parquet shards written before the client columns or `bounce`, which are then built from the records.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from pipeline.campaigns import Grouping, client_evidence, feature_digest, followed_keys, own_digest
from pipeline.errors import ShardError
from pipeline.features import SKETCH_PERM
from pipeline.models import ParsedRecord, message_id
from pipeline.sitepolicy import QueueEvidence, message_evidence


def _returning_allocator() -> None:
    """Arrow's default allocator in the wheels (mimalloc) keeps the pages it freed, so a reduce
    reading shard after shard holds its high-water mark; jemalloc gives them back (a fifth less peak
    at 100k messages). An allocator named in ARROW_DEFAULT_MEMORY_POOL is left as it is."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:  # a build without jemalloc (Windows)
        pass


_returning_allocator()

FORMAT = "spoolsweep-parsed"
VERSION = "1"
_MAGIC = b"PAR1"
_SKETCH_BYTES = 4 * SKETCH_PERM
# fields with a column of their own, left out of `record`
_OWN = ("path", "sha256", "text", "keys", "shape", "sketch")

SCHEMA = pa.schema([
    ("path", pa.string()),
    ("sha256", pa.string()),
    ("digest", pa.binary(16)),
    ("sketch", pa.binary(_SKETCH_BYTES)),
    ("keys", pa.list_(pa.string())),
    ("shape", pa.string()),
    ("bounce", pa.bool_()),
    ("text", pa.string()),
    ("top_by", pa.string()),
    ("account", pa.string()),
    ("domain", pa.string()),
    ("hop_by", pa.list_(pa.string())),
    ("hop_user", pa.list_(pa.string())),
    ("client", pa.string()),
    ("client_hops", pa.list_(pa.string())),
    ("quoted_hops", pa.list_(pa.string())),
    ("record", pa.string()),
], metadata={b"format": FORMAT.encode(), b"version": VERSION.encode()})

GROUPING = ("digest", "sketch", "keys", "shape", "bounce")
POLICY = ("top_by", "account", "domain", "hop_by", "hop_user")
CLIENTS = ("client", "client_hops", "quoted_hops")  # pipeline.campaigns.client_evidence
LATER = (*CLIENTS, "bounce")  # columns a shard written before them lacks: built from its records
ORDER = ("path", "sha256")


_U4_SKETCH = struct.Struct(f"<{SKETCH_PERM}I")


def _packed_sketch(sketch: Sequence[int]) -> bytes | None:
    """A standard sketch as its column's bytes; None for any other (kept in `record`, exact)."""
    if len(sketch) != SKETCH_PERM:
        return None
    if set(map(type, sketch)) == {int}:  # what the parser makes: struct checks the range as it packs
        try:
            return _U4_SKETCH.pack(*sketch)
        except struct.error:
            return None
    if not all(isinstance(x, int) and 0 <= x < 1 << 32 for x in sketch):
        return None
    return np.asarray(sketch, dtype="<u4").tobytes()


def _columns(records: Sequence[ParsedRecord], names: Sequence[str]) -> dict[str, list[object]]:
    cols: dict[str, list[object]] = {name: [] for name in names}
    want = set(names)
    policy = want & set(POLICY)
    clients = want & set(CLIENTS)
    for r in records:
        packed = _packed_sketch(r.sketch) if want & {"sketch", "record"} else None
        if "path" in want:
            cols["path"].append(r.path)
        if "sha256" in want:
            cols["sha256"].append(r.sha256)
        if "digest" in want:
            cols["digest"].append(feature_digest(r.text, r.keys, r.shape, r.sketch, own_digest(r)))
        if "sketch" in want:
            cols["sketch"].append(packed)
        if "keys" in want:
            cols["keys"].append(list(r.keys))
        if "shape" in want:
            cols["shape"].append(r.shape)
        if "bounce" in want:
            cols["bounce"].append(r.bounce)
        if "text" in want:
            cols["text"].append(r.text)
        if policy:
            top_by, account, domain, hops = message_evidence(r)
            for name, value in (("top_by", top_by), ("account", account), ("domain", domain),
                                ("hop_by", [b for b, _ in hops] if hops else None),
                                ("hop_user", [u for _, u in hops] if hops else None)):
                if name in want:
                    cols[name].append(value)
        if clients:
            for name, evidence in zip(CLIENTS, client_evidence(r), strict=True):
                if name in want:
                    cols[name].append(evidence)
        if "record" in want:
            cols["record"].append(r.model_dump_json(exclude=set(_OWN) if packed is not None else set(_OWN[:-1])))
    return cols


def table_of(records: Sequence[ParsedRecord], columns: Sequence[str] | None = None) -> pa.Table:
    """The shard's columns (all, or those named) as an Arrow table: what `shard_bytes` writes, or
    what a reduce reads of records held in memory (pipeline.plan.plan_step takes either)."""
    names = list(SCHEMA.names if columns is None else columns)
    schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(n) for n in names])
    return pa.Table.from_pydict(_columns(records, names), schema=schema)


def shard_bytes(records: Sequence[ParsedRecord]) -> bytes:
    """One shard's records as a Parquet file (zstd, one row group): the bytes depend on the records only."""
    return parquet_bytes(table_of(records))


def parquet_bytes(table: pa.Table) -> bytes:
    """A shard's table (SCHEMA, in any number of chunks) as its Parquet file: the same bytes as
    `shard_bytes` of its records, however the rows were cut into chunks (they are combined first:
    the writer's pages follow its input's chunks)."""
    sink = io.BytesIO()
    # statistics of texts and JSON would only weigh the footer: no reader filters on them
    pq.write_table(table.combine_chunks(), sink, compression="zstd", compression_level=3,
                   write_statistics=["path", "sha256", "shape"], row_group_size=max(1, len(table)))
    return sink.getvalue()


def ipc_bytes(table: pa.Table, compression: str | None = None, batch_rows: int | None = None) -> bytes:
    """A table as an Arrow IPC stream: what crosses between processes (pickling it is a copy of its buffers);
    its batches compressed and at most `batch_rows` long when asked (a reader then holds one batch at a time)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_table(table, max_chunksize=batch_rows)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def of_ipc(data: bytes) -> pa.Table:
    """A table from `ipc_bytes` (its buffers are views of `data`, not copies)."""
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def is_parquet(data: bytes) -> bool:
    return data[:4] == _MAGIC


def _legacy(data: bytes) -> list[ParsedRecord]:
    try:
        text = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        return [ParsedRecord.model_validate_json(line) for line in text.splitlines() if line.strip()]
    except (zstandard.ZstdError, ValueError) as e:
        raise ShardError(f"neither Parquet nor zstd JSON lines: {str(e).splitlines()[0][:200]}") from None


def read_columns(data: bytes, columns: Sequence[str], rows: Sequence[int] | np.ndarray | None = None) -> pa.Table:
    """Some columns of a shard (any of SCHEMA's names), all rows or those given (in that order)."""
    unknown = [c for c in columns if c not in SCHEMA.names]
    if unknown:
        raise ValueError(f"no column {', '.join(unknown)} in a parsed shard")
    if is_parquet(data):
        try:
            # a shard written before the LATER columns were: they are worked out from its records (the
            # footer is read for that only when one is asked for: read_records never asks)
            later = [c for c in columns if c in LATER]
            if later:
                stored = set(pq.read_schema(pa.BufferReader(data)).names)
                later = [c for c in later if c not in stored]
            table = pq.read_table(pa.BufferReader(data), columns=[c for c in columns if c not in later])
        except (pa.ArrowException, OSError) as e:
            raise ShardError(str(e).splitlines()[0][:200]) from None
        if later:
            made = table_of(read_records(data), later)
            table = pa.table({c: table.column(c) if c in table.column_names else made.column(c) for c in columns})
    else:
        table = table_of(_legacy(data)).select(list(columns))
    if rows is not None:
        table = table.take(pa.array(np.asarray(rows, dtype=np.int64)))
    return table.combine_chunks()


def num_rows(data: bytes) -> int:
    """How many messages a shard holds, from the Parquet footer alone."""
    if is_parquet(data):
        return int(pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows)
    return len(_legacy(data))


# what `read_records` validates in place of the fields kept in columns: set afterwards, as they were written
_PLACEHOLDER = '{"path":"","sha256":"","text":"","keys":[],"shape":"",'


def read_records(data: bytes, rows: Sequence[int] | np.ndarray | None = None) -> list[ParsedRecord]:
    """A shard's records, exactly as they were written, all or the rows given (in that order)."""
    if not is_parquet(data):
        recs = _legacy(data)
        return recs if rows is None else [recs[int(i)] for i in rows]
    t = read_columns(data, ["path", "sha256", "text", "keys", "shape", "sketch", "record"], rows)
    # only `record` is validated (the columns' own fields are plain values: no validator changes them)
    sketches, has = sketch_matrix(t.column("sketch"))
    validate = ParsedRecord.model_validate_json
    out: list[ParsedRecord] = []
    for i, (path, sha, text, keys, shape, rec) in enumerate(zip(
            *(t.column(c).to_pylist() for c in ("path", "sha256", "text", "keys", "shape", "record")), strict=True)):
        r = validate(_PLACEHOLDER + rec[1:])
        d = r.__dict__
        d["path"], d["sha256"], d["text"], d["keys"], d["shape"] = path, sha, text, keys, shape
        if has[i]:
            d["sketch"] = sketches[i].tolist()
            r.__pydantic_fields_set__.add("sketch")
        out.append(r)
    return out


def _sketch_into(column: pa.Array | pa.ChunkedArray, out: np.ndarray, has: np.ndarray) -> None:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    has[:] = arr.is_valid().to_numpy(zero_copy_only=False)
    if has.any():
        flat = np.frombuffer(arr.buffers()[1], dtype="<u4", count=(arr.offset + n) * SKETCH_PERM)
        out[has] = flat[arr.offset * SKETCH_PERM:].reshape(n, SKETCH_PERM)[has]


def sketch_matrix(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A `sketch` column as an (n, 64) uint32 matrix (zeros where null) and the mask of rows that have one."""
    out = np.zeros((len(column), SKETCH_PERM), dtype=np.uint32)
    has = np.zeros(len(column), dtype=bool)
    _sketch_into(column, out, has)
    return out, has


def digests(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A `digest` column as an (n,) array of 16-byte values."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    buf = arr.buffers()[1]
    raw = np.frombuffer(buf, dtype="S16", count=arr.offset + len(arr))[arr.offset:]
    return raw.copy()


def ids(paths: Sequence[str], sha256s: Sequence[str]) -> list[str]:
    """Each message's base id (pipeline.models.message_id); the plan renames repeated ones."""
    return [message_id(p, s) for p, s in zip(paths, sha256s, strict=True)]


def grouping(tables: list[pa.Table]) -> Grouping:
    """The clusterer's input from the GROUPING columns of shards, concatenated in the order given;
    key and template strings become numbers here (equal strings, equal numbers, across shards).
    The list is emptied as its tables are copied, so their sketches are not held twice."""
    n = sum(len(t) for t in tables)
    digest = np.empty(n, dtype="S16")
    sketch = np.zeros((n, SKETCH_PERM), dtype=np.uint32)
    has_sketch = np.zeros(n, dtype=bool)
    bounce = np.zeros(n, dtype=bool)
    shapes: list[pa.Array] = []
    keys: list[pa.Array] = []
    at = 0
    while tables:
        t = tables.pop(0)
        m = len(t)
        digest[at:at + m] = digests(t.column("digest"))
        _sketch_into(t.column("sketch"), sketch[at:at + m], has_sketch[at:at + m])
        bounce[at:at + m] = t.column("bounce").to_numpy(zero_copy_only=False)
        shapes.append(t.column("shape").combine_chunks())
        keys.append(t.column("keys").combine_chunks())
        at += m
        del t
    shape = pa.chunked_array(shapes, pa.string())
    shape_ids = pc.index_in(shape, value_set=pc.unique(shape)).to_numpy().astype(np.int64)
    key_lists = pa.chunked_array(keys, pa.list_(pa.string()))
    flat = pc.list_flatten(key_lists)
    key_ids = pc.index_in(flat, value_set=pc.unique(flat)).to_numpy().astype(np.int64)
    # the message of each key: its row within its shard, plus the rows of the shards before it
    parents, base = [], 0
    for chunk in key_lists.chunks:
        parents.append(pc.list_parent_indices(chunk).to_numpy().astype(np.int64) + base)
        base += len(chunk)
    key_msg = np.concatenate(parents) if parents else np.empty(0, np.int64)
    return Grouping(digest, sketch, has_sketch, shape_ids, key_msg, key_ids, bounce, followed_keys(flat))


def queue_evidence(table: pa.Table, positions: np.ndarray) -> QueueEvidence:
    """pipeline.sitepolicy.QueueEvidence of one shard from its POLICY columns, its rows at the given
    global positions (the triage order: ties between host names are broken by it)."""
    ev = QueueEvidence()
    cols = [table.column(c).to_pylist() for c in POLICY]
    for pos, top_by, account, domain, hop_by, hop_user in zip(positions.tolist(), *cols, strict=True):
        hops = tuple(zip(hop_by, hop_user, strict=True)) if hop_by else None
        ev.add_message(pos, top_by, account, domain, hops)
    return ev
