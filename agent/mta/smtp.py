"""SMTP re-injection: the original bytes with the original envelope, handed to the local MTA over smtplib.

The end of DATA is the point of no return: the journal records `commit` just before the final dot is
sent. After a crash, a message in `intent` is sent again (the MTA cannot have accepted it: no dot
was sent) and one in `commit` is not (it was handed over; sending again would deliver it twice).
"""

from __future__ import annotations

import smtplib
import socket
import time

from agent.errors import MtaError
from agent.mta.base import Commit, Deliverer
from pipeline.models import Envelope


class SmtpDeliverer(Deliverer):
    """One connection reused for many messages; reconnects after an error."""

    def __init__(self, host: str = "127.0.0.1", port: int = 25, helo: str | None = None, timeout: float = 60,
                 starttls: bool = False) -> None:
        self.host, self.port, self.helo, self.timeout, self.starttls = host, port, helo, timeout, starttls
        self._conn: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        if self._conn is None:
            c = smtplib.SMTP(self.host, self.port, local_hostname=self.helo, timeout=self.timeout)
            if c.sock is not None:
                # the final dot goes out alone: without this, Nagle holds it for the peer's delayed ACK (~40 ms)
                c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.ehlo_or_helo_if_needed()
            if self.starttls:
                c.starttls()
                c.ehlo()
            self._conn = c
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (smtplib.SMTPException, OSError):
                self._conn.close()
            self._conn = None

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def send(self, data: bytes, envelope: Envelope, commit: Commit, key: str = "") -> str:
        if not envelope.rcpt_to:
            raise MtaError("no recipients in the envelope")
        committed = False

        def _commit() -> None:
            nonlocal committed
            commit()
            committed = True

        for attempt in (1, 2):
            try:
                return self._send_once(data, envelope, _commit)
            except (smtplib.SMTPException, OSError) as e:
                self._drop()
                # after the dot, never again: the MTA may hold it already
                if attempt == 2 or committed or not isinstance(e, smtplib.SMTPServerDisconnected | OSError):
                    raise MtaError(f"{self.host}:{self.port}: {e}") from None
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def _send_once(self, data: bytes, envelope: Envelope, commit: Commit) -> str:
        c = self._connect()
        sender = envelope.mail_from or ""
        code, resp = c.mail(sender)
        if code != 250:
            self._reset(c)
            raise MtaError(f"MAIL FROM:<{sender}> refused: {code} {resp.decode(errors='replace')}")
        accepted = []
        for r in envelope.rcpt_to:
            code, resp = c.rcpt(r)
            if code in (250, 251):
                accepted.append(r)
        if len(accepted) != len(envelope.rcpt_to):
            # all or nothing: a partial delivery could not be finished later without duplicates
            self._reset(c)
            raise MtaError(f"the MTA refused {len(envelope.rcpt_to) - len(accepted)} of "
                           f"{len(envelope.rcpt_to)} recipients")
        code, resp = c.docmd("DATA")
        if code != 354:
            self._reset(c)
            raise MtaError(f"DATA refused: {code} {resp.decode(errors='replace')}")
        c.send(_dot_stuff(data))
        commit()
        c.send(b".\r\n")
        code, resp = c.getreply()
        if code != 250:
            raise MtaError(f"end of DATA refused: {code} {resp.decode(errors='replace')}")
        return resp.decode(errors="replace")

    def _reset(self, c: smtplib.SMTP) -> None:
        try:
            c.rset()
        except smtplib.SMTPException:
            self._drop()


def _dot_stuff(data: bytes) -> bytes:
    """CRLF line ends, leading dots doubled, ending in CRLF: the DATA body without its final dot."""
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if text.startswith(b"."):
        text = b"." + text
    text = text.replace(b"\r\n.", b"\r\n..")
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    return text
