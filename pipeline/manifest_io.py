"""Write and read manifests: a summary (manifest.json) plus its messages in Parquet parts, complete objects only.

    manifest.json               the Manifest without `messages`, with `parts` naming the files that hold them
    messages-00000.parquet      the first PART_MESSAGES messages in manifest order, then messages-00001.parquet, ...

Beside the summary, not in a folder under it: a store's manifests/<incident>/<name> keys keep their shape.

Parts are written first and the summary last, so that its presence means the manifest is complete; each part's
sha256 is in the summary, so the summary's own digest (what an approval names) pins every message. A reader
checks each part against it: a missing or changed part is a ManifestError naming it, never a short manifest.
A manifest written as one file (messages inline, before parts) is read the same way.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic_core
from pydantic import ValidationError

from pipeline.errors import ManifestError, StoreError
from pipeline.models import Manifest, ManifestMessage, ManifestPart, ManifestParts

if TYPE_CHECKING:
    import pyarrow as pa

    from pipeline.store import Store

PART_MESSAGES = 50_000  # messages in a part: ~10-20 MB of Parquet, one S3 GET, a few seconds of parsing at most
ROW_GROUP = 1_000  # rows per Parquet row group: a page of messages decodes one or two of them, not the part
SUMMARY = "manifest.json"
COLUMNS = ["id", "verdict", "campaign", "review_group", "arrival", "client", "mail_from", "rcpt_to", "search",
           "message"]
SMALL = [c for c in COLUMNS if c != "message"]


def manifest_bytes(manifest: Manifest) -> bytes:
    """A manifest as one file, messages inline (tests, small outputs; the triage steps write parts)."""
    # straight to bytes: a million-message manifest is not worth holding twice
    return Manifest.__pydantic_serializer__.to_json(manifest)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def manifest_schema() -> dict[str, Any]:
    return Manifest.model_json_schema()


# --- where: a store's manifests/<incident>/ or a plain folder (spoolsweep triage --out)

def _place(target: Store | str | Path, incident: str | None) -> tuple[Store, str]:
    """(store, the prefix manifest.json and messages/ are under)."""
    from pipeline import queues
    from pipeline.store import LocalStore

    if isinstance(target, (str, Path)):
        return LocalStore(target), ""
    if incident is None:
        raise ValueError("an incident names the manifest in a store")
    return target, queues.manifest_key(incident)[: -len(SUMMARY)]


# --- writing

def part_row(m: ManifestMessage) -> tuple[Any, ...]:
    """A message as a row of a part (COLUMNS): what the verdicts step computes beside its message, so the
    summary step, which writes the parts, need not parse and serialise every message again."""
    e = m.envelope
    search = " ".join((m.subject, m.from_header, e.mail_from or "", " ".join(e.rcpt_to), e.client_address or "",
                       m.id)).lower()
    return (m.id, m.verdict.value, m.campaign, m.review_group,
            e.arrival_time.timestamp() if e.arrival_time else None, e.client_address, e.mail_from, e.rcpt_to,
            search, ManifestMessage.__pydantic_serializer__.to_json(m).decode())


def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("verdict", pa.string()), ("campaign", pa.int64()),
                      ("review_group", pa.int64()), ("arrival", pa.float64()), ("client", pa.string()),
                      ("mail_from", pa.string()), ("rcpt_to", pa.list_(pa.string())), ("search", pa.string()),
                      ("message", pa.string())])


def rows_table(rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    """Part rows (`part_row`) as an Arrow table of COLUMNS."""
    import pyarrow as pa

    cols: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [[] for _ in COLUMNS]
    return pa.Table.from_arrays([pa.array(list(c), type=f.type) for c, f in zip(cols, _schema(), strict=True)],
                                schema=_schema())


def _table_bytes(table: pa.Table) -> bytes:
    """A part's Parquet file of its rows as a table (COLUMNS): the same bytes however the rows were cut into chunks
    (the writer's pages follow its input's chunks: they are combined first)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    # dictionary encoding for the repetitive columns only; no per-write metadata: the same rows, the same bytes
    pq.write_table(table.combine_chunks(), sink, row_group_size=ROW_GROUP, compression="zstd",
                   use_dictionary=["verdict", "client", "mail_from"], write_statistics=["campaign", "review_group"])
    data: bytes = sink.getvalue().to_pybytes()
    return data


