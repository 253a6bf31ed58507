"""Per-message grouping features: what a spam run cannot vary, and a MinHash sketch of its text.

Computed where the message is parsed (on every core, or per shard in the cloud), so the global
linking in pipeline.campaigns only reads small fixed-size values: the map half of a map/reduce.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SKETCH_PERM = 64  # MinHash permutations: the estimate of a Jaccard similarity is within ~0.06
SKETCH_SEED = 1405  # fixed: sketches from different shards and runs must compare
MIN_TOKENS = 8  # fewer distinct words than this say too little to link texts by

# case-sensitive, so the engine can skip to each candidate; upper-case links get a second look
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'()\[\]{}]{1,2000}")
_URL_ANY_CASE = re.compile(r"(?i)(?:https?://|www\.)[^\s<>\"'()\[\]{}]{1,2000}")
# a text without "www." can only hold the first kind, and a pattern that opens with a literal is skipped to
_URL_HTTP = re.compile(r"https?://[^\s<>\"'()\[\]{}]{1,2000}")
_URL_WWW = re.compile(r"www\.[^\s<>\"'()\[\]{}]{1,2000}")
_TOKEN = re.compile(r"[^\W\d_]{2,}")
_TOKEN_ASCII = re.compile(r"[A-Za-z]{2,}")  # the same words in an ASCII text, at half the cost of the Unicode class


def _stop_words() -> frozenset[str]:
    """scikit-learn's English stop words (ENGLISH_STOP_WORDS), read from the copy this package ships:
    importing scikit-learn costs a process about a second, and a parser needs nothing else of it."""
    text = (Path(__file__).resolve().parent / "data" / "stop_words_en.txt").read_text(encoding="ascii")
    return frozenset(w for w in text.split("\n") if w and not w.startswith("#"))


ENGLISH_STOP_WORDS = _stop_words()
_STOP = ENGLISH_STOP_WORDS | {"zurlz", "ztokz"}
# a path segment that carries a per-copy token rather than the run's fixed path
_VAR_SEGMENT = re.compile(r"\d|[bcdfghjklmnpqrstvwxz]{4}|^.{16}")
# per-copy parts of a subject (see subject_core): leading Re:/Fwd: or a greeting name, trailing
# ` for Name`, and one hash-buster at the end
_SUBJ_LEAD = re.compile(r"^(?:(?:re|fw|fwd|aw|sv)\s*:\s*|[^\W\d_]+[,:]\s+)", re.I)
_SUBJ_FOR = re.compile(r"\s+for\s+[A-Z][^\W\d_]*$")
_SUBJ_TAIL = re.compile(r"\s*(?:#\d+|\[\w+\]|\(\d+\)|\s-\s+[^\W\d_]+|\b[0-9a-f]*\d[0-9a-f]*)$", re.I)
_HEADER_NAME = re.compile(rb"(?m)^([!-9;-~]{1,100}):")
# the same names matched after a newline (the text given with one in front): a literal the engine skips
# to, where ^ is tried at every byte (names hold no newline, so matches are the same and as many)
_HEADER_NAME_NL = re.compile(rb"\n([!-9;-~]{1,100}):")
# the first header line (lines end at \n, \r\n or \r, as bytes.splitlines sees them) naming the mailer
_MAILER = re.compile(rb"(?im)(?:^|(?<=\r))(?:x-mailer|user-agent):([^\r\n]*)")
# trace and per-copy headers: the relays and the copy write them, not the run's template
_TRACE = frozenset({"received", "return-path", "delivered-to", "x-original-to", "envelope-to", "x-envelope-from",
                    "x-envelope-to", "dkim-signature", "arc-seal", "arc-message-signature",
                    "arc-authentication-results", "authentication-results", "received-spf", "x-received",
                    "x-spam-status", "x-spam-flag", "x-spam-score", "x-virus-scanned", "x-sender", "x-receiver"})
# headers a copy's MIME structure adds or drops (a single-part copy carries its encoding at the top,
# an image-only or attached copy of the same run is multipart and does not): not the template's
_MIME_PART = frozenset({"content-transfer-encoding", "content-disposition", "content-id", "content-description",
                        "content-language", "content-location", "content-length"})


@lru_cache(maxsize=1)
def _psl() -> object:
    # the list ships inside the package: no network at run time
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(accept_encoded_idn=False)  # a tenth of the start-up; hosts are looked up as written


@lru_cache(maxsize=65536)
def registered_domain(host: str) -> str:
    """The domain a run registered (example.co.uk for a.b.example.co.uk); an IP address as it is."""
    host = host.strip(".").lower()
    if not host or host.replace(".", "").isdigit() or ":" in host:
        return host
    return _psl().privatesuffix(host) or host  # type: ignore[attr-defined]


def url_keys(texts: Iterable[str], limit: int = 20, scan: int = 60) -> list[str]:
    """`u:<registered domain><path with per-copy segments as *>` of each distinct URL, and `p:` with
    the path's fixed segments alone where it has any; the first `limit`."""
    out: dict[str, None] = {}
    seen: set[str] = set()
    for t in texts:
        upper = "HTTP" in t or "WWW." in t or "Http" in t
        www = "www." in t  # (each search of a text is a pass over it: each made once)
        if not upper and not www and "http" not in t:
            continue
        # the matched strings at once where one literal-led pattern finds them all (most texts)
        urls = (_URL_HTTP.findall(t) if not upper and not www
                else [t[a:b] for a, b in url_spans(t, upper, www)])
        for u in urls:
            u = u.rstrip(".,;:!?")
            if u in seen:  # the plain and the HTML part carry the same links
                continue
            seen.add(u)
            if len(seen) > scan:
                return list(out)
            for key in _keys_of(u):
                out[key] = None  # (a key already there keeps its place, as setdefault)
            if len(out) >= limit:
                return list(out)
    return list(out)


