"""Folders of raw RFC 822 files: IIS/Exchange Queue, Pickup and Badmail (*.eml), Imcdata\\Out."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from pipeline.archive import ArchiveReport, Member
from pipeline.models import Envelope
from pipeline.readers.base import Found, Reader, found_from_member

# Files next to messages that are not messages: Badmail reason files, IIS logs, our own index.
_NOT_MESSAGES = re.compile(r"(?i)\.(bdr|bdp|log|txt|xml|ini|pid|lock|db|json|jsonl|tmp|ds_store)$|(^|/)thumbs\.db$")
# ...unless it reads as a message: a saved message is often a .txt. It starts with a header and its
# header block has a field messages have. (A log taken for a message is held for review, never lost.)
_MESSAGE_FIELD = re.compile(
    rb"(?im)^(from|to|cc|subject|date|received|message-id|return-path|mime-version|content-type):")
_ENVELOPE_LINE = re.compile(rb"(?im)^x-(sender|receiver):[ \t]*(.*?)\r?\n")
_HEADER_START = re.compile(rb"^[!-9;-~]+:")


def split_iis_envelope(data: bytes) -> tuple[Envelope | None, bytes]:
    """Split IIS's `x-sender:`/`x-receiver:` lines from the top of a file; they are envelope, not message."""
    env, body, _ = iis_envelope(data)
    return env, body


def iis_envelope(data: bytes) -> tuple[Envelope | None, bytes, list[str]]:
    """The `x-sender:`/`x-receiver:` lines at the top of a file as an envelope (None without an x-receiver
    line: an X-Sender alone is a header some mail programs write, and stays in the message), the message
    after them, and what is wrong with the lines: two x-senders that differ (the last is taken), an
    x-receiver with no address, bytes that are not UTF-8. An empty x-sender (`<>`) is a bounce's, not a
    defect."""
    pos = 0
    senders: list[str] = []
    receivers: list[str] = []
    defects: list[str] = []
    lines = 0  # x-receiver lines, with an address or not
    while m := _ENVELOPE_LINE.match(data, pos):
        try:
            value = m.group(2).decode("utf-8")
        except UnicodeDecodeError:
            value = m.group(2).decode("utf-8", "replace")
            defects.append(f"x-{m.group(1).lower().decode()} line is not UTF-8: {value[:80]!r}")
        value = value.strip().strip("<>")
        if m.group(1).lower() == b"sender":
            senders.append(value)
        else:
            lines += 1
            if value:
                receivers.append(value)
            else:
                defects.append("an x-receiver line names no address")
        pos = m.end()
    if not lines:
        return None, data, []
    if len(set(senders)) > 1:
        defects.append(f"{len(senders)} x-sender lines that differ ({', '.join(repr(s[:80]) for s in senders[:3])}): "
                       "the last is taken as the envelope sender")
    return Envelope(mail_from=senders[-1] if senders else None, rcpt_to=receivers), data[pos:], defects


def read_pickup_file(data: bytes) -> tuple[Envelope | None, bytes, list[str]]:
    """A pickup file's envelope (None without x-receiver lines), message bytes, and defects: what the reader
    gives for it (the agent reads its pickup folder's files so)."""
    env, body, defects = iis_envelope(data)
    if not looks_like_message(body):
        defects.append("does not start with a header; maybe not a message")
    return env, body, defects


def looks_like_message(data: bytes) -> bool:
    head = data[:2048].lstrip(b"\r\n")
    return bool(_HEADER_START.match(head)) or head.startswith(b"From ")


def is_message_file(data: bytes | None) -> bool:
    """Whether a file with a not-a-message name (.txt, .log) is a message after all."""
    if not data:
        return False
    head = data[:8192].split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    _, body = split_iis_envelope(data[:8192])
    return looks_like_message(body) and _MESSAGE_FIELD.search(head) is not None


class EmlReader(Reader):
    name = "eml"
    description = "folder of raw RFC 822 files (IIS/Exchange Queue, Pickup, Badmail, Imcdata\\Out)"

    def score(self, paths: Sequence[str], samples: Sequence[Member]) -> int:
        if not paths:
            return 0
        eml = sum(1 for p in paths if p.lower().endswith((".eml", ".bad", ".msg")))
        if eml:
            return 40 + int(40 * eml / len(paths))
        ok = sum(1 for s in samples if s.data and looks_like_message(s.data))
        return 20 if samples and ok * 2 >= len(samples) else 1

    def read(self, members: Iterator[Member], report: ArchiveReport) -> Iterator[Found]:
        for m in members:
            if _NOT_MESSAGES.search(m.path) and not is_message_file(m.data):
                report.skipped.append(m.path)
                continue
            if m.data is None:
                yield found_from_member(m, self.name)
                continue
            env, body, defects = read_pickup_file(m.data)
            if env is None:
                yield found_from_member(m, self.name, defects=defects)
            else:
                yield found_from_member(m, self.name, envelope=env, data=body, defects=defects)
