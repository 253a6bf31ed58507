"""Exim spool (input/, split or not): the -H file (envelope, options, headers) paired with the -D body.

-H, as the Exim specification's "Format of spool files" describes it: its own name; `login uid
gid`; `<sender>`; `time_received warning_count`; `-option value` lines (`--` when the value is
tainted; `-host_address [ip]:port` or `ip.port`, `-host_name`, `-helo_name`, `-received_protocol`,
`-auth_id`, `-host_auth`, `-body_linecount`, `-aclc`/`-aclm` variables whose value may span
lines, given by a length); the tree of addresses
already delivered (`XX` when empty, else `YN address` lines); the recipient count and recipients;
a blank line; then headers as `NNNc text` where NNN is the byte length of the header including
its newline(s) and c is a flag (`*` means deleted). -D is its own name then the body.
A -H without its -D, or a -D without its -H, is a message with a defect (review), never dropped.
msglog/ files give the deferral reasons and -J journals the recipients an interrupted delivery
reached; both sort after input/, so finished messages wait for them (up to hold_count/hold_bytes).
The message bytes (and their sha256) are the headers not marked deleted, a blank line, and the
-D file after its first line: what `exim -Mvh` lists, then `exim -Mvb` minus its id line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from pipeline.archive import ArchiveReport, Member
from pipeline.models import Envelope
from pipeline.readers.base import Found, Reader, found_from_member

_ID = r"[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}"
_FILE = re.compile(r"(?:^|/)input/(?:[0-9A-Za-z]/)?(" + _ID + r")-([HDJ])$")
_ANY = re.compile(r"(?:^|/)(" + _ID + r")-([HDJ])$")
_TREE = re.compile(rb"^[YN][YN] (.*)$")
_RCPT_TAIL = re.compile(r"^(.*?) (?:\S+ )?\d+,-?\d+#\d+(?: .*)?$")
_MSGLOG = re.compile(r"(?:^|/)msglog/(?:[0-9A-Za-z]/)?(" + _ID + r")$")
_DEFER_LINE = re.compile(rb"^\d{4}-\d\d-\d\d \S+ (.*?(?:defer|==).*)$", re.M)
_HEADER = re.compile(rb"(\d{3,})(.) ")
_VAR_LEN = re.compile(rb"^-+acl[cm]?\S* (\d+)$")
MAX_HEADER = 1 << 24


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _strip_port(addr: str) -> str:
    """Exim writes the client as `[ip]:port` (4.96) or `ip.port` (older); keep the ip."""
    if addr.startswith("["):
        return addr[1:].split("]", 1)[0]
    head, dot, port = addr.rpartition(".")
    return head if dot and port.isdigit() and (":" in head or head.count(".") == 3) else addr


def parse_h(data: bytes, msg_id: str) -> tuple[Envelope, bytes, int | None, list[str]]:
    """(envelope, headers as RFC 822 bytes, body_linecount, defects) from one -H file."""
    env = Envelope(queue_id=msg_id, queue_name="input")
    defects: list[str] = []
    pos = 0
    n = len(data)

    def line() -> bytes | None:
        nonlocal pos
        if pos >= n:
            return None
        end = data.find(b"\n", pos)
        end = n if end < 0 else end
        out = data[pos:end]
        pos = end + 1
        return out

    first = line()
    if first is None or first.strip() != f"{msg_id}-H".encode():
        defects.append(f"first line is {(first or b'')[:40]!r}, not the file's own name {msg_id}-H")
    if line() is None:
        defects.append("truncated after the first line")
    sender = line()
    if sender is None or not (sender.startswith(b"<") and sender.endswith(b">")):
        defects.append(f"bad sender line: {(sender or b'')[:60]!r}")
    else:
        env.mail_from = _text(sender[1:-1])
    received = line()
    try:
        env.arrival_time = datetime.fromtimestamp(int((received or b"").split()[0]), UTC)
    except (ValueError, IndexError, OverflowError, OSError):
        defects.append(f"bad time line: {(received or b'')[:40]!r}")
    linecount: int | None = None
    opt = line()
    while opt is not None and opt.startswith(b"-"):
        # `--name` marks a value Exim considers tainted (from the network); same option
        name, _, value = _text(opt).lstrip("-").partition(" ")
        if m := _VAR_LEN.match(opt):
            # an ACL variable: its value is the next N bytes, newlines and all
            pos += int(m.group(1)) + 1
        elif name == "host_address":
            env.client_address = _strip_port(value)
        elif name == "host_name":
            env.client_name = value
        elif name == "helo_name":
            env.helo = value
        elif name == "received_protocol":
            env.protocol = value
        elif name == "auth_id":
            env.sasl_username = value
        elif name == "host_auth":
            env.sasl_method = value
        elif name == "frozen":
            env.deferred_reason = f"frozen since {value}" if value else "frozen"
        elif name == "body_linecount":
            try:
                linecount = int(value)
            except ValueError:
                defects.append(f"bad body_linecount: {value[:20]!r}")
        opt = line()
    # the tree of addresses not to deliver to (already delivered), preorder, or XX when empty
    if opt != b"XX":
        while opt is not None and (m := _TREE.match(opt)):
            env.done_rcpt_to.append(_text(m.group(1)))
            opt = line()
        if opt is not None and not opt.strip().isdigit():
            defects.append(f"bad delivered-address tree line: {opt[:60]!r}")
            opt = line()
    else:
        opt = line()
    try:
        count = int((opt or b"").strip())
    except ValueError:
        defects.append(f"bad recipient count line: {(opt or b'')[:40]!r}")
        count = 0
    for _ in range(count):
        r = line()
        if r is None:
            defects.append(f"truncated: {count} recipients announced, {len(env.rcpt_to)} found")
            break
        text = _text(r)
        m2 = _RCPT_TAIL.match(text)
        env.rcpt_to.append(m2.group(1) if m2 else text)
    blank = line()
    if blank not in (b"", None):
        defects.append(f"expected a blank line before the headers, found {blank[:40]!r}")
    headers: list[bytes] = []
    while pos < n:
        m3 = _HEADER.match(data, pos)
        if m3 is None:
            defects.append(f"bad header length line at byte {pos}: {data[pos:pos + 30]!r}")
            break
        size = int(m3.group(1))
        start = m3.end()
        if size > MAX_HEADER or start + size > n:
            defects.append(f"header at byte {pos} claims {size} bytes, {n - start} left (lying length or truncated)")
            break
        hdr = data[start:start + size]
        if not hdr.endswith(b"\n"):
            defects.append(f"header at byte {pos} does not end where its length says")
        if m3.group(2) != b"*":
            headers.append(hdr)
        pos = start + size
    if not env.rcpt_to and not env.done_rcpt_to:
        defects.append("no recipients")
    # Exim keeps delivered recipients in the list and marks them in the tree; ours are "still to do"
    done = set(env.done_rcpt_to)
    env.rcpt_to = [r for r in env.rcpt_to if r not in done]
    return env, b"".join(headers), linecount, defects


def _body(msg_id: str, d: bytes, linecount: int | None, defects: list[str]) -> bytes:
    """The body a -D file holds (after its id line), checked against the -H file's line count."""
    first, nl, body = d.partition(b"\n")
    if first.strip() != f"{msg_id}-D".encode():
        defects.append(f"-D file's first line is {first[:40]!r}, not {msg_id}-D")
        body = d if not nl else body
    lines = body.count(b"\n")
    if linecount is not None and lines != linecount:
        defects.append(f"-H says the body has {linecount} lines, the -D file has {lines}")
    return body