@lru_cache(maxsize=65536)
def _keys_of(u: str) -> tuple[str, ...]:
    """The URL's key and, where its path has fixed segments, the `p:` key of those alone (a run rotating
    its hosts per copy keeps its paths); none without a host. A run's fixed links repeat from copy to
    copy, hence the cache."""
    key = _url_key(u)
    if key is None:
        return ()
    if fixed := [s for s in key.split("/")[1:] if s != "*"]:
        return key, "p:" + "/".join(fixed)
    return (key,)


def url_spans(t: str, any_case: bool, www: bool | None = None) -> Iterator[tuple[int, int]]:
    """Where _URL_ANY_CASE (any_case) or _URL matches in t, one after the other, found by the literal-led
    patterns: an alternation or (?i) is not skipped to, and tried at every character costs 4-10 times more.
    `www`: whether t holds "www." (the caller's own search), when it knows."""
    if any_case:
        if not t.isascii():  # (?i) lets a few letters outside ASCII stand for s or k: the pattern itself
            yield from (m.span() for m in _URL_ANY_CASE.finditer(t))
            return
        t = t.lower()  # the same length: spans in it are spans in t
        www = None  # (the lower-cased text may hold one that t did not)
    if not (www if www is not None else "www." in t):
        yield from (m.span() for m in _URL_HTTP.finditer(t))
        return
    # the leftmost match of either kind, then on from its end, as the alternation scans
    h, w = _URL_HTTP.search(t), _URL_WWW.search(t)
    while h is not None or w is not None:
        m = h if h is not None and (w is None or h.start() < w.start()) else w
        assert m is not None
        yield m.span()
        end = m.end()
        if h is not None and h.start() < end:
            h = _URL_HTTP.search(t, end)
        if w is not None and w.start() < end:
            w = _URL_WWW.search(t, end)


