"""The queue formats spoolsweep reads, and detection of which one a snapshot is."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

from pipeline.archive import ArchiveReport, Member, iter_members
from pipeline.errors import UnknownFormat
from pipeline.policy import Limits
from pipeline.readers.base import Found, Reader
from pipeline.readers.canonical import CanonicalReader
from pipeline.readers.eml import EmlReader

# Other formats register here, one module each (see readers/base.py).
READERS: dict[str, Reader] = {r.name: r for r in (CanonicalReader(), EmlReader())}

_PEEK = 256


def register(reader: Reader) -> None:
    READERS[reader.name] = reader


def _load_optional() -> None:
    import importlib

    for mod in ("postfix", "exim", "sendmail", "mbox", "maildir"):
        try:
            m = importlib.import_module(f"pipeline.readers.{mod}")
        except ModuleNotFoundError:
            continue
        reader = getattr(m, "READER", None)
        if reader is not None:
            register(reader)


_load_optional()


def detect(peek: list[Member]) -> Reader:
    paths = [m.path for m in peek]
    scored = sorted(((r.score(paths, peek[:32]), r.name) for r in READERS.values()), reverse=True)
    if not scored or scored[0][0] <= 0:
        raise UnknownFormat(f"none of {', '.join(sorted(READERS))} recognised it")
    return READERS[scored[0][1]]


def read_snapshot(source: str | Path, limits: Limits, fmt: str | None = None,
                  report: ArchiveReport | None = None) -> tuple[str, Iterator[Found], ArchiveReport]:
    """Open a snapshot and return (format, messages, report); the report fills in as messages are read."""
    report = report or ArchiveReport()
    members = iter_members(source, limits, report)
    peek = list(itertools.islice(members, _PEEK))
    if fmt is not None:
        if fmt not in READERS:
            raise UnknownFormat(f"unknown format {fmt!r}; known: {', '.join(sorted(READERS))}")
        reader = READERS[fmt]
    elif not peek:
        return "empty", iter(()), report
    else:
        reader = detect(peek)
    return reader.name, reader.read(itertools.chain(peek, members), report), report