def read_pair(msg_id: str, h: bytes, d: bytes) -> tuple[Envelope, bytes, list[str]]:
    """A -H/-D pair's envelope, RFC 822 bytes and defects, both files read: what the reader gives for it (the
    agent reads its spool's pairs so)."""
    env, head, linecount, defects = parse_h(h, msg_id)
    body = _body(msg_id, d, linecount, defects)
    return env, head + b"\n" + body, defects


class EximReader(Reader):
    name = "exim"
    description = "Exim spool (input/ -H and -D pairs, split_spool_directory or not)"

    def score(self, paths: Sequence[str], samples: Sequence[Member]) -> int:
        hits = sum(1 for p in paths if _FILE.search(p))
        if hits:
            return 95
        return 50 if any(_ANY.search(p) for p in paths) else 0

    hold_count = 20_000
    hold_bytes = 256 << 20

    def read(self, members: Iterator[Member], report: ArchiveReport) -> Iterator[Found]:
        heads: dict[str, Member] = {}
        bodies: dict[str, Member] = {}
        reasons: dict[str, str] = {}
        # msglog/ (and -J journals) sort after input/: hold finished messages for them, within limits
        held: dict[str, Found] = {}
        held_size = 0
        msglog_seen = False
        for m in members:
            if log := _MSGLOG.search(m.path):
                msglog_seen = True
                report.skipped.append(m.path)
                lines = [_text(x.group(1)) for x in _DEFER_LINE.finditer(m.data or b"")]
                if lines:
                    reasons[log.group(1)] = "; ".join(dict.fromkeys(lines))[:4000]
                if (waiting := held.pop(log.group(1), None)) is not None:
                    waiting.raw.envelope.deferred_reason = (waiting.raw.envelope.deferred_reason
                                                            or reasons.get(log.group(1)))
                    yield waiting
                continue
            hit = _ANY.search(m.path)
            if hit is None:
                report.skipped.append(m.path)
                continue
            msg_id, kind = hit.groups()
            found: Found | None = None
            if kind == "J":
                report.skipped.append(m.path)
                self._journal(msg_id, m, held, report)
                continue
            if kind == "H":
                if msg_id in bodies:
                    found = self._pair(msg_id, m, bodies.pop(msg_id), reasons)
                else:
                    heads[msg_id] = m
            elif msg_id in heads:
                found = self._pair(msg_id, heads.pop(msg_id), m, reasons)
            else:
                bodies[msg_id] = m
            if found is None:
                continue
            if not msglog_seen and len(held) < self.hold_count and held_size + found.size < self.hold_bytes:
                held[msg_id] = found
                held_size += found.size
            else:
                yield found
        yield from held.values()
        for msg_id, h in heads.items():
            yield self._pair(msg_id, h, None, reasons)
        for msg_id, d in bodies.items():
            yield self._pair(msg_id, None, d, reasons)

    @staticmethod
    def _journal(msg_id: str, m: Member, held: dict[str, Found], report: ArchiveReport) -> None:
        """A -J journal lists recipients delivered in an attempt that crashed before -H was updated."""
        done = [_text(line.split()[0]) for line in (m.data or b"").splitlines() if line.strip()]
        found = held.get(msg_id)
        if found is None:
            if done:
                report.defects.append(f"{m.path}: journal of delivered recipients came after its message; "
                                      f"{', '.join(done[:5])} may be listed as still to deliver")
            return
        env = found.raw.envelope
        env.done_rcpt_to += [a for a in done if a not in env.done_rcpt_to]
        env.rcpt_to = [a for a in env.rcpt_to if a not in set(done)]

    def _pair(self, msg_id: str, h: Member | None, d: Member | None, reasons: dict[str, str]) -> Found:
        defects: list[str] = []
        if h is None or h.data is None:
            env, head, linecount = Envelope(queue_id=msg_id, queue_name="input"), b"", None
            defects.append("-D file without its -H file: envelope and headers lost" if h is None
                           else "-H file too big to read")
        else:
            env, head, linecount, more = parse_h(h.data, msg_id)
            defects += more
        body = b""
        if d is None:
            defects.append("-H file without its -D file: body missing")
        elif d.data is None:
            defects.append("-D file too big to read")
        else:
            body = _body(msg_id, d.data, linecount, defects)
        env.deferred_reason = env.deferred_reason or reasons.get(msg_id)
        anchor = h or d
        if anchor is None:
            raise ValueError("a pair needs at least one file")
        if d is not None and anchor is not d:
            defects.extend(d.defects)
        return found_from_member(anchor, self.name, envelope=env, data=head + b"\n" + body, defects=defects)


READER = EximReader()
