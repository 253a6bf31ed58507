"""spoolsweep's own snapshot: `index.jsonl` (one IndexEntry per message) beside the raw message files.

Layout (optionally under one top folder):
    spoolsweep-snapshot.json   {"format": "spoolsweep-snapshot", "version": 1, "host": ..., "mta": ...}
    index.jsonl                {"path": "messages/0001.eml", "sha256": ..., "size": ..., "envelope": {...}}
    messages/...               the raw RFC 822 bytes, exactly as the MTA would deliver them
Writers put the two JSON files first so a reader can stream; a reader that meets messages before
the index holds them until the index arrives. An index line may carry `defects`: a part cut from
another snapshot (pipeline.shards) carries on what was found wrong with each message there, and
its spoolsweep-snapshot.json names that snapshot under "cut".
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterator, Sequence

from pydantic import ValidationError

from pipeline.archive import ArchiveReport, Member
from pipeline.models import IndexEntry, integrity_defects
from pipeline.readers.base import Found, Reader, found_from_member

INDEX = "index.jsonl"
META = "spoolsweep-snapshot.json"


def _root_of(path: str, leaf: str) -> str | None:
    if path == leaf:
        return ""
    if path.endswith("/" + leaf):
        return path[: -len(leaf)]
    return None


class CanonicalReader(Reader):
    name = "canonical"
    description = "spoolsweep snapshot (index.jsonl + messages/)"

    def score(self, paths: Sequence[str], samples: Sequence[Member]) -> int:
        for p in paths[:16]:
            if _root_of(p, META) is not None:
                return 100
            if _root_of(p, INDEX) is not None:
                return 90
        return 0

    def read(self, members: Iterator[Member], report: ArchiveReport) -> Iterator[Found]:
        index: _Index | None = None
        root = ""
        pending: list[Member] = []
        mta: str | None = None
        fmt = self.name
        for m in members:
            if _root_of(m.path, META) is not None:
                report.skipped.append(m.path)
                mta = self._meta(m, report)
                fmt = self._format(report.meta, mta)
                continue
            r = _root_of(m.path, INDEX)
            if r is not None and index is None:
                root = r
                index = _Index.load(m, root, report)
                for p in pending:
                    yield self._one(p, index, mta, fmt)
                pending.clear()
                continue
            if index is None:
                pending.append(m)
            else:
                yield self._one(m, index, mta, fmt)
        if index is None:
            report.defects.append(f"{INDEX} missing: envelopes unknown for {len(pending)} messages")
            index = _Index()
        for p in pending:
            yield self._one(p, index, mta, fmt)
        for entry in index.unseen():
            # a part cut from a snapshot lists a message it holds no bytes of (too large to read there, or
            # missing there) with the defects that said so: they say it again, and alone
            carried = entry.defects or []
            m = Member(entry.path, None, entry.size, 0.0, entry.sha256,
                       [] if integrity_defects(carried) else ["listed in index.jsonl but missing from the snapshot"])
            f = found_from_member(m, fmt, envelope=entry.envelope, defects=carried)
            f.raw.mta = mta
            yield f

    def _meta(self, m: Member, report: ArchiveReport) -> str | None:
        """The snapshot's description: which MTA it came from says what its envelopes can be trusted to
        hold (an IIS pickup folder stores no client address), and `site` is the MTA's own configuration."""
        try:
            meta = json.loads(m.data or b"")
        except (ValueError, UnicodeDecodeError) as e:
            report.defects.append(f"{m.path}: not JSON ({e}); the snapshot's MTA is unknown")
            return None
        if not isinstance(meta, dict):
            report.defects.append(f"{m.path}: not a JSON object; the snapshot's MTA is unknown")
            return None
        report.meta = meta
        mta = meta.get("mta")
        return mta if isinstance(mta, str) else None

    def _format(self, meta: dict[str, object], mta: str | None) -> str:
        """The format its messages were read as: a part cut from a queue of another format (pipeline.shards)
        names that format, as its `mta` does (so which queue a message came from, and what its envelope can
        be trusted to hold, read the same either way: pipeline.verdicts.queue_kind)."""
        cut = meta.get("cut")
        fmt = cut.get("format") if isinstance(cut, dict) else None
        return fmt if isinstance(fmt, str) and fmt == mta and fmt != self.name else self.name

    def _one(self, m: Member, index: _Index, mta: str | None, fmt: str) -> Found:
        entry = index.take(posixpath.normpath(m.path))
        if entry is None:
            f = found_from_member(m, fmt, defects=["not listed in index.jsonl: envelope unknown"])
            f.raw.mta = mta
            return f
        # (a defect the part's own read finds again, an unsafe name say, is told once)
        carried = [d for d in entry.defects or () if d not in m.defects]
        f = found_from_member(m, fmt, envelope=entry.envelope, defects=carried)
        f.raw.mta = mta
        if m.sha256 and entry.sha256 != m.sha256:
            f.raw.defects.append(f"sha256 differs from index.jsonl ({entry.sha256[:12]}…)")
        return f


class _Index:
    """index.jsonl held as its lines, each read again when its message arrives: a million entries held
    as models took 3 GB; as lines, a third of that and no more than the file itself. Every line is
    checked once when the index is read, so a bad one is a defect there, as before."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.at: dict[str, int] = {}  # normalised path (under the index's folder) -> its line
        self.seen = bytearray()

    @classmethod
    def load(cls, m: Member, root: str, report: ArchiveReport) -> _Index:
        out = cls()
        if m.data is None:
            report.defects.append(f"{m.path}: too large to read")
            return out
        data, m.data = m.data, None  # read once, here: the index of a million messages is 700 MB
        # line by line from the bytes, not a decoded copy and a list of every line at once
        for n, raw in enumerate(io.BytesIO(data), 1):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line.strip():
                continue
            try:
                e = IndexEntry.model_validate_json(line)
            except (ValueError, ValidationError) as err:
                report.defects.append(f"{m.path}:{n}: bad index entry: {str(err).splitlines()[0]}")
                continue
            key = posixpath.normpath(root + e.path)
            if key in out.at:  # the last line for a path is the one that counts, as in a dict
                out.lines[out.at[key]] = line
            else:
                out.at[key] = len(out.lines)
                out.lines.append(line)
        out.seen = bytearray(len(out.lines))
        return out

    def take(self, key: str) -> IndexEntry | None:
        """The entry for a message's path (again for a second copy of one name), marked as met."""
        i = self.at.get(key)
        if i is None:
            return None
        self.seen[i] = 1
        return IndexEntry.model_validate_json(self.lines[i])

    def unseen(self) -> Iterator[IndexEntry]:
        """Entries whose message never came, in the index's order."""
        for i, line in enumerate(self.lines):
            if not self.seen[i]:
                yield IndexEntry.model_validate_json(line)