def summary_bytes(summary: Manifest, parts: ManifestParts) -> bytes:
    """manifest.json of a parted manifest: the Manifest's fields in order, `parts` where `messages` would be."""
    head = summary.model_dump(mode="json", exclude={"messages"})
    out: dict[str, Any] = {}
    for name in Manifest.model_fields:
        if name == "messages":
            out["parts"] = parts.model_dump(mode="json")
        elif name in head:
            out[name] = head[name]
    return pydantic_core.to_json(out)


def write_manifest_parts(target: Store | str | Path, summary: Manifest, messages: Iterable[ManifestMessage],
                         per_part: int = PART_MESSAGES) -> str:
    """Write `messages` (manifest order, streamed: at most one part held) as parts, then the summary, last.

    `target` is a store (keys under manifests/<incident>/) or a folder; the summary's own `messages` must be
    empty. The key (or file name) of the summary written. The same input writes the same bytes."""
    return write_manifest_rows(target, summary, map(part_row, messages), per_part)


def write_manifest_rows(target: Store | str | Path, summary: Manifest, rows_in: Iterable[tuple[Any, ...]],
                        per_part: int = PART_MESSAGES) -> str:
    """`write_manifest_parts` of the messages' rows (`part_row`), in manifest order: the same bytes."""
    def tables() -> Iterator[pa.Table]:
        rows: list[tuple[Any, ...]] = []
        for row in rows_in:
            rows.append(row)
            if len(rows) >= per_part:
                yield rows_table(rows)
                rows = []
        if rows:
            yield rows_table(rows)

    return write_manifest_tables(target, summary, tables(), per_part)


def write_manifest_tables(target: Store | str | Path, summary: Manifest, tables: Iterable[pa.Table],
                          per_part: int = PART_MESSAGES) -> str:
    """`write_manifest_rows` of the rows as Arrow tables of COLUMNS, in manifest order, of any lengths: the same
    bytes (at most one part's rows held)."""
    import pyarrow as pa

    if summary.messages:
        raise ValueError("the summary's messages go in `messages`, not in the summary")
    if per_part < 1:
        raise ValueError(f"a part holds at least one message, not {per_part}")
    store, base = _place(target, summary.incident)
    items: list[ManifestPart] = []
    held: list[pa.Table] = []
    count = first = 0

    def flush(part: pa.Table) -> None:
        nonlocal first
        data = _table_bytes(part)
        key = f"messages-{len(items):05d}.parquet"
        store.put(base + key, data)
        items.append(ManifestPart(key=key, first=first, messages=len(part), bytes=len(data),
                                  sha256=hashlib.sha256(data).hexdigest()))
        first += len(part)

    for t in tables:
        held.append(t)
        count += len(t)
        while count >= per_part:
            rows = pa.concat_tables(held)
            flush(rows.slice(0, per_part))
            held, count = [rows.slice(per_part)], count - per_part
    if count:
        flush(pa.concat_tables(held))
    if first != summary.totals.messages:
        raise ValueError(f"{first} messages written; the summary's totals say {summary.totals.messages}")
    parts = ManifestParts(per_part=per_part, columns=COLUMNS, items=items)
    store.put(base + SUMMARY, summary_bytes(summary, parts))
    return base + SUMMARY


def split_manifest(manifest: Manifest) -> tuple[Manifest, list[ManifestMessage]]:
    """(the summary, the messages) of a whole manifest held in memory."""
    return manifest.model_copy(update={"messages": []}), manifest.messages


def put_manifest(target: Store | str | Path, manifest: Manifest, per_part: int = PART_MESSAGES) -> str:
    """Write a whole in-memory manifest as summary + parts."""
    summary, messages = split_manifest(manifest)
    return write_manifest_parts(target, summary, messages, per_part)


def write_manifest(manifest: Manifest, out: Path, per_part: int = PART_MESSAGES) -> Path:
    """A manifest into a folder: out/manifest.json plus out/messages-*.parquet."""
    return Path(out) / put_manifest(Path(out), manifest, per_part)


# --- reading

