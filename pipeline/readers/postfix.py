"""Postfix queue files read natively: the binary record format under maildrop/incoming/active/deferred/hold/corrupt.

A queue file is a sequence of records: one type byte, a length (7 bits per byte, low bits first,
high bit set while more follow), then that many bytes. Three segments follow one another:
envelope (size, time, sender, recipients, named attributes), content (from `M` to `X`: `N` lines
and `L` partial lines) and extracted (recipients and attributes taken from headers, up to `E`).
`p` records point elsewhere in the file (where cleanup appended headers or recipients later) and
are followed, as postcat does. Nothing here trusts a length, an offset or an order: each lie
becomes a defect on the message, so triage says `review` and the run goes on.
The message bytes (and so the sha256 that names the message) are the content exactly as
`postcat -bh -q ID` prints it: N records end in LF, L records continue the line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pipeline.archive import ArchiveReport, Member
from pipeline.models import Envelope
from pipeline.readers.base import Found, Reader, found_from_member

QUEUES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")
_QUEUE_RE = re.compile(r"(?:^|/)(" + "|".join(QUEUES) + r")/(?:[0-9A-Za-z]/)*([0-9A-Za-z]{5,40})$")
_LOG_RE = re.compile(r"(?:^|/)(defer|bounce)/(?:[0-9A-Za-z]/)*([0-9A-Za-z]{5,40})$")
ENVELOPE_TYPES = frozenset(b"CTcFILSDROWAf>PV<ionm@Kwp")
CONTENT_TYPES = frozenset(b"NLwp")
EXTRACTED_TYPES = frozenset(b"ROADre@PV<ionwp>")
KNOWN_TYPES = ENVELOPE_TYPES | CONTENT_TYPES | EXTRACTED_TYPES | frozenset(b"MXE")
MAX_JUMPS = 10_000
MAX_RECORDS = 5_000_000


@dataclass(slots=True)
class QueueFile:
    """What one queue file says, and what was wrong with it."""

    envelope: Envelope = field(default_factory=Envelope)
    content: bytes = b""
    attrs: dict[str, str] = field(default_factory=dict)
    size_fields: list[int] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    complete: bool = False


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


class _Content:
    """Content lines as read: every `N` line gets a newline at the end except those listed in `partial` (`L`)."""

    __slots__ = ("lines", "partial")

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.partial: list[int] = []

    def add(self, rtype: int, payload: bytes) -> None:
        if rtype == 76:  # 'L': a piece of a long line, no newline after it
            self.partial.append(len(self.lines))
        self.lines.append(payload)

    def join(self) -> bytes:
        if not self.lines:
            return b""
        if not self.partial:
            return b"\n".join(self.lines) + b"\n"
        cut = set(self.partial)
        return b"".join(x if i in cut else x + b"\n" for i, x in enumerate(self.lines))


def _records(data: bytes, defects: list[str], sink: list[_Content | None]) -> Iterator[tuple[int, bytes, int]]:
    """Yield (type, payload, offset) in reading order, following pointer records safely.

    While sink[0] is set (the caller is in the content segment), content records go straight
    into it instead of being yielded: they are most of a file, and this loop is the reader's cost.
    """
    pos, n = 0, len(data)
    visited: set[int] = set()
    count = 0
    while pos < n:
        content = sink[0]
        if content is not None:
            # fast path: N records with a one-byte length (lines under 128 bytes)
            out = content.lines
            while pos + 1 < n:
                ln = data[pos + 1]
                if data[pos] != 78 or ln & 0x80 or pos + 2 + ln > n:  # 'N'
                    break
                out.append(data[pos + 2:pos + 2 + ln])
                pos += 2 + ln
            if pos >= n:
                break
        start = pos
        count += 1
        if count > MAX_RECORDS:
            defects.append(f"more than {MAX_RECORDS} records; stopped reading")
            return
        rtype = data[pos]
        if rtype not in KNOWN_TYPES:
            defects.append(f"garbage: unknown record type 0x{rtype:02x} at offset {start}")
            return
        pos += 1
        length = shift = 0
        while True:
            if pos >= n:
                defects.append(f"truncated: record length at offset {start} cut off")
                return
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift >= 35:
                defects.append(f"bad record length at offset {start}: more than 5 length bytes")
                return
        if length > n - pos:
            defects.append(f"bad record length at offset {start}: type {chr(rtype)!r} claims {length} bytes, "
                           f"only {n - pos} left (truncated or corrupt)")
            return
        payload = data[pos:pos + length]
        pos += length
        if rtype == ord("p"):
            try:
                target = int(payload.strip() or b"0")
            except ValueError:
                defects.append(f"bad pointer record at offset {start}: {payload[:20]!r}")
                return
            if target == 0:
                continue
            if not 0 < target < n or target in visited or len(visited) >= MAX_JUMPS:
                defects.append(f"bad pointer record at offset {start}: to {target} (out of file or a loop)")
                return
            visited.add(target)
            pos = target
            continue
        if content is not None and (rtype == 78 or rtype == 76):
            content.add(rtype, payload)
            continue
        yield rtype, payload, start


# Where mail came back from a content filter (amavis) with XFORWARD, client_* is the filter on
# 127.0.0.1 and log_* the real origin, which is what a verdict needs; otherwise they are equal.
_ORIGIN = {"log_client_address": "client_address", "log_client_name": "client_name",
           "log_helo_name": "helo", "log_protocol_name": "protocol",
           "client_address": "client_address", "client_name": "client_name", "reverse_client_name": "client_name",
           "helo_name": "helo", "protocol_name": "protocol", "sasl_method": "sasl_method",
           "sasl_username": "sasl_username"}


def _set_attr(env: Envelope, attrs: dict[str, str], name: str, value: str) -> None:
    attrs[name] = value
    field_name = _ORIGIN.get(name)
    if field_name is None:
        return
    if name.startswith("log_") or name.startswith("sasl_") or getattr(env, field_name) is None:
        setattr(env, field_name, value)
    elif name != "reverse_client_name" and f"log_{name}" not in attrs:
        setattr(env, field_name, value)


def _time(payload: bytes) -> datetime | None:
    try:
        sec = int(payload.split()[0])
        return datetime.fromtimestamp(sec, UTC)
    except (ValueError, IndexError, OverflowError, OSError):
        return None


def parse_queue_file(data: bytes, queue_name: str | None = None) -> QueueFile:
    """Read every record of one queue file into an Envelope, the message bytes, and defects."""
    qf = QueueFile()
    env, defects = qf.envelope, qf.defects
    content = _Content()
    segment = "envelope"
    seen_sender = seen_time = False
    first = True
    sink: list[_Content | None] = [None]
    for rtype, payload, offset in _records(data, defects, sink):
        t = chr(rtype)
        if first and queue_name != "maildrop" and t != "C":
            defects.append(f"first record is {t!r}, not the size record 'C'")
        first = False
        if segment == "end":
            continue
        allowed = {"envelope": ENVELOPE_TYPES, "content": CONTENT_TYPES, "extracted": EXTRACTED_TYPES}[segment]
        if t == "M" and segment == "envelope":
            segment = "content"
            sink[0] = content
            continue
        if t == "X" and segment == "content":
            segment = "extracted"
            sink[0] = None
            continue
        if t == "E" and segment in ("extracted", "envelope"):
            if segment == "envelope":
                defects.append("no message content records (end record in the envelope)")
            segment = "end"
            qf.complete = True
            continue
        if rtype not in allowed:
            if t.isprintable() and t in "CTcFILSDROWAfMNXEre@PV<ion>mK":
                defects.append(f"record {t!r} out of order in the {segment} segment at offset {offset}")
                continue
            defects.append(f"garbage: unknown record type 0x{rtype:02x} at offset {offset}")
            break
        if segment == "content":
            if t in ("N", "L"):
                content.add(rtype, payload)
            continue
        if t == "C":
            try:
                qf.size_fields = [int(x) for x in payload.split()]
            except ValueError:
                defects.append(f"bad size record: {payload[:60]!r}")
        elif t == "T":
            seen_time = True
            env.arrival_time = _time(payload)
            if env.arrival_time is None:
                defects.append(f"bad time record: {payload[:40]!r}")
        elif t == "S":
            seen_sender = True
            env.mail_from = _text(payload)
        elif t == "R":
            env.rcpt_to.append(_text(payload))
        elif t == "D":
            env.done_rcpt_to.append(_text(payload))
        elif t == "O":
            env.orig_rcpt_to.append(_text(payload))
        elif t == "A":
            name, sep, value = _text(payload).partition("=")
            if not sep:
                defects.append(f"bad named attribute at offset {offset}: {payload[:40]!r}")
            else:
                _set_attr(env, qf.attrs, name, value)
    qf.content = content.join()
    if qf.size_fields and 0 <= qf.size_fields[0] < len(qf.content):
        defects.append(f"size record says {qf.size_fields[0]} content bytes, found {len(qf.content)}")
    if not qf.complete:
        defects.append(f"truncated: no end record (stopped in the {segment} segment)")
    if not seen_sender:
        defects.append("no sender record")
    if not seen_time and queue_name != "maildrop":
        defects.append("no arrival time record")
    if not env.rcpt_to and not env.done_rcpt_to and qf.complete:
        defects.append("no recipient records")
    return qf


def parse_defer_log(data: bytes) -> str | None:
    """The reasons in a defer/ or bounce/ log, one per recipient: 'rcpt: status reason; ...'."""
    out: list[str] = []
    for block in re.split(rb"\n\s*\n", data):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            k, sep, v = _text(line).partition("=")
            if sep and k.isidentifier():
                fields[k] = v
        if "reason" in fields:
            status = f"{fields['status']} " if "status" in fields else ""
            out.append(f"{fields.get('recipient', '?')}: {status}{fields['reason']}")
    return "; ".join(dict.fromkeys(out))[:4000] or None


def queue_location(path: str) -> tuple[str, str] | None:
    m = _QUEUE_RE.search(path)
    return (m.group(1), m.group(2)) if m else None


class PostfixReader(Reader):
    name = "postfix"
    description = "Postfix queue (/var/spool/postfix: maildrop, incoming, active, deferred, hold, corrupt)"
    hold_limit = 20_000
    hold_bytes = 256 << 20

    def score(self, paths: Sequence[str], samples: Sequence[Member]) -> int:
        by_path = {s.path: s for s in samples}
        hits = binary = layout = 0
        for p in paths:
            if queue_location(p):
                hits += 1
                s = by_path.get(p)
                if s is not None and s.data and s.data[:1] in (b"C", b"T", b"A", b"S"):
                    binary += 1
            elif _LOG_RE.search(p) or p.endswith(("pid/master.pid", "/public/pickup", "/private/defer")):
                # a whole /var/spool/postfix whose first members are defer/ logs or pid files
                layout += 1
        if binary:
            return 95
        if hits:
            return 60
        return 80 if layout else 0

    def read(self, members: Iterator[Member], report: ArchiveReport) -> Iterator[Found]:
        reasons: dict[str, str] = {}
        logs_seen = False
        held: dict[str, Found] = {}
        held_size = 0
        for m in members:
            if loc := queue_location(m.path):
                found = self._one(m, *loc)
                qid = loc[1]
                if qid in reasons:
                    found.raw.envelope.deferred_reason = reasons[qid]
                elif (loc[0] == "deferred" and not logs_seen and qid not in held and len(held) < self.hold_limit
                      and held_size + found.size < self.hold_bytes):
                    # defer/ logs may come after deferred/ in an unsorted tar: wait for them, within reason
                    held[qid] = found
                    held_size += found.size
                    continue
                yield found
                continue
            if lg := _LOG_RE.search(m.path):
                logs_seen = True
                qid = lg.group(2)
                if m.data and (reason := parse_defer_log(m.data)):
                    reasons.setdefault(qid, reason)
                report.skipped.append(m.path)
                if qid in held:
                    waiting = held.pop(qid)
                    waiting.raw.envelope.deferred_reason = reasons.get(qid)
                    yield waiting
                continue
            report.skipped.append(m.path)
        yield from held.values()

    def _one(self, m: Member, queue_name: str, queue_id: str) -> Found:
        if m.data is None:
            env = Envelope(queue_name=queue_name, queue_id=queue_id)
            return found_from_member(m, self.name, envelope=env, defects=["queue file too big to read"])
        qf = parse_queue_file(m.data, queue_name)
        qf.envelope.queue_name, qf.envelope.queue_id = queue_name, queue_id
        defects = list(qf.defects)
        if queue_name == "corrupt":
            defects.append("Postfix moved this file to corrupt/")
        return found_from_member(m, self.name, envelope=qf.envelope, data=qf.content, defects=defects)


READER = PostfixReader()
