"""spoolsweep's own snapshot: `index.jsonl` (one IndexEntry per message) beside the raw message files.

Layout (optionally under one top folder):
    spoolsweep-snapshot.json   {"format": "spoolsweep-snapshot", "version": 1, "host": ..., "mta": ...}
    index.jsonl                {"path": "messages/0001.eml", "sha256": ..., "size": ..., "envelope": {...}}
    messages/...               the raw RFC 822 bytes, exactly as the MTA would deliver them
Writers put the two JSON files first so a reader can stream; a reader that meets messages before
the index holds them until the index arrives.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Sequence

from pydantic import ValidationError

from pipeline.archive import ArchiveReport, Member
from pipeline.models import IndexEntry
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
        index: dict[str, IndexEntry] | None = None
        root = ""
        pending: list[Member] = []
        seen: set[str] = set()
        mta: str | None = None
        for m in members:
            if _root_of(m.path, META) is not None:
                report.skipped.append(m.path)
                mta = self._meta(m, report)
                continue
            r = _root_of(m.path, INDEX)
            if r is not None and index is None:
                root = r
                index = self._load_index(m, root, report)
                for p in pending:
                    yield self._one(p, index, seen, mta)
                pending.clear()
                continue
            if index is None:
                pending.append(m)
            else:
                yield self._one(m, index, seen, mta)
        if index is None:
            report.defects.append(f"{INDEX} missing: envelopes unknown for {len(pending)} messages")
            index = {}
        for p in pending:
            yield self._one(p, index, seen, mta)
        for path, entry in index.items():
            if path not in seen:
                m = Member(path, None, entry.size, 0.0, entry.sha256,
                           ["listed in index.jsonl but missing from the snapshot"])
                f = found_from_member(m, self.name, envelope=entry.envelope)
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

    def _load_index(self, m: Member, root: str, report: ArchiveReport) -> dict[str, IndexEntry]:
        out: dict[str, IndexEntry] = {}
        if m.data is None:
            report.defects.append(f"{m.path}: too large to read")
            return out
        for n, line in enumerate(m.data.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                e = IndexEntry.model_validate_json(line)
            except (ValueError, ValidationError) as err:
                report.defects.append(f"{m.path}:{n}: bad index entry: {str(err).splitlines()[0]}")
                continue
            out[posixpath.normpath(root + e.path)] = e
        return out

    def _one(self, m: Member, index: dict[str, IndexEntry], seen: set[str], mta: str | None) -> Found:
        key = posixpath.normpath(m.path)
        entry = index.get(key)
        if entry is None:
            f = found_from_member(m, self.name, defects=["not listed in index.jsonl: envelope unknown"])
            f.raw.mta = mta
            return f
        seen.add(key)
        f = found_from_member(m, self.name, envelope=entry.envelope)
        f.raw.mta = mta
        if m.sha256 and entry.sha256 != m.sha256:
            f.raw.defects.append(f"sha256 differs from index.jsonl ({entry.sha256[:12]}…)")
        return f