class ManifestReader:
    """One manifest, summary and messages, read part by part: `summary` (a Manifest without messages),
    `iter_messages()`, `get(id)`, `at(positions)`, `columns()` (the small columns, part by part), `page(...)`.

    Over a store (`ManifestReader(store, incident)`) or a folder (`ManifestReader(path)`). A manifest in one
    file (messages inline) is read through the same calls. ManifestError for a summary, part or message that
    cannot be read, naming it; StoreError (from the store) for a missing manifest.json."""

    def __init__(self, source: Store | str | Path, incident: str | None = None, *, data: bytes | None = None,
                 key: str | None = None) -> None:
        if key is not None and not isinstance(source, (str, Path)):
            # a summary at another key: a store whose root is a triage folder (key "manifest.json")
            if not key.endswith(SUMMARY):
                raise ValueError(f"{key!r} is not a manifest.json")
            self.store, self.base = source, key[: -len(SUMMARY)]
        else:
            if isinstance(source, (str, Path)) and not (Path(source) / SUMMARY).is_file():
                raise StoreError(f"{Path(source) / SUMMARY}: no such file")
            self.store, self.base = _place(source, incident)
        self.key = self.base + SUMMARY
        raw = self.store.get(self.key) if data is None else data
        self.sha256 = hashlib.sha256(raw).hexdigest()
        try:
            m = Manifest.model_validate_json(raw, context={"summary": True})
        except ValidationError as e:
            raise ManifestError(f"{self.key}: {_first_error(e)}") from None
        self._inline: list[ManifestMessage] | None = None
        if m.parts is None:
            self._inline, m.messages = m.messages, []
        self.summary = m
        self.parts: list[ManifestPart] = m.parts.items if m.parts else []
        counted = sum(p.messages for p in self.parts)
        if self._inline is None and counted != m.totals.messages:  # a part left out of the list, or one too many
            raise ManifestError(f"{self.key}: holds {counted} messages; its totals say {m.totals.messages}")
        at = 0
        for p in self.parts:
            if p.first != at:
                raise ManifestError(f"{self.key}: part {p.key} starts at message {p.first}, not {at}")
            at += p.messages
        self._cache: OrderedDict[int, bytes] = OrderedDict()  # the last parts read, checked

    def __len__(self) -> int:
        return len(self._inline) if self._inline is not None else self.summary.totals.messages

    @property
    def parted(self) -> bool:
        return self._inline is None

    # --- parts
    def _part(self, i: int) -> bytes:
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        p = self.parts[i]
        key = self.base + p.key
        try:
            data = self.store.get(key)
        except StoreError:
            raise ManifestError(f"{key}: part {i + 1} of {len(self.parts)} is missing") from None
        if len(data) != p.bytes or hashlib.sha256(data).hexdigest() != p.sha256:
            raise ManifestError(f"{key}: part {i + 1} of {len(self.parts)} is not the one {self.key} names "
                                "(changed or corrupt)")
        self._cache[i] = data
        while len(self._cache) > 2:
            self._cache.popitem(last=False)
        return data

    def _file(self, i: int) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        key = self.base + self.parts[i].key
        try:
            f = pq.ParquetFile(pa.BufferReader(self._part(i)))
        except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
            raise ManifestError(f"{key}: not a Parquet table ({e})") from None
        if f.metadata.num_rows != self.parts[i].messages:
            raise ManifestError(f"{key}: {f.metadata.num_rows} rows; {self.key} says {self.parts[i].messages}")
        return f

    def _read(self, i: int, columns: list[str], row_groups: list[int] | None = None) -> pa.Table:
        key = self.base + self.parts[i].key
        f = self._file(i)
        try:
            if row_groups is None:
                return f.read(columns=columns)
            return f.read_row_groups(row_groups, columns=columns)
        except (OSError, ValueError, KeyError) as e:
            raise ManifestError(f"{key}: cannot be read ({e})") from None

    def _inline_tables(self, per: int = ROW_GROUP * 10) -> Iterator[pa.Table]:
        assert self._inline is not None
        for s in range(0, len(self._inline), per):
            yield rows_table([part_row(m) for m in self._inline[s:s + per]])

    def columns(self, names: Sequence[str] = tuple(SMALL)) -> Iterator[pa.Table]:
        """The named columns, a table per part in order (never the whole manifest at once)."""
        if self._inline is not None:
            for t in self._inline_tables():
                yield t.select(list(names))
            return
        for i in range(len(self.parts)):
            yield self._read(i, list(names))

    # --- messages
    def _parse(self, text: str, where: str) -> ManifestMessage:
        try:
            return ManifestMessage.model_validate_json(text)
        except ValidationError as e:
            raise ManifestError(f"{where}: a message is not valid: {_first_error(e)}") from None

    def iter_messages(self) -> Iterator[ManifestMessage]:
        """Every message in manifest order, a row group at a time."""
        if self._inline is not None:
            yield from self._inline
            return
        for i, p in enumerate(self.parts):
            f = self._file(i)
            where = self.base + p.key
            for g in range(f.num_row_groups):
                try:
                    col = f.read_row_group(g, columns=["message"]).column(0)
                except (OSError, ValueError) as e:
                    raise ManifestError(f"{where}: cannot be read ({e})") from None
                for text in col.to_pylist():
                    yield self._parse(text, where)

    def at(self, positions: Sequence[int]) -> list[ManifestMessage]:
        """The messages at these positions of the manifest order, in the order asked."""
        if self._inline is not None:
            return [self._inline[i] for i in positions]
        import bisect

        starts = [p.first for p in self.parts]
        want: dict[tuple[int, int], list[int]] = {}
        for pos in positions:
            if not 0 <= pos < len(self):
                raise IndexError(pos)
            i = bisect.bisect_right(starts, pos) - 1
            want.setdefault((i, (pos - starts[i]) // ROW_GROUP), []).append(pos)
        got: dict[int, ManifestMessage] = {}
        for (i, g), poss in want.items():
            col = self._read(i, ["message"], [g]).column(0)
            base = starts[i] + g * ROW_GROUP
            for pos in poss:
                got[pos] = self._parse(col[pos - base].as_py(), self.base + self.parts[i].key)
        return [got[p] for p in positions]

    def find(self, mid: str) -> int | None:
        """The position of the message with this id (a scan of the id column), or None."""
        import pyarrow.compute as pc

        at = 0
        for t in self.columns(["id"]):
            hit: int | None = pc.index(t.column(0), mid).as_py()
            if hit is not None and hit >= 0:
                return at + hit
            at += t.num_rows
        return None

    def get(self, mid: str) -> ManifestMessage | None:
        pos = self.find(mid)
        return None if pos is None else self.at([pos])[0]

    def page(self, verdict: str | None = None, campaign: int | None = None, review_group: int | None = None,
             offset: int = 0, limit: int = 50) -> tuple[int, list[ManifestMessage]]:
        """(how many match, the messages offset..offset+limit of them) filtered by the triage verdict, the
        campaign (-1: in none) and the review group (-1: in none)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        hits: list[int] = []
        total = 0
        at = 0
        for t in self.columns(["verdict", "campaign", "review_group"]):
            keep = pa.array([True] * t.num_rows)
            if verdict is not None:
                keep = pc.and_(keep, pc.equal(t.column("verdict"), verdict))
            for name, want in (("campaign", campaign), ("review_group", review_group)):
                if want is not None:
                    keep = pc.and_(keep, pc.equal(pc.fill_null(t.column(name), -1), want))
            idx = pc.indices_nonzero(keep).to_pylist()
            lo, hi = max(0, offset - total), max(0, offset + limit - total)
            hits.extend(at + i for i in idx[lo:hi])
            total += len(idx)
            at += t.num_rows
        return total, self.at(hits)

    def whole(self) -> Manifest:
        """The manifest with every message in memory: for small manifests and tests only."""
        return self.summary.model_copy(update={"messages": list(self.iter_messages()), "parts": None})


def read_manifest(source: Store | str | Path, incident: str | None = None) -> Manifest:
    """A whole manifest in memory (summary + every part), e.g. for a test or a small incident."""
    return ManifestReader(source, incident).whole()


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0] if e.errors() else {"msg": str(e), "loc": ()}
    loc = ".".join(str(x) for x in err.get("loc", ()))
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])
