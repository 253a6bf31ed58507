"""The reader interface: one module per queue format turns archive members into messages."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pipeline.archive import ArchiveReport, Member
from pipeline.models import Envelope, RawMessage


@dataclass(slots=True)
class Found:
    """A message a reader found: its description, its RFC 822 bytes (None if not held) and digest."""

    raw: RawMessage
    data: bytes | None
    sha256: str
    size: int

    def __reduce__(self) -> tuple[type[Found], tuple[RawMessage, bytes | None, str, int]]:
        # a plain tuple crosses to the parser processes four times faster than the slots default
        return (Found, (self.raw, self.data, self.sha256, self.size))


class Reader(ABC):
    """A queue format. `score` looks at member paths; `read` turns the member stream into messages.

    A reader never drops what it cannot understand: a member it cannot read becomes a Found with a
    defect (so triage says `review`), and a member that is not a message at all (a log, a pid
    file) is named in `report.skipped`.
    """

    name: str = ""
    description: str = ""

    @abstractmethod
    def score(self, paths: Sequence[str], samples: Sequence[Member]) -> int:
        """How sure this reader is that the snapshot is its format (0 = not at all, 100 = certain)."""

    @abstractmethod
    def read(self, members: Iterator[Member], report: ArchiveReport) -> Iterator[Found]:
        """Yield every message in the stream."""


def found_from_member(m: Member, fmt: str, envelope: Envelope | None = None,
                      data: bytes | None = None, defects: Sequence[str] = ()) -> Found:
    """A Found for a member whose bytes are the message (or for which data is given)."""
    body = m.data if data is None else data
    if body is None:
        sha, size = m.sha256 or "", m.size
    elif data is None and m.sha256:
        sha, size = m.sha256, len(body)
    else:
        sha, size = hashlib.sha256(body).hexdigest(), len(body)
    raw = RawMessage(path=m.path, envelope=envelope or Envelope(), defects=[*m.defects, *defects], format=fmt)
    return Found(raw, body, sha, size)
