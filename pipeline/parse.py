"""Parse one message into a ParsedRecord: a fast standard-library path, mail-parser where defects show."""

from __future__ import annotations

import email
import email.errors
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email import policy as email_policy
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime
from functools import lru_cache
from typing import Any

from pipeline.features import digest_key, shape, shape_of, sketch, subject_core, subject_key, url_keys
from pipeline.models import ParsedRecord, ReceivedHop, construct_all, mime_defect
from pipeline.normalise import (
    MAX_TEXT,
    SKETCH_TEXT,
    evasion,
    html_head,
    html_to_text,
    normalise,
    normalise_reads,
)
from pipeline.policy import SitePolicy
from pipeline.readers.base import Found

_RCVD_FROM = re.compile(r"(?is)^\s*from\s+(\S+)(?:\s+\(([^)]*)\))?")
_RCVD_BY = re.compile(r"(?is)\bby\s+([\w.-]+)")
_RCVD_WITH = re.compile(r"(?is)\bwith\s+(E?SMTPS?A?|LMTPS?A?|HTTPS?|LOCAL|UTF8E?SMTPS?A?|\w+)")
# the same two on an ASCII hop lower-cased, where they match as (?i) does, each led by its literal (which the
# engine skips to; \b first is tried at every character): the look-behind is the \b before it
_RCVD_BY_LOW = re.compile(r"by(?<!\wby)\s+([\w.-]+)")
_RCVD_WITH_LOW = re.compile(r"with(?<!\wwith)\s+(e?smtps?a?|lmtps?a?|https?|local|utf8e?smtps?a?|\w+)")
_RCVD_IP = re.compile(r"\[(?:IPv6:)?([0-9a-fA-F:.]+)\]")
# Exim writes "from <host> ([ip] ...)" for a client on the network, and "from <login> by" for a submission on the
# host (exim -bm, -bS: cron, an application, or a content filter's pipe handing each message back, as
# SpamAssassin's "exim -oMr spam-scanned -bS" recipe does): no address, the login of whoever ran exim
_EXIM_IDENT = re.compile(r"from [^\s()\[\]]+ by \S+ (?:with \S+ )?\(Exim ")
_RCVD_AUTH = re.compile(r"(?i)\(Authenticated sender:\s*([^)\s]+)\)|\bauth(?:enticated)?[ =](?:as\s+)?([\w.@+-]+)")
_BOUNCE_SUBJECT = re.compile(
    r"(?i)undeliver|returned mail|delivery (status )?notification|delivery failure|mail delivery fail"
    r"|failure notice|non[- ]?delivery|could not be delivered"
)
_BOUNCE_SENDER = re.compile(r"(?i)^(mailer-daemon|postmaster|mail delivery (sub)?system)\b|<?mailer-daemon@")
_ORIG_MARK = re.compile(r"(?im)^[-\s]*(original message|the original message|below this line is a copy|"
                        r"this is a copy of the message)")
_MAX_PARTS = 200
_HEADER_CHARS = 8000
# The parse budget. fast-mail-parser takes 30 s over one header of 100,000 encoded words (190 s over
# 300,000) and cannot be interrupted, so a message whose header block is that heavy never goes to it:
# the careful path reads it, under a time limit, and it is held for review with the reason.
MAX_ENCODED_WORDS = 1000
MAX_HEADER_BYTES = 1 << 20
PARSE_SECONDS = 10.0
_MAX_URL_TEXT = 40000  # characters of each body part searched for URLs
_MAX_DIGESTS = 8


class _Grouping:
    """What the grouping features are read from: the message itself, or for a bounce the one it quotes."""

    __slots__ = ("shape", "texts", "reply_to", "payloads", "subject")

    def __init__(self, shape: str, texts: list[str], reply_to: str, payloads: list[bytes], subject: str) -> None:
        self.shape, self.texts, self.reply_to, self.payloads = shape, texts, reply_to, payloads
        self.subject = subject


