"""mbox files (mboxo and mboxrd): messages split at `From ` lines, envelope from the From_ line.

Each message's path is `<file>#<n>` (n counts from 1) so the manifest can name it inside its file.
Unescaping takes one `>` off every `>...>From ` body line: right for mboxrd, and for mboxo it
differs only on lines that began `>From ` before escaping, which mboxo had already made ambiguous.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from pipeline.archive import ArchiveReport, Member
from pipeline.models import Envelope
from pipeline.readers.base import Found, Reader, found_from_member
from pipeline.readers.eml import looks_like_message

_FROM_LINE = re.compile(rb"^From (\S*)[ \t]+(.*?)\r?$")
_ESCAPED = re.compile(rb"^>(>*From )", re.M)
_NAMES = re.compile(r"(?i)(^|/)([^/]*\.mbox|mbox|inbox|[^/]*\.mbx)$")
_HEADER = re.compile(rb"(?im)^(delivered-to|x-original-to|envelope-to|return-path):[ \t]*(.*?)\r?$")
_DATE_FORMATS = ("%a %b %d %H:%M:%S %Y", "%a %b %d %H:%M %Y", "%a %b %d %H:%M:%S %z %Y")


@functools.lru_cache(maxsize=4096)
def _from_date(text: str) -> datetime | None:
    text = " ".join(text.split())
    for fmt in _DATE_FORMATS:
        try:
            d = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return d if d.tzinfo else d.replace(tzinfo=UTC)
    return None


def is_mbox(data: bytes | None) -> bool:
    if not data or not data.startswith(b"From "):
        return False
    line = data[: data.find(b"\n")] if b"\n" in data[:1024] else data[:1024]
    m = _FROM_LINE.match(line)
    return bool(m and _from_date(m.group(2).decode("latin-1")))


def split_mbox(data: bytes) -> Iterator[tuple[bytes | None, bytes]]:
    """Yield (From_ line or None for junk before the first one, message bytes unescaped)."""
    parts = data.split(b"\nFrom ")
    for i, part in enumerate(parts):
        if i:
            part = b"From " + part
        elif not part.startswith(b"From "):
            if part.strip():
                yield None, part
            continue
        line, _, rest = part.partition(b"\n")
        yield line, (_ESCAPED.sub(rb"\1", rest) if b">From " in rest or b">>" in rest else rest)


def envelope_from(line: bytes, msg: bytes) -> Envelope:
    env = Envelope()
    if m := _FROM_LINE.match(line):
        sender = m.group(1).decode("utf-8", "replace")
        env.mail_from = "" if sender in ("MAILER-DAEMON", "<>") else sender
        env.arrival_time = _from_date(m.group(2).decode("latin-1"))
    end = msg.find(b"\n\n")
    head = msg[: end if end >= 0 else 8192]
    for h in _HEADER.finditer(head):
        name, value = h.group(1).lower(), h.group(2).decode("utf-8", "replace").strip()
        if name == b"return-path" and env.mail_from is None:
            env.mail_from = value.strip("<>")
        elif name != b"return-path" and value:
            addr = value.strip("<>")
            if addr not in env.rcpt_to:
                env.rcpt_to.append(addr)
    return env


class MboxReader(Reader):
    name = "mbox"
    description = "mbox files (mboxo/mboxrd), one or many"

    def score(self, paths: Sequence[str], samples: Sequence[Member]) -> int:
        starts = sum(1 for s in samples if is_mbox(s.data))
        eml = sum(1 for p in paths if p.lower().endswith((".eml", ".msg")))
        if paths and eml * 2 > len(paths):
            # a folder of .eml files whose writer put a From_ line on top: one message per file (read as
            # mbox, a body line starting "From " would cut a message in two)
            return 30 if starts else 0
        if samples and starts * 2 >= len(samples):
            return 85
        if starts:
            # a few files with a From_ line among files that are plain messages: a folder of messages
            # (Python's own email test data is one), where the eml reader keeps one message per file
            plain = sum(1 for s in samples if s.data and not is_mbox(s.data) and looks_like_message(s.data))
            return 15 if plain * 2 >= len(samples) else 55
        return 30 if any(_NAMES.search(p) for p in paths) else 0

    def read(self, members: Iterator[Member], report: ArchiveReport) -> Iterator[Found]:
        for m in members:
            if m.data is None:
                yield found_from_member(m, self.name, defects=["mbox file too big to read"])
                continue
            if not m.data.strip():
                report.skipped.append(m.path)
                continue
            if not m.data.startswith(b"From ") and not _NAMES.search(m.path) and not is_mbox(m.data.lstrip()):
                # not mbox, but never dropped: one message, held for review with what is wrong with it
                yield found_from_member(m, self.name, defects=["not an mbox file (no From_ line): read as one "
                                                                "message"])
                continue
            for n, (line, msg) in enumerate(split_mbox(m.data), 1):
                sub = Member(f"{m.path}#{n}", msg, len(msg), m.mtime, None, list(m.defects))
                if line is None:
                    yield found_from_member(sub, self.name, data=msg, defects=["text before the first From_ line"])
                    continue
                defects = [] if _FROM_LINE.match(line) else [f"malformed From_ line: {line[:80]!r}"]
                yield found_from_member(sub, self.name, envelope=envelope_from(line, msg), data=msg, defects=defects)


READER = MboxReader()
