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
    pos = 0
    sender: str | None = None
    receivers: list[str] = []
    while m := _ENVELOPE_LINE.match(data, pos):
        value = m.group(2).decode("utf-8", "replace").strip().strip("<>")
        if m.group(1).lower() == b"sender":
            sender = value
        else:
            receivers.append(value)
        pos = m.end()
    if not receivers:
        return None, data
    return Envelope(mail_from=sender, rcpt_to=receivers), data[pos:]


def read_pickup_file(data: bytes) -> tuple[Envelope | None, bytes, list[str]]:
    """A pickup file's envelope (None without x-receiver lines), message bytes, and defects: what the reader
    gives for it (the agent reads its pickup folder's files so)."""
    env, body = split_iis_envelope(data)
    return env, body, [] if looks_like_message(body) else ["does not start with a header; maybe not a message"]


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