def _url_key(u: str) -> str | None:
    """The key of one URL as matched by _URL (None: no host with a dot)."""
    if not u.lower().startswith("http"):
        u = "http://" + u
    if u.isascii():
        # what urlsplit gives for such a URL (a scheme, "//", no brackets, no white space), without
        # its general parsing: the host is what precedes the first of / ? # after the last @, up to
        # a colon; the path ends at the first ? or #
        rest = u[u.index("://") + 3:]
        end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
        name, pct, zone = rest[:end].rpartition("@")[2].partition(":")[0].partition("%")
        host = name.lower() + pct + zone
        tail = rest[end:]
        cut = min((i for i in (tail.find("?"), tail.find("#")) if i >= 0), default=len(tail))
        path = tail[:cut]
    else:
        try:
            parts = urlsplit(u)
            host = parts.hostname or ""
        except ValueError:
            return None
        path = parts.path
    if "." not in host:
        return None
    segs = [("*" if _VAR_SEGMENT.search(s) else s) for s in path.lower().split("/")[1:5] if s]
    return "u:" + registered_domain(host) + "".join("/" + s for s in segs)


def header_block(data: bytes) -> bytes:
    """A raw message's header block (at most its first 16 KiB), up to the first blank line."""
    limit = min(len(data), 16384)
    end = data.find(b"\n\n", 0, limit)
    # only a \r\n\r\n that starts before that one matters: not searched for beyond it (a message whose
    # lines end in \n alone was read to 16 KiB for one)
    end2 = data.find(b"\r\n\r\n", 0, min(end + 3, limit) if end >= 0 else limit)
    if end2 >= 0 and (end < 0 or end2 < end):
        end = end2
    return data[: end if end >= 0 else limit]


def shape(data: bytes) -> str:
    """The template's fingerprint of a raw message (see shape_of), read from its header block."""
    head = header_block(data)
    return _shape_of_names(b"\n".join(_HEADER_NAME_NL.findall(b"\n" + head)), _mailer(head))


def _mailer(head: bytes) -> str:
    """What _MAILER's first match gives (its group, or ""), found by its two literals in the lower-cased
    block (the same length): a pattern opening with an alternation is tried at every byte."""
    low = head.lower()
    found = -1
    for lit in (b"x-mailer:", b"user-agent:"):
        i = low.find(lit)
        while i > 0 and low[i - 1] not in b"\r\n":  # not at the start of a line: the next one
            i = low.find(lit, i + 1)
        if i >= 0 and (found < 0 or i < found):
            found, start = i, i + len(lit)
    if found < 0:
        return ""
    end = len(head)
    for stop in (head.find(b"\r", start), head.find(b"\n", start)):
        if 0 <= stop < end:
            end = stop
    return head[start:end].decode("latin-1")


@lru_cache(maxsize=4096)
def _shape_of_names(names: bytes, mailer: str) -> str:
    # the copies of a run share their header names and mailer: one fingerprint computed per run
    return shape_of([n.decode("latin-1") for n in names.split(b"\n")] if names else [], mailer)


def shape_of(names: Iterable[str], mailer: str) -> str:
    """The template's fingerprint: header names in order (trace headers left out) and X-Mailer with its
    digits erased. Boundaries, encodings and the headers that come with them, content types (a copy may
    carry an attachment or not) and per-copy values are not in it."""
    seq: list[str] = []
    for n in names:
        n = n.strip().lower()
        if n in _TRACE or n in _MIME_PART or (seq and seq[-1] == n):
            continue
        seq.append(n)
    mailer = re.sub(r"[\d.]+", "#", mailer.strip().lower())[:100]
    h = hashlib.blake2b("|".join(seq).encode() + b"\x00" + mailer.encode(), digest_size=8)
    return h.hexdigest()


