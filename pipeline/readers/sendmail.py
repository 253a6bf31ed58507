"""Sendmail queues (/var/spool/mqueue): qf control files (envelope, headers, macros) paired with df bodies.

A qf file is lines that start with a code letter (V version, T creation time, S sender, R recipient
with `flags:` before the address, H header with optional `?flags?`, M why it is queued, `$x` and
`${name}` saved macros: `$_` the client as `ident@host [ip]`, `$r` protocol, `$s` HELO name,
`${auth_type}`/`${auth_authen}` SMTP AUTH; `A` the AUTH= of MAIL FROM as Sendmail kept it),
continuation lines start with white space, `.` ends it.
Sendmail 8.17 keeps no `${auth_authen}` in the qf file: an authenticated session shows as `$r` ESMTPA (RFC 3848),
and the account only in `A`, where Sendmail's trust_auth rules have already turned the AUTH= of a client that did
not authenticate as that identity into `<>`. So `A` names the account only with `$r` saying the session
authenticated; on its own it is a claim and not used.
Qf is a control file sendmail gave up on, tf one it was still writing; both are read, flagged.
A qf without its df or a df without its qf is a message with a defect (review), never dropped.
The message bytes are the H lines (without their `?flags?`), a blank line, then the df file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from pipeline.archive import ArchiveReport, Member
from pipeline.models import Envelope
from pipeline.readers.base import Found, Reader, found_from_member

_FILE = re.compile(r"(?:^|/)(qf|df|Qf|tf|xf|hf)([A-Za-z0-9]{6,32})$")
_CLIENT = re.compile(r"^(?:(?P<ident>[^@\s]+)@)?(?P<host>[^\s\[]*)\s*(?:\[(?P<ip>[^\]]+)\])?")
_END = re.compile(rb"^\.\r?$", re.M)
_HEADER_LINE = re.compile(rb"^H(?:\?[^?\n]{0,64}\?)?([^\n]*(?:\n[ \t][^\n]*)*)", re.M)
_OTHER_LINE = re.compile(rb"^[^H \t\r\n][^\n]*", re.M)
_FLAGGED = {"Qf": "sendmail marked this control file lost (Qf): it could not process it",
            "tf": "temporary control file (tf): sendmail was still writing it"}


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _xtext_decode(v: str) -> str:
    """RFC 3461 xtext (`+XX` for a byte) back to text, as AUTH= carries it."""
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), v)


def parse_qf(data: bytes) -> tuple[Envelope, bytes, list[str]]:
    """(envelope, the header block as RFC 822 bytes, defects) from one control file."""
    env = Envelope()
    defects: list[str] = []
    macros: dict[str, str] = {}
    auth_param = ""
    messages: list[str] = []
    end = _END.search(data)
    ended = end is not None
    if end is not None:
        data = data[:end.start()]
    # headers (most of the file) in one C-speed pass; the few other lines one by one
    headers = [h.group(1).replace(b"\r\n", b"\n").rstrip(b"\r") for h in _HEADER_LINE.finditer(data)]
    for other in _OTHER_LINE.finditer(data):
        line = other.group(0).rstrip(b"\r")
        code, rest = chr(line[0]), line[1:]
        if code == "V":
            if rest and not rest.isdigit():
                defects.append(f"bad version line: {line[:40]!r}")
        elif code == "T":
            try:
                env.arrival_time = datetime.fromtimestamp(int(rest), UTC)
            except (ValueError, OverflowError, OSError):
                defects.append(f"bad creation time: {line[:40]!r}")
        elif code == "S":
            env.mail_from = _text(rest).strip().strip("<>")
        elif code == "R":
            flags, sep, addr = _text(rest).partition(":")
            env.rcpt_to.append((addr if sep and len(flags) < 16 and "@" not in flags else _text(rest)).strip("<>"))
        elif code == "Q":
            env.orig_rcpt_to.append(_text(rest).split(";", 1)[-1].strip())
        elif code == "M":
            messages.append(_text(rest))
        elif code == "A":
            auth_param = _text(rest).strip()
        elif code == "$":
            text = _text(rest)
            if text.startswith("{") and "}" in text:
                name, _, value = text[1:].partition("}")
            else:
                name, value = text[:1], text[1:]
            macros[name] = value
        elif not ("A" <= code <= "Z" or "a" <= code <= "z" or code == "!"):
            defects.append(f"garbage: line starts with {line[:20]!r}")
            break
    if not ended:
        defects.append("truncated: no '.' end line")
    if env.mail_from is None:
        defects.append("no sender line (S)")
    if not env.rcpt_to:
        defects.append("no recipient lines (R)")
    if client := macros.get("_"):
        m = _CLIENT.match(client.strip())
        if m:
            env.client_name = m.group("host") or None
            env.client_address = m.group("ip")
            if env.client_address and env.client_address.startswith("IPv6:"):
                env.client_address = env.client_address[5:]
    env.client_address = macros.get("client_addr") or env.client_address
    env.protocol = macros.get("r") or None
    env.helo = macros.get("s") or None
    env.sasl_method = macros.get("auth_type") or None
    env.sasl_username = macros.get("auth_authen") or env.sasl_username
    if not env.sasl_username and auth_param not in ("", "<>") and (env.protocol or "").upper().endswith("A"):
        env.sasl_username = _xtext_decode(auth_param.strip("<>")) or None
    env.deferred_reason = "; ".join(messages) or None
    head = b"\n".join(headers) + b"\n" if headers else b""
    return env, head, defects


class SendmailReader(Reader):
    name = "sendmail"
    description = "Sendmail queue (/var/spool/mqueue: qf + df pairs)"

    def score(self, paths: Sequence[str], samples: Sequence[Member]) -> int:
        kinds = [m.group(1) for p in paths if (m := _FILE.search(p))]
        if not kinds:
            return 0
        if any(k in ("qf", "Qf") for k in kinds):
            return 90
        return 40

    def read(self, members: Iterator[Member], report: ArchiveReport) -> Iterator[Found]:
        # Sorted archives put every df before every qf: hold the unpaired half until its mate comes.
        controls: dict[str, tuple[Member, str]] = {}
        bodies: dict[str, Member] = {}
        for m in members:
            hit = _FILE.search(m.path)
            if hit is None or hit.group(1) in ("xf", "hf"):
                report.skipped.append(m.path)
                continue
            kind, qid = hit.groups()
            if kind == "df":
                if qid in controls:
                    yield self._pair(*controls.pop(qid), qid, m)
                else:
                    bodies[qid] = m
            elif qid in bodies:
                yield self._pair(m, kind, qid, bodies.pop(qid))
            elif qid in controls:
                yield self._pair(m, kind, qid, None)  # a second control file (qf and Qf) for one id
            else:
                controls[qid] = (m, kind)
        for qid, (m, kind) in controls.items():
            yield self._pair(m, kind, qid, None)
        for qid, body in bodies.items():
            env = Envelope(queue_id=qid, queue_name="mqueue")
            yield found_from_member(body, self.name, envelope=env,
                                    defects=["data file (df) without its control file (qf): envelope and headers lost"])

    def _pair(self, qf: Member, kind: str, qid: str, df: Member | None) -> Found:
        env, head, defects = parse_qf(qf.data or b"")
        if qf.data is None:
            defects.append("control file too big to read")
        env.queue_id, env.queue_name = qid, "mqueue"
        if kind in _FLAGGED:
            defects.append(_FLAGGED[kind])
        if df is None:
            defects.append("control file (qf) without its data file (df): body missing")
            body = b""
        elif df.data is None:
            defects.append("data file too big to read")
            body = b""
        else:
            body = df.data
            defects.extend(df.defects)
        return found_from_member(qf, self.name, envelope=env, data=head + b"\n" + body, defects=defects)


READER = SendmailReader()
