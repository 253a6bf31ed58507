"""What every MTA adapter does: freeze, list, locate by identity, release, purge; each step safe to repeat.

A frozen queue (Postfix's hold queue, Exim's frozen messages, a pickup folder moved aside) holds
messages; a Deliverer sends one onward (SMTP re-injection) when the queue does not release it
itself. Every method that changes something must be idempotent: after a SIGKILL the runner calls
it again for any action whose journal entry says `intent` or `commit`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.journal import Phase
from pipeline.models import Envelope

Commit = Callable[[], None]


@dataclass(slots=True)
class QueuedMessage:
    """One frozen message: its name in the snapshot, its queue id, envelope and RFC 822 digest."""

    name: str
    queue_id: str | None
    envelope: Envelope
    sha256: str
    size: int
    source: Path | None = None
    extra: dict = field(default_factory=dict)
    # what the queue's reader (pipeline/readers) found wrong with its files: the snapshot's index carries it
    # (IndexEntry.defects), so triage holds the message for review as it would reading the spool itself
    defects: list[str] = field(default_factory=list)


@dataclass
class FreezeReport:
    what: str
    messages: int
    bytes: int
    notes: list[str] = field(default_factory=list)


def said(stderr: bytes, limit: int = 300) -> str:
    """What a tool wrote on stderr, as one line (an error names its cause on one line, however many it wrote)."""
    return "; ".join(ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip())[:limit]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Queue(ABC):
    """A frozen queue on this host."""

    name: str = ""
    releases_natively: bool = False

    @abstractmethod
    def freeze(self, dry_run: bool = False, resume: bool = False) -> FreezeReport:
        """Stop delivery of what is queued now (new mail keeps flowing); report what was frozen. `resume`: this
        snapshot's own freeze was begun before (the journal says so), and may have been cut short."""

    @abstractmethod
    def list(self) -> Iterator[QueuedMessage]:
        """Every frozen message, digests computed, in a stable order."""

    @abstractmethod
    def locate(self, name: str, queue_id: str | None) -> QueuedMessage | None:
        """The frozen message with this snapshot name / queue id, or None if it is not in the queue."""

    @abstractmethod
    def content(self, qm: QueuedMessage) -> bytes:
        """The RFC 822 bytes of a frozen message (what its sha256 is of)."""

    @abstractmethod
    def remove(self, qm: QueuedMessage) -> None:
        """Delete a frozen message; deleting one that is already gone is not an error."""

    def release(self, qm: QueuedMessage, commit: Commit, resumed: Phase | None) -> None:
        """Let the MTA itself deliver the message (only for queues with releases_natively)."""
        raise NotImplementedError(f"{self.name} cannot release natively; use SMTP re-injection")

    def quarantine(self, qm: QueuedMessage, folder: Path) -> Path:
        """Copy the message (RFC 822 bytes, envelope beside) to a quarantine folder before a purge."""
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / f"{qm.sha256}.eml"
        if not dest.exists():
            tmp = dest.with_name(f".{dest.name}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(self.content(qm))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
            (folder / f"{qm.sha256}.envelope.json").write_text(qm.envelope.model_dump_json(exclude_none=True))
        return dest

    def full_envelope(self, qm: QueuedMessage) -> Envelope:
        """The message's envelope, for adapters whose `locate` leaves it out to stay fast."""
        return qm.envelope

    def flush(self) -> None:
        """Ask the MTA to deliver what was released (Postfix: postqueue -f)."""
        return None

    def after_reinjection(self, qm: QueuedMessage) -> None:
        """A message re-injected over SMTP leaves the frozen queue."""
        self.remove(qm)


class Deliverer(ABC):
    """Sends one message onward; calls `commit()` just before its point of no return."""

    @abstractmethod
    def send(self, data: bytes, envelope: Envelope, commit: Commit, key: str = "") -> str:
        """Deliver; return the MTA's answer. Raises MtaError if it was not accepted."""

    def resolve(self, key: str) -> tuple[str, str]:
        """After a crash past `commit`: unsent | delivered | failed | uncertain, and why."""
        return "uncertain", ("the agent stopped after handing over the final dot; the MTA may or may not have "
                             "kept it; left frozen and not sent again")

    def close(self) -> None:
        return None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError:
        shutil.move(src, dest)