def _set_grouping(rec: ParsedRecord, g: _Grouping) -> None:
    keys = _url_keys(tuple(t[:_MAX_URL_TEXT] for t in g.texts))
    if g.reply_to and (addr := _first_address(g.reply_to)):
        keys.append("r:" + addr.lower())
    keys.extend(dict.fromkeys(digest_key("d", p) for p in g.payloads[:_MAX_DIGESTS] if p))
    if sk := _subject_key(g.subject):
        keys.append(sk)
    rec.keys = keys
    rec.shape = g.shape
    # the sketch reads the long text; the record keeps its head
    rec.sketch = sketch(rec.text)
    rec.text = rec.text[:MAX_TEXT]
    rec.bounced_original_text = rec.bounced_original_text[:MAX_TEXT]


def _url_keys(texts: tuple[str, ...]) -> list[str]:
    """url_keys of the texts: a run's copies repeat their body parts, so the keys of the latest few are
    kept, by the texts (those short enough that keeping them costs little memory)."""
    if sum(map(len, texts)) > _URL_TEXTS_KEPT:
        return url_keys(texts)
    if (keys := _URL_KEYS.get(texts)) is None:
        if len(_URL_KEYS) >= _URL_KEYS_MAX:
            _URL_KEYS.clear()
        keys = _URL_KEYS[texts] = tuple(url_keys(texts))
    return list(keys)


_URL_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {}
_URL_KEYS_MAX = 512
_URL_TEXTS_KEPT = 16000


# the caches below keep values up to this long; a longer one (a hostile header) is worked out each time,
# by the cached function's __wrapped__ (the function itself)
_KEPT_CHARS = 500


def _subject_key(subject: str) -> str:
    if len(subject) > _KEPT_CHARS:
        return _core_key.__wrapped__(subject_core(subject))
    return _kept_subject_key(subject)


@lru_cache(maxsize=1 << 14)
def _kept_subject_key(subject: str) -> str:
    # a run repeats its subjects (a quarter of spamware copies' exactly): each one's key is kept
    return _core_key(subject_core(subject))


@lru_cache(maxsize=1 << 12)
def _core_key(core: str) -> str:
    # and the copies' subjects share their core, hash-busters and greetings cut (nine in ten)
    return subject_key(normalise(core, ""))


def _first_address(value: str) -> str:
    """The address of a header's first (name, address), or "": a run repeats its Reply-To and From, and
    getaddresses takes 20 us over one, so each value's is kept."""
    return _kept_first_address(value) if len(value) <= _KEPT_CHARS else _kept_first_address.__wrapped__(value)


@lru_cache(maxsize=1 << 12)
def _kept_first_address(value: str) -> str:
    addr = getaddresses([value])
    return addr[0][1] if addr else ""


def _unescape_8bit(s: str) -> str:
    """Raw 8-bit header bytes (surrogate-escaped by the parser) read as UTF-8, else Windows-1252."""
    if s.isascii() or not any("\udc80" <= ch <= "\udcff" for ch in s):
        return s
    raw = s.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", "replace")


def _header(msg: Message, name: str) -> str:
    lname = name.lower()
    # raw_items keeps 8-bit bytes (surrogate-escaped); get() would have replaced them already
    v = next((val for key, val in msg.raw_items() if key.lower() == lname), None)
    if v is None:
        return ""
    # results are cut to 2,000 characters; decoding 100,000 encoded words to keep 2,000 would take minutes
    s = _unescape_8bit(str(v)[:_HEADER_CHARS])
    try:
        s = str(make_header(decode_header(s)))
    except (email.errors.HeaderParseError, LookupError, ValueError, UnicodeError, TypeError):
        pass
    return s.replace("\r", " ").replace("\n", " ").strip()