def subject_core(subject: str) -> str:
    """A subject without what spamware writes per copy around the run's own: reply and forward
    prefixes, a greeting name before it (`Ken, ` `Ken: `) or after it (` for Ken`), and trailing
    hash-busters (`#123`, `[a3f0]`, `(12)`, `- word`, a hex token), up to three: a suffix stacked on a
    subject that already ends in a number (`Century!17441 (12)`) must not leave that number to make
    the copy's key differ from those of the copies without one."""
    s = " ".join(subject.split())
    for _ in range(4):
        s2 = _SUBJ_LEAD.sub("", s)
        if s2 == s:
            break
        s = s2
    for _ in range(3):
        s2 = _SUBJ_TAIL.sub("", _SUBJ_FOR.sub("", s)).strip()
        if s2 == s:
            break
        s = s2
    return s


def subject_key(subject: str) -> str:
    """What a bounce that quotes only the headers still shares with its run, from a normalised
    subject_core: `s:` and its three longest words when it has three of five letters or more, else
    `t:` and all its words in order (a short subject: `memory loss`). Keys are compared only within
    one template shape (pipeline.campaigns), so a short one cannot join unrelated runs."""
    toks = [w for w in _TOKEN.findall(subject) if w not in ("zurlz", "ztokz")]
    words = sorted({w for w in toks if len(w) >= 5 and w not in _STOP}, key=lambda w: (-len(w), w))
    if len(words) >= 3:
        return "s:" + " ".join(sorted(words[:3]))
    return "t:" + " ".join(toks) if toks else ""


def digest_key(kind: str, payload: bytes) -> str:
    """An exact key for bytes a run may repeat: an attachment or an image."""
    return f"{kind}:{hashlib.blake2b(payload, digest_size=10).hexdigest()}"


def tokens(text: str) -> set[str]:
    """The words a sketch is made of, stop words and placeholders left out. Single words, not
    pairs or shingles: spintax and shuffled sentences change pairs far more than words."""
    if text.isascii():
        # what _TOKEN_ASCII finds, at a third of its cost: every character but a letter made a space,
        # the runs of letters split apart, and the runs of one letter dropped with the stop words
        return set(text.encode().translate(_LETTERS_ONLY).decode().split()) - _STOP_OR_LETTER
    # A text with a few characters beyond ASCII (a quote mark, an accented name) is mostly ASCII words:
    # the same translation, the UTF-8 bytes of the others kept, leaves ASCII letter runs as words of their
    # own and the rest as words holding a character beyond ASCII, which the pattern alone reads (white
    # space and ASCII non-letters separate its matches too). A pass of the pattern over the whole text
    # cost three times as much.
    words = set(text.encode().translate(_ASCII_NON_LETTERS).decode().split())
    odd = [w for w in words if not w.isascii()]
    words.difference_update(odd)
    for w in odd:
        words.update(_TOKEN.findall(w))
    return words - _STOP_OR_LETTER


_LETTERS_ONLY = bytes(c if chr(c).isalpha() and c < 128 else ord(" ") for c in range(256))
_ASCII_NON_LETTERS = bytes(c if chr(c).isalpha() or c >= 128 else ord(" ") for c in range(256))
_STOP_OR_LETTER = _STOP | {chr(c) for c in range(128) if chr(c).isalpha()}


@lru_cache(maxsize=1)
def _minhash() -> Any:
    from rensa import RMinHash  # imported when first needed, once (not a lookup a message)

    return RMinHash


def sketch(text: str) -> list[int]:
    """MinHash of the text's words; empty when it has too few words to say anything."""
    # a run's copies often normalise to the same text: the latest few texts' sketches are kept
    if (kept := _SKETCHES.get(text)) is None:
        if len(_SKETCHES) >= _SKETCHES_MAX:
            _SKETCHES.clear()
        kept = _SKETCHES[text] = tuple(_sketch(text))
    return list(kept)


_SKETCHES: dict[str, tuple[int, ...]] = {}
_SKETCHES_MAX = 1024


def _sketch(text: str) -> list[int]:
    toks = tokens(text)
    if len(toks) < MIN_TOKENS:
        return []
    m = _minhash()(num_perm=SKETCH_PERM, seed=SKETCH_SEED)
    m.update(list(toks))  # MinHash does not depend on the order
    digest: list[int] = m.digest()  # a list of ints already
    return digest
