"""Maildir folders: one message per file under cur/ and new/ (tmp/ holds deliveries that may be incomplete)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from pipeline.archive import ArchiveReport, Member
from pipeline.models import Envelope
from pipeline.readers.base import Found, Reader, found_from_member

_PLACE = re.compile(r"(?:^|/)(cur|new|tmp)/([^/]+)$")
_STAMP = re.compile(r"^(\d{9,11})\.")
_HEADER = re.compile(rb"(?im)^(delivered-to|x-original-to|return-path):[ \t]*(.*?)\r?$")
_NOT_MESSAGES = re.compile(r"(?i)(?:^|/)(dovecot[^/]*|maildirsize|maildirfolder|courierimap[^/]*|\.ds_store)$")


def maildir_envelope(name: str, data: bytes, mtime: float) -> Envelope:
    """Return-Path is the delivering MTA's MAIL FROM; Delivered-To/X-Original-To its recipients."""
    env = Envelope()
    head = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]
    for h in _HEADER.finditer(head):
        key, value = h.group(1).lower(), h.group(2).decode("utf-8", "replace").strip()
        if key == b"return-path":
            if env.mail_from is None:
                env.mail_from = value.strip().strip("<>")
        elif value and value.strip("<>") not in env.rcpt_to:
            env.rcpt_to.append(value.strip("<>"))
    stamp = _STAMP.match(name)
    try:
        env.arrival_time = datetime.fromtimestamp(int(stamp.group(1)) if stamp else mtime, UTC)
    except (OverflowError, OSError, ValueError):
        env.arrival_time = None
    env.queue_id = name.split(":", 1)[0]
    return env


class MaildirReader(Reader):
    name = "maildir"
    description = "Maildir (cur/ new/, tmp/ flagged)"

    def score(self, paths: Sequence[str], samples: Sequence[Member]) -> int:
        inside = sum(1 for p in paths if _PLACE.search(p))
        if not inside:
            return 0
        return 50 + int(40 * inside / len(paths))

    def read(self, members: Iterator[Member], report: ArchiveReport) -> Iterator[Found]:
        for m in members:
            place = _PLACE.search(m.path)
            if place is None or _NOT_MESSAGES.search(m.path):
                report.skipped.append(m.path)
                continue
            folder, name = place.groups()
            defects = ["in maildir tmp/: the delivery may be incomplete"] if folder == "tmp" else []
            if m.data is None:
                yield found_from_member(m, self.name, envelope=Envelope(queue_name=folder), defects=defects)
                continue
            if not m.data.strip():
                defects.append("empty file")
            env = maildir_envelope(name, m.data, m.mtime)
            env.queue_name = folder
            yield found_from_member(m, self.name, envelope=env, defects=defects)


READER = MaildirReader()