def _decode(part: Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except (ValueError, TypeError, AssertionError):
        return ""
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "latin-1"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("latin-1", "replace")


def parse_received(value: str) -> ReceivedHop:
    value = " ".join(value.split())
    from_name = from_ip = by = protocol = auth_user = None
    authenticated = False
    if m := _RCVD_FROM.match(value):
        from_name = m.group(1)
        if m.group(2) and (ip := _RCVD_IP.search(m.group(2))):
            from_ip = ip.group(1)
    if from_ip is None and (ip := _RCVD_IP.search(value.split(" by ")[0])):
        from_ip = ip.group(1)
    if from_ip is None and from_name and _EXIM_IDENT.match(value):
        from_name = None  # Exim's submission on the host names the user who ran it, not a host (see _EXIM_IDENT)
    low = value.lower()
    ascii_ = value.isascii()
    if m := (_RCVD_BY_LOW.search(low) if ascii_ else _RCVD_BY.search(value)):
        by = m.group(1).lower()
    if m := (_RCVD_WITH_LOW.search(low) if ascii_ else _RCVD_WITH.search(value)):
        protocol = m.group(1).upper()
    # both ways of naming the account say "auth"; (?i) over a hop without it costs a third of reading the hop
    if ("auth" in low or not ascii_) and (m := _RCVD_AUTH.search(value)):
        authenticated = True
        auth_user = m.group(1) or m.group(2)
    elif protocol and protocol.endswith("A"):
        authenticated = True
    # (every field given, each a str, None or a bool already: validating them would only cost)
    return construct_all(ReceivedHop, from_name=from_name, from_ip=from_ip, by=by, protocol=protocol,
                         authenticated=authenticated, auth_user=auth_user)


def _walk(msg: Message) -> list[Message]:
    parts: list[Message] = []
    stack = [msg]
    while stack and len(parts) < _MAX_PARTS:
        p = stack.pop()
        parts.append(p)
        if p.is_multipart():
            payload = p.get_payload()
            if isinstance(payload, list):
                stack.extend(p for p in reversed(payload) if isinstance(p, Message))
    return parts


def _mailparser_rescue(data: bytes) -> tuple[str, list[str]]:
    """mail-parser's reading of a message both faster parsers left without text: (text, defects).

    Its defect categories are the standard library's, so it is worth its cost only here, where a
    message would otherwise go to campaign grouping with no text at all.
    """
    try:
        import mailparser
    except ImportError:
        return "", []
    try:
        mp = mailparser.parse_from_bytes(data)
    except Exception as e:  # a parser crash is itself the defect to report
        return "", [f"mail-parser failed: {type(e).__name__}: {e}"[:200]]
    text = "\n".join(mp.text_plain or []) or html_to_text("\n".join(mp.text_html or []))
    return text, sorted({str(c) for c in (mp.defects_categories or [])})


def over_budget(data: bytes) -> str | None:
    """Why a message is too heavy for the fast parser, or None. Looks at the header block only."""
    end = header_end(data)
    if end < 0 and len(data) > MAX_HEADER_BYTES:
        return f"header block over {MAX_HEADER_BYTES // 1024} KiB"
    words = data.count(b"=?", 0, end if end >= 0 else len(data))
    if words > MAX_ENCODED_WORDS:
        return f"{words:,} encoded words in the header (more than {MAX_ENCODED_WORDS:,})"
    return None


def header_end(data: bytes) -> int:
    """Where the first blank line (\\n\\n or \\n\\r\\n) of the first MAX_HEADER_BYTES starts, or -1."""
    end = data.find(b"\n\n", 0, MAX_HEADER_BYTES)
    # the other kind only up to that one (one may end inside it): a message without CRs is not read to its end
    end2 = data.find(b"\n\r\n", 0, end + 2 if end >= 0 else MAX_HEADER_BYTES)
    return end2 if end2 >= 0 else end


class _OutOfTime(BaseException):  # not an error: the budget ran out
    pass


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise _OutOfTime in this thread after `seconds` of wall time (main thread only; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise _OutOfTime

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def parse_found(found: Found, policy: SitePolicy) -> ParsedRecord:
    """The fast parser for clean messages; the standard library and mail-parser where it matters."""
    rec = _record(found)
    if found.data is None:
        return rec
    heavy = over_budget(found.data)
    if heavy is not None:
        return _careful_in_time(rec, found, policy, f"over the parse budget: {heavy}")
    if _fast is not None:
        try:
            _fill_fast(rec, _fast(found.data), policy, found.data)
            return rec
        except Exception:  # noqa: S110 - whatever the fast parser refuses, the careful path reads
            pass
        # (the envelope is untouched: _infer_envelope, the fast path's last step, changes it all at once)
        rec = _record(found)
    return _careful(rec, found, policy)


# the fields a record starts with (the rest: their defaults), as ParsedRecord(...) would set them
_GIVEN = ("path", "sha256", "size", "format", "envelope", "mta", "defects")


def _record(found: Found) -> ParsedRecord:
    """ParsedRecord(path=..., sha256=..., size=..., format=..., envelope=..., defects=..., mta=...) as
    validation makes it (the envelope itself, a copy of the defects, every other field its default, the
    same fields set), without validating values a reader made valid (a quarter of a record's cost)."""
    raw = found.raw
    rec = construct_all(
        ParsedRecord, path=raw.path, sha256=found.sha256, size=found.size, format=raw.format,
        envelope=raw.envelope, mta=raw.mta, message_id=None, subject="", from_header="", to_header="", date=None,
        content_type="", text="", sketch=[], keys=[], shape="", attachments=[], received=[], our_hop=None,
        list_unsubscribe=False, list_id="", precedence_bulk=False, auto_submitted=False, bounce=False, evasion=[],
        bounced_original_text="",
        bounced_original_sender=None, bounced_original_received=[], defects=list(raw.defects), envelope_inferred=[],
        id="")
    object.__setattr__(rec, "__pydantic_fields_set__", set(_GIVEN))  # what ParsedRecord(...) of _GIVEN sets
    return rec


def _careful_in_time(rec: ParsedRecord, found: Found, policy: SitePolicy, why: str) -> ParsedRecord:
    """The careful path for a heavy message, stopped at PARSE_SECONDS; held for review either way."""
    start = time.monotonic()
    keep = (rec.envelope.model_copy(deep=True), list(rec.defects))
    try:
        with _time_limit(PARSE_SECONDS):
            rec = _careful(rec, found, policy)
    except _OutOfTime:
        rec.envelope, rec.defects = keep
        rec.text = ""
        rec.defects.append(f"{why}; not read within {PARSE_SECONDS:.0f} s")
        return rec
    rec.defects.append(f"{why}; read by the careful parser in {time.monotonic() - start:.1f} s")
    return rec


def _careful(rec: ParsedRecord, found: Found, policy: SitePolicy) -> ParsedRecord:
    assert found.data is not None
    try:
        msg = email.message_from_bytes(found.data, policy=email_policy.compat32)
    except Exception as e:  # never drop a message because the parser failed
        rec.defects.append(f"unparseable: {type(e).__name__}: {e}"[:300])
        rec.text = normalise("", found.data[:4000].decode("latin-1"))
        rec.sketch = sketch(rec.text)
        return rec
    try:
        _fill(rec, msg, policy, found.data)
    except Exception as e:
        rec.defects.append(f"parse error: {type(e).__name__}: {e}"[:300])
    return rec


def _load_fast() -> Callable[[bytes], Any] | None:
    try:
        from fast_mail_parser import parse_email
    except ImportError:
        return None
    return parse_email


_fast = _load_fast()
_ORIGINAL_TYPES = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers", "message/delivery-status")


def _fill_fast(rec: ParsedRecord, mail: Any, policy: SitePolicy, data: bytes) -> None:
    """Fill from fast-mail-parser; what it raises on goes down the careful path instead."""
    heads: dict[str, list[str]] = {}
    for k, vals in mail.headers.items():
        heads.setdefault(k.lower(), []).extend(vals)

    def first(name: str) -> str:
        v = heads.get(name)
        return v[0] if v else ""

    ctype = (first("content-type").split(";", 1)[0].strip().lower() or "text/plain")
    subject = (mail.subject or "").replace("\r", " ").replace("\n", " ").strip()
    from_header = first("from").replace("\n", " ").strip()
    env = rec.envelope
    sender = env.mail_from or ""
    rec.bounce = bool((env.mail_from == "" or _BOUNCE_SENDER.search(from_header) or _BOUNCE_SENDER.search(sender))
                      and (ctype == "multipart/report" or _BOUNCE_SUBJECT.search(subject)))
    rec.subject = subject[:2000]
    rec.from_header = from_header[:500]
    rec.to_header = first("to").replace("\n", " ").strip()[:500]
    rec.message_id = first("message-id").strip()[:500] or None
    if env.arrival_time is None and (d := first("date")):
        try:
            rec.date = parsedate_to_datetime(d)
        except (TypeError, ValueError, IndexError):
            pass
    rec.content_type = ctype
    rec.list_unsubscribe = "list-unsubscribe" in heads
    rec.list_id = list_identifier(first("list-id"))
    rec.precedence_bulk = first("precedence").strip().lower() in ("bulk", "list", "junk")
    rec.auto_submitted = (first("auto-submitted") or "no").strip().lower() != "no"
    _fill_received(rec, heads.get("received", []), policy)
    # each read of these attributes converts the parser's data again: read once
    attachments, text_html, text_plain = mail.attachments, mail.text_html, mail.text_plain
    rec.attachments = [f"{_clean(a.filename or '(unnamed)')} ({a.mimetype})" for a in attachments][:200]
    # grouping reads what a reader sees: the HTML part when there is one, its hidden text dropped
    # (spamware fills the plain alternative and hidden blocks with word salad); bounces read plain
    if not text_html:
        seen = ""
    elif rec.bounce and not text_plain:
        seen = html_to_text(text_html[0])  # the notice is searched whole for the quoted copy below
    else:
        seen = html_head(text_html[0], normalise_reads(SKETCH_TEXT))  # as far as normalise reads it
    body = text_plain[0] if text_plain else seen
    # a bounce's own parts (its notice, the quoted copy's bytes) are no grouping input: not read for it
    if rec.bounce:
        grouping = _fast_bounced_original(rec, attachments, body, shape(data))
    else:
        grouping = _Grouping(shape(data), [*text_plain[:2], *text_html[:2]], first("reply-to"),
                             [bytes(a.content) for a in attachments[:_MAX_DIGESTS]], subject)
        rec.evasion = evasion(text_html[0] if text_html else "")
    # a bounce is grouped by what it quotes, so backscatter lands with the spam it bounced
    rec.text = rec.bounced_original_text if rec.bounce else normalise(rec.subject, seen or body, SKETCH_TEXT)
    _set_grouping(rec, grouping)
    if mail.warnings:
        # the parser repaired something (its warnings name the stdlib's defects): say what
        rec.defects.extend(mime_defect(k) for k in sorted({str(getattr(w, "kind", "warning")) for w in mail.warnings}))
    _infer_envelope(rec, lambda name: heads.get(name.lower(), []))


def _quoted_inline(rec: ParsedRecord, body: str, own_shape: str) -> _Grouping:
    """A bounce quoting no message part: what follows its notice's "original message" line, if any. Its
    notice is the bouncing server's words, the same for every bounce it writes: never grouping input
    (nor, for a bounce quoting nothing, the links in it)."""
    quote = body[m.end():] if (m := _ORIG_MARK.search(body)) else ""
    if quote:
        rec.bounced_original_text = normalise("", quote, SKETCH_TEXT)
    return _Grouping(own_shape, [quote] if quote else [], "", [], "")


def _fast_bounced_original(rec: ParsedRecord, attachments: list[Any], body: str, own_shape: str) -> _Grouping:
    orig = next((a for a in attachments if a.mimetype in _ORIGINAL_TYPES[:3]), None)
    if orig is None:
        return _quoted_inline(rec, body, own_shape)
    assert _fast is not None
    raw = bytes(orig.content)
    try:
        inner = _fast(raw)
    except Exception:  # the quoted spam is often broken; the standard library reads it
        return _bounced_from_message(rec, email.message_from_bytes(raw, policy=email_policy.compat32))
    # each read of the parser's attributes converts its data again: read once
    heads, text_html, text_plain, subject = inner.headers, inner.text_html, inner.text_plain, inner.subject or ""
    rec.bounced_original_sender = _first_address((heads.get("From") or [""])[0]).lower() or None
    rec.bounced_original_received = [parse_received(v) for v in (heads.get("Received") or [])[:_MAX_HOPS]]
    obody = (html_head(text_html[0], normalise_reads(SKETCH_TEXT)) if text_html else text_plain[0] if text_plain
             else "")
    rec.bounced_original_text = normalise(subject, obody, SKETCH_TEXT)
    return _Grouping(shape(raw), [*text_plain[:2], *text_html[:2]],
                     (heads.get("Reply-To") or [""])[0], [bytes(a.content) for a in inner.attachments], subject)


_MAX_HOPS = 4  # ours is the topmost, or below a content filter's one or two: enough, and records stay small


def _fill_received(rec: ParsedRecord, values: list[str], policy: SitePolicy) -> None:
    """The topmost hops (the newest is first); which one is ours is settled at triage, when the whole
    policy is known (pipeline.verdicts.resolve_origin); `our_hop` here is this policy's first guess."""
    hops = [parse_received(str(v)) for v in values[:_MAX_HOPS]]
    rec.received = hops
    rec.our_hop = next((h for h in hops if policy.is_our_host(h.by)), None)


def _fill(rec: ParsedRecord, msg: Message, policy: SitePolicy, data: bytes) -> None:
    rec.subject = _header(msg, "Subject")[:2000]
    rec.from_header = _header(msg, "From")[:500]
    rec.to_header = _header(msg, "To")[:500]
    rec.message_id = (msg.get("Message-ID") or "").strip()[:500] or None
    if rec.envelope.arrival_time is None and (d := msg.get("Date")):
        try:
            rec.date = parsedate_to_datetime(str(d))
        except (TypeError, ValueError, IndexError):
            pass
    rec.content_type = msg.get_content_type()
    rec.list_unsubscribe = "List-Unsubscribe" in msg
    rec.list_id = list_identifier(str(msg.get("List-Id") or ""))
    prec = (msg.get("Precedence") or "").lower()
    rec.precedence_bulk = prec in ("bulk", "list", "junk")
    auto = (msg.get("Auto-Submitted") or "no").lower()
    rec.auto_submitted = auto.strip() != "no"

    _fill_received(rec, msg.get_all("Received") or [], policy)

    parts = _walk(msg)
    plain, htmltext, rawhtml = "", "", ""
    payloads: list[bytes] = []
    defects: set[str] = set()
    original: Message | None = None
    for p in parts:
        for d in getattr(p, "defects", []) or []:
            defects.add(type(d).__name__)
        ctype = p.get_content_type()
        fn = p.get_filename()
        disp = (p.get("Content-Disposition") or "").lower()
        if fn or disp.startswith("attachment") or ctype.startswith("image/"):
            if fn or disp.startswith("attachment"):
                rec.attachments.append(f"{_clean(fn or '(unnamed)')} ({ctype})")
            if len(payloads) < _MAX_DIGESTS and isinstance(b := _payload(p), bytes):
                payloads.append(b)
            continue
        if ctype in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers") and original is None:
            original = _original_from(p)
            continue
        if ctype == "text/plain" and not plain:
            plain = _decode(p)
        elif ctype == "text/html" and not htmltext:
            rawhtml = _decode(p)
            htmltext = html_to_text(rawhtml)
    body = plain or htmltext
    if defects:
        rec.defects.extend(mime_defect(d) for d in sorted(defects))
        if not body.strip():
            body, more = _mailparser_rescue(data)
            rec.defects.extend(mime_defect(f"mail-parser {c}") for c in more if c not in defects)

    env = rec.envelope
    sender = (env.mail_from if env.mail_from is not None else "") or ""
    rec.bounce = (
        (env.mail_from == "" or bool(_BOUNCE_SENDER.search(rec.from_header)) or bool(_BOUNCE_SENDER.search(sender)))
        and (rec.content_type == "multipart/report" or bool(_BOUNCE_SUBJECT.search(rec.subject)))
    )
    grouping = _Grouping(shape(data), [plain, rawhtml], _header(msg, "Reply-To"), payloads, rec.subject)
    if rec.bounce:
        if original is not None:
            grouping = _bounced_from_message(rec, original)
        else:
            grouping = _quoted_inline(rec, body, grouping.shape)
    else:
        rec.evasion = evasion(rawhtml)
    # a bounce is grouped by what it quotes, so backscatter lands with the spam it bounced
    rec.text = rec.bounced_original_text if rec.bounce else normalise(rec.subject, htmltext or body, SKETCH_TEXT)
    _set_grouping(rec, grouping)
    _infer_envelope(rec, lambda name: [str(v) for v in (msg.get_all(name) or [])])


def _infer_envelope(rec: ParsedRecord, get_all: Callable[[str], list[str]]) -> None:
    """Fill the sender and recipients the queue did not store from the headers, and say so. (The client
    and the account come from our own Received hop only, at triage: pipeline.verdicts.resolve_origin.)

    The changes are gathered first and applied together at the end, so a header that makes this
    raise leaves the envelope as the queue had it (the careful parser then starts from that)."""
    env = rec.envelope
    inferred: list[str] = []
    change: dict[str, object] = {}
    if env.mail_from is None:
        rpath = (get_all("Return-Path") or [""])[0]
        rp = getaddresses([rpath])
        if rp and (rp[0][1] or rpath.strip() == "<>"):
            change["mail_from"] = rp[0][1].lower()
            inferred.append("mail_from")
    if not env.rcpt_to and not env.done_rcpt_to:
        heads = [v for h in ("To", "Cc") for v in get_all(h)]
        change["rcpt_to"] = rcpts = sorted({a.lower() for _, a in getaddresses(heads) if "@" in a})
        if rcpts:
            inferred.append("rcpt_to")
    for k, v in change.items():
        setattr(env, k, v)
    rec.envelope_inferred = inferred


def _bounced_from_message(rec: ParsedRecord, original: Message) -> _Grouping:
    """Subject, sender and text of the message a bounce quotes, read with the standard library."""
    osub = _header(original, "Subject")
    rec.bounced_original_sender = _first_address(str(original.get("From") or "")).lower() or None
    rec.bounced_original_received = [parse_received(str(v)) for v in (original.get_all("Received") or [])[:_MAX_HOPS]]
    obody = ""
    texts: list[str] = []
    if not original.is_multipart() or original.get_content_type().startswith("text/"):
        texts.append(_decode(original))
        obody = texts[0] if original.get_content_type() != "text/html" else html_to_text(texts[0])
    else:
        kinds = {op.get_content_type(): op for op in reversed(_walk(original))}  # the first of each kind
        if (op := kinds.get("text/html")) is not None:
            texts.append(raw := _decode(op))
            obody = html_to_text(raw)
        elif (op := kinds.get("text/plain")) is not None:
            texts.append(obody := _decode(op))
    rec.bounced_original_text = normalise(osub, obody, SKETCH_TEXT)
    shaped = shape_of(original.keys(), str(original.get("X-Mailer") or original.get("User-Agent") or ""))
    return _Grouping(shaped, texts, _header(original, "Reply-To"), [], osub)


def _original_from(p: Message) -> Message | None:
    payload = p.get_payload()
    if isinstance(payload, list) and payload:
        first = payload[0]
        return first if isinstance(first, Message) else None
    if isinstance(payload, str):
        try:
            return email.message_from_string(payload, policy=email_policy.compat32)
        except Exception:
            return None
    return None


def _payload(part: Message) -> bytes | None:
    try:
        b = part.get_payload(decode=True)
    except (ValueError, TypeError, AssertionError):
        return None
    return b if isinstance(b, bytes) else None


def _clean(s: str) -> str:
    # (a name is printable as a rule: then it is its own, without a step in Python per character)
    return (s if s.isprintable() else "".join(ch for ch in s if ch.isprintable()))[:200]


_LIST_ID = re.compile(r"<\s*([^<>\s]{1,250})\s*>")
_LIST_ID_BARE = re.compile(r"([^<>\s]{1,250})")


def list_identifier(value: str) -> str:
    """The list identifier of a List-Id header ("General discussion <python-list.example.org>"), lower-cased:
    between < and >, or the whole value without them; '' for none."""
    if not value:  # nearly every message
        return ""
    m = _LIST_ID.search(value) or _LIST_ID_BARE.fullmatch(value.strip())
    return m.group(1).lower() if m else ""


def addr_domain(addr: str | None) -> str:
    if not addr or "@" not in addr:
        return ""
    return addr.rsplit("@", 1)[1].lower().strip(">").rstrip(".")
