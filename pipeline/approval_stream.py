"""An approval made, checked and cut into instructions as a stream: a million messages never held as objects.

An approval's bytes are its canonical form, `Approval`'s compact JSON, `changes` before the three lists. They
are a function of the manifest, the decision log and the approval's own few fields, so dispatch makes them
again from the manifest and compares digests instead of parsing and diffing a million entries; the lists go
to temporary files (one ApprovedMessage JSON a line) on the way, and the instructions are cut from those.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import IO

from pydantic import ValidationError

from pipeline.instructions import Approval, ApprovedMessage, Instruction
from pipeline.manifest_io import ManifestReader
from pipeline.models import Manifest, Verdict

KINDS = ("replay", "purge", "hold")
SPOOL = 32 * 2**20  # bytes of a list kept in memory before it goes to a temporary file


class Lists:
    """The replay, purge and hold lists of an approval, one ApprovedMessage JSON a line, in manifest order."""

    def __init__(self) -> None:
        self.files: dict[str, IO[bytes]] = {k: tempfile.SpooledTemporaryFile(SPOOL) for k in KINDS}
        self.counts = dict.fromkeys(KINDS, 0)

    def add(self, kind: str, item: bytes) -> None:
        self.files[kind].write(item + b"\n")  # compact JSON has no raw newline
        self.counts[kind] += 1

    def items(self, kind: str) -> Iterator[bytes]:
        f = self.files[kind]
        f.seek(0)
        for line in f:
            yield line[:-1]

    def close(self) -> None:
        for f in self.files.values():
            f.close()


@contextlib.contextmanager
def approved_lists(manifest: Manifest | ManifestReader, overrides: dict[str, Verdict]) -> Iterator[Lists]:
    """What approving the manifest with these verdict changes replays, purges and holds (review stays held)."""
    messages = manifest.messages if isinstance(manifest, Manifest) else manifest.iter_messages()
    lists = Lists()
    try:
        for m in messages:
            v = overrides.get(m.id, m.verdict)
            am = ApprovedMessage(id=m.id, path=m.path, sha256=m.sha256, queue_id=m.queue_id, envelope=m.envelope)
            lists.add("replay" if v is Verdict.valid else "purge" if v is Verdict.spam else "hold",
                      ApprovedMessage.__pydantic_serializer__.to_json(am))
        yield lists
    finally:
        lists.close()


def approval_chunks(head: Approval, lists: Lists) -> Iterator[bytes]:
    """The approval's canonical bytes in pieces: `head` (its lists empty) with the lists put in."""
    if head.replay or head.purge or head.hold:
        raise ValueError("the head of an approval has empty lists")
    rest = Approval.__pydantic_serializer__.to_json(head)
    for kind in KINDS:
        token = b'"' + kind.encode() + b'":[]'  # a key: inside a string every quote is escaped
        i = rest.index(token) + len(token) - 1
        yield rest[:i]
        for n, item in enumerate(lists.items(kind)):
            yield b"," + item if n else item
        rest = rest[i:]
    yield rest


def approval_bytes(head: Approval, lists: Lists) -> bytes:
    # into one growing buffer: b"".join of a generator would hold every piece as an object, then the whole
    buf = io.BytesIO()
    for chunk in approval_chunks(head, lists):
        buf.write(chunk)
    return buf.getvalue()


def head_of(data: bytes) -> Approval | None:
    """An approval's fields without its lists, read without parsing them; None if it is not in canonical form
    (written by an older version, by hand, or forged: then it is read whole)."""
    i = data.find(b',"replay":[')
    if i < 0:
        return None
    try:
        return Approval.model_validate_json(data[:i] + b',"replay":[],"purge":[],"hold":[]}')
    except ValidationError:
        return None


def digest(head: Approval, lists: Lists) -> str:
    h = hashlib.sha256()
    for chunk in approval_chunks(head, lists):
        h.update(chunk)
    return h.hexdigest()


def instruction_id_of(a: Approval) -> str:
    """As pipeline.instructions.instruction_from_approval names it."""
    return hashlib.sha256(f"{a.incident}\n{a.host}\n{a.approval_id}".encode()).hexdigest()[:32]


def instructions(head: Approval, lists: Lists, issued_at: datetime, ttl: timedelta,
                 budget: int) -> Iterator[Instruction]:
    """The approval's instruction, cut into parts whose signed JSON fits one SQS message (replays first), as
    pipeline.service.dispatch.split cuts a whole one: ids <id>-0001, -0002, ... when there are several."""
    iid = instruction_id_of(head)

    def make(part: list[tuple[str, bytes]], name: str) -> Instruction:
        return Instruction(instruction_id=name, incident=head.incident, host=head.host,
                           approval_id=head.approval_id, issued_at=issued_at, expires_at=issued_at + ttl,
                           replay=[ApprovedMessage.model_validate_json(b) for k, b in part if k == "replay"],
                           purge=[ApprovedMessage.model_validate_json(b) for k, b in part if k == "purge"])

    part: list[tuple[str, bytes]] = []
    size = 0
    made = 0
    for kind in ("replay", "purge"):
        for item in lists.items(kind):
            # the size it takes inside the signed body, where the payload is a JSON string escaped again
            n = len(json.dumps(item.decode(), ensure_ascii=False)) + 1
            if part and size + n > budget - 2_000:
                made += 1
                yield make(part, f"{iid}-{made:04d}")
                part, size = [], 0
            part.append((kind, item))
            size += n
    yield make(part, iid if not made else f"{iid}-{made + 1:04d}")
