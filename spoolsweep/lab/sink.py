"""An aiosmtpd SMTP sink on 127.0.0.1 that keeps every message it accepts (where replayed mail lands)."""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass

from aiosmtpd.controller import Controller

from spoolsweep.lab import free_port

_MSGID = re.compile(rb"(?im)^message-id:[ \t]*(<[^>\r\n]*>)")


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message_id(self) -> str | None:
        m = _MSGID.search(self.data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0])
        return m.group(1).decode() if m else None


class Sink:
    """An aiosmtpd server that keeps every message it accepts; `with Sink() as s:` starts and stops it."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd's hook name
        with self.lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok: kept"

    def message_ids(self) -> Counter:
        with self.lock:
            return Counter(r.message_id for r in self.received)

    def __enter__(self) -> Sink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


# Headers that belong to final delivery: an MTA may drop them from mail it receives (Exim does by default,
# delivery_date_remove, envelope_to_remove and return_path_remove), so they say nothing about the replay.
_DELIVERY_HEADERS = (b"delivery-date:", b"envelope-to:", b"return-path:")


def body_of(data: bytes) -> bytes:
    """The message without the trace headers an MTA adds on the way in (leading Received:) and the
    final-delivery headers it may remove, LF line ends, ending in a line end (SMTP's DATA always does: a
    message without a final one gets it on the way)."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    while lines and (lines[0].startswith(b"Received:") or (lines[0][:1] in (b" ", b"\t"))):
        lines.pop(0)
    kept: list[bytes] = []
    dropping = False
    for i, line in enumerate(lines):
        if not line:  # the end of the header block: the body is compared as it is
            kept += lines[i:]
            break
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith(_DELIVERY_HEADERS)
        if not dropping:
            kept.append(line)
    out = b"\n".join(kept)
    return out if out.endswith(b"\n") else out + b"\n"
