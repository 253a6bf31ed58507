"""Text normalisation for campaign grouping: obfuscations erased, the variable parts of a run made placeholders."""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Any

# no leading \b: a literal start lets the engine skip ahead instead of trying every position
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"')\]]++")
# the look-behind lets only the start of a word try to be an address, which keeps this linear
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]++@[\w-]+(?:\.[\w-]+)+")
# (each pattern led by `<` has its names' first letters looked ahead for: a tag that cannot be one of
# them, most tags, is passed over without the engine trying every name on it, a third of the cost)
_HTML_DROP = re.compile(r"(?is)<(?=[sth])(script|style|head|title)\b.*?</\1\s*>")
# A comment inside a word (vi<!-- x -->agra) must vanish without a trace, or it splits the word.
_COMMENT = re.compile(r"(?s)<!--.*?-->")
# Text no reader sees (hidden, 0-1px, white) is where spamware puts its per-copy word salad: an opening
# tag whose attributes hide it, up to its closing tag within 4,000 characters. Found in steps (the tag,
# then each way of hiding in its attributes, each a literal to look for first), which is what one pattern
# matched, without trying the four ways at every character of every tag (a tenth of parsing a message).
# (attributes required: a tag without any hides nothing, and the engine passes over it without a stop in Python;
# the names' first letters looked ahead for, as in _HTML_DROP)
_HIDING_TAG = re.compile(r"(?i)<(?=[sdfptbi])(span|div|font|p|td|small|b|i)\b([^>]+)>")
_HIDING_WAYS = (r"display\s*:\s*none", r"visibility\s*:\s*hidden",
                r"font-size\s*:\s*[01](?:\.\d+)?\s*(?:px|pt)?\s*[;\"']",
                r"color\s*[:=]\s*[\"']?\s*(?:#fff(?:fff)?\b|white\b)")
_HIDING = re.compile("(?is)" + "|".join(_HIDING_WAYS))
# on ASCII attributes, lower-cased: what (?i) matches there, with a literal the engine can skip to
_HIDING_ASCII = tuple((w.split("\\", 1)[0], re.compile("(?s)" + w)) for w in _HIDING_WAYS)
_HIDDEN_END = {t: re.compile(rf"(?is).{{0,4000}}?</{t}\s*>")
               for t in ("span", "div", "font", "p", "td", "small", "b", "i")}


def _hidden_end(name: str) -> re.Pattern[str]:
    """The end pattern of a hiding tag named `name` as _HIDING_TAG matched it: under (?i) a name may hold a
    letter beyond ASCII that matches an ASCII one (the long s of <ſpan>, the dotted capital I of <İ>), which
    lower() leaves as it is or makes two characters of."""
    if (end := _HIDDEN_END.get(name.lower())) is not None:
        return end
    return next(end for t, end in _HIDDEN_END.items() if re.fullmatch(t, name, re.IGNORECASE))


# Inline tags sit inside words as freely as comments do (<b>V</b>iagra); block tags end a word.
# (the names as a tree of their letters: under (?i) the engine enters each alternative in turn, and \b
# after the name lets only the whole name match, whichever order they are tried in)
_INLINE = re.compile(r"(?i)</?(?=[abdefimsuw])"
                     r"(?:a(?:bbr)?|b(?:ig)?|del|em|font|i(?:ns)?|mark|s(?:mall|pan|trong|u[bp])?|u|wbr)\b[^>]{0,2000}>")
_TAG = re.compile(r"(?s)<[^>]{0,2000}>")
# A copy cut short (a bounce quotes the first few KB) can end inside a comment, a style or script
# block or a tag: from where that opens, the rest is markup, not text. (Not <head>: its end tag is optional.)
_OPEN = re.compile(r"(?i)<(?=[!st])(?:!--|(?:script|style|title)\b)")
_OPEN_TAG = re.compile(r"<[a-zA-Z/!][^>]*$")
# Characters that render as nothing: zero-width spaces and joiners, soft hyphens, BOMs, bidi marks.
# (one at a time: a class with + after it is not skipped to, and costs 2-3 times more over a text without any)
_INVISIBLE = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e"
                        "\u2060-\u206f\u3164\ufeff\uffa0]")
# Leetspeak: a word of letters with these in it is read as letters (v1agr@ -> viagra, fr33 -> free).
_LEET = str.maketrans("0134578@$!|", "oieastbasii")
_LEET_CHARS = frozenset("0134578@$!|")
# from the start of a word only, letters taken once (possessive): a scan that is linear in the text
_WORD = re.compile(r"(?<![\w@$!|])[a-z]*+[0-9@$!|][\w@$!|]*+")
# numbers, tokens mixing letters and digits (hash-busters), long consonant runs
# (possessive quantifiers: the same matches, without the engine trying shorter ones first)
_VARIABLE = re.compile(r"\b(?:\d\w*+|(?=[a-z_]*+\d)\w{5,}+|[bcdfghjklmnpqrstvwxz]{6,}+)\b")
# The same patterns for an ASCII text, where \w, \d and \b mean what they mean in Unicode (\s would
# not: Unicode counts \x1c-\x1f as space) and are matched a quarter to a third faster
_EMAIL_A, _WORD_A, _VARIABLE_A = (re.compile(p.pattern, re.ASCII) for p in (_EMAIL, _WORD, _VARIABLE))

# The first few KB of text decide which run a message belongs to; reading further only costs time.
# A record keeps MAX_TEXT characters (memory at a million messages); its sketch reads SKETCH_TEXT,
# enough that copies whose paragraphs were shuffled still show mostly the same ones.
MAX_TEXT = 1500
SKETCH_TEXT = 3000


def html_to_text(s: str) -> str:
    s = s[: SKETCH_TEXT * 6]
    if (kept := _HTML_TEXTS.get(len(s))) is not None and kept[0] == s:
        return kept[1]
    text = _html_to_text(s)
    if len(_HTML_TEXTS) >= _HTML_TEXTS_MAX:
        _HTML_TEXTS.clear()
    _HTML_TEXTS[len(s)] = (s, text)
    return text


# The copies of a run that varies outside its HTML (in its subject, its plain part) carry the same HTML:
# the latest few are kept by their length, and a text of that length compared whole. (Keyed by the text,
# each would be hashed; spamware varies every copy's HTML, and those lengths mostly differ.)
_HTML_TEXTS: dict[int, tuple[str, str]] = {}
_HTML_TEXTS_MAX = 32


def _html_to_text(s: str) -> str:
    if "<!--" in s:
        s = _without_comments(s)
    s = _HTML_DROP.sub(" ", s)
    if m := _OPEN.search(s):
        s = s[: m.start()]
    s = _drop_hidden(s)
    s = _INLINE.sub("", s)
    s = _TAG.sub(" ", s)
    if (i := s.rfind("<")) >= 0 and (m := _OPEN_TAG.match(s, i)):
        s = s[:i]
    return unescape(s)


def html_head(s: str, need: int) -> str:
    """A start of html_to_text(s) at least `need` characters long, or all of it: the HTML is read in pieces,
    each begun at a `<`, only as far as its text needs, where the text of a piece read alone is the text it
    has in the whole (nothing it opened is still open at its end: see `_closed_text`); where a piece is not,
    or the text so far says the rest is needed anyway, the rest is read whole. (normalise reads a body's
    first 2 * limit characters; a dense HTML part of 18 KB costs less than half as much.)"""
    s = s[: SKETCH_TEXT * 6]
    if len(s) < 2 * need:  # the pieces would be most of it: read whole, as kept copies are
        return html_to_text(s)
    out: list[str] = []
    got = start = 0
    while (cut := s.find("<", start + max(need - got, _HEAD_PIECE))) >= 0:
        if (c := s.rfind("<!--", start, cut)) > s.rfind("-->", start, cut):
            # not inside a comment: past its end (the spamware's comments sit anywhere)
            if (end := s.find("-->", c + 4)) < 0 or (cut := s.find("<", end)) < 0:
                break
        piece = _closed_text(s[start:cut])
        if piece is None:
            break
        out.append(piece)
        got += len(piece)
        start = cut
        if got >= need:
            return "".join(out)
        # as dense as the text so far, the text still needed lies past the end: read the rest whole
        if (need - got) * start > (len(s) - start) * got:
            break
    out.append(_html_to_text(s[start:]) if start else html_to_text(s))
    return "".join(out)


_HEAD_PIECE = 1024
# what _OPEN finds, and a <head> block's start (its end tag is optional, so a cut inside one is not seen there)
_OPEN_BLOCK = re.compile(r"(?i)<(?=[!sth])(?:!--|(?:script|style|title|head)\b)")


def _closed_text(s: str) -> str | None:
    """_html_to_text(s) when html_to_text(s + rest) is that followed by html_to_text(rest) for every rest
    that begins with `<`; None when that is not certain. Every pattern there matches from a `<` to a `>`
    (or, for a character reference, from a `&` to a character that ends one), so a match that would run on
    into the rest starts at a construct s leaves open: a comment, a script, style, title or head block
    or a hidden element whose end s lacks, a `<` left without its `>`, a reference at s's end. Each is
    looked for where it would show (the truncations at an open block and at a tag cut short do not happen
    here: they would be such a construct)."""
    if "<!--" in s:
        s = _without_comments(s)
        if "<!--" in s:  # one without its end (before the blocks go: a style block may hold it)
            return None
    s = _HTML_DROP.sub(" ", s)
    if _OPEN_BLOCK.search(s):
        return None
    unended: list[int] = []
    s = _drop_hidden(s, unended)
    if unended:
        return None
    s = _INLINE.sub("", s)
    s = _TAG.sub(" ", s)
    if "<" in s:
        return None
    # a reference ends at the next "&" at the latest, so only the last one may run on into the rest: not
    # when it ends before s does (each of its kinds stopped at a character it cannot hold), nor when a white
    # space follows the "&" (no kind holds one)
    if (i := s.rfind("&")) >= 0 and ((m := _CHARREF.match(s, i)) is None or m.end() == len(s)) \
            and not any(c in s[i:] for c in " \t\n\f"):
        return None
    return unescape(s)


def _without_comments(s: str) -> str:
    """s without its comments, and without those that taking them out makes: a comment inside a comment's
    opening, lookin<<!--x-->!--y-->g, leaves <!--y--> behind, which read once more would cut the text
    there as a comment left open (a tenth of the spamware copies' HTML lost most of its text that way).
    A few rounds at most: what is left open after them is then cut as any open comment is."""
    for _ in range(_COMMENT_ROUNDS):
        t = _COMMENT.sub("", s)
        if t == s or "<!--" not in t:
            return t
        s = t
    return s


_COMMENT_ROUNDS = 8


# -- filter evasion -----------------------------------------------------------------------------------
# Words broken by a comment with something in it (vi<!--k3j-->agra) are written to slip past content
# filters: no template engine, shop or CRM writes them (none in 301 public templates of Postmark,
# Mailchimp, sendwithus and MJML, with 2,591 comments among them). React's renderers put an empty comment
# between two text nodes, `<!-- -->`, and Outlook's conditional comments, <!--[if mso]>...<![endif]-->,
# may sit anywhere: neither counts. (Zero-width characters inside words are no evidence: templates put
# &zwnj; into addresses and dates so that mail apps do not turn them into links.)
COMMENT_IN_WORD = "comment_in_word"


def evasion(rawhtml: str) -> list[str]:
    """Which ways of breaking words to evade filters a message's HTML (as sent) shows: COMMENT_IN_WORD, or
    none."""
    s = rawhtml[: SKETCH_TEXT * 6]
    i = s.find("<!--")
    while i >= 0:
        j = s.find("-->", i + 4)
        if j < 0:
            break
        if (i and s[i - 1].isalpha() and s[j + 3: j + 4].isalpha() and (inner := s[i + 4: j].strip())
                and not inner.startswith("[if")):
            return [COMMENT_IN_WORD]
        i = s.find("<!--", j + 3)
    return []


# html.unescape's pattern for a character reference: what one stands for depends on its own text only
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")


class _Refs(dict[str, str]):
    """Each reference's text (after its &) and what it stands for, worked out by html.unescape once."""

    def __missing__(self, ref: str) -> str:
        if len(self) >= 4096:  # numeric references are as many as there are characters
            self.clear()
        out = self[ref] = html.unescape("&" + ref)
        return out


_REFS = _Refs()


def unescape(s: str) -> str:
    """html.unescape(s), its references replaced from a table instead of by a Python call each."""
    if "&" not in s:
        return s
    parts = _CHARREF.split(s)  # the text between references, and each reference's text after its &
    parts[1::2] = map(_REFS.__getitem__, parts[1::2])
    return "".join(parts)


def _drop_hidden(s: str, unended: list[int] | None = None) -> str:
    """Each hidden element (see _HIDING_TAG) replaced by a space, scanning as a single pattern would; where
    a tag that hides has no end in reach, its place is added to `unended` when given."""
    out: list[str] = []
    last = pos = 0
    hides = _HIDES.get
    while True:
        for m in _HIDING_TAG.finditer(s, pos):
            attrs = m.group(2)
            if (h := hides(attrs)) is None:
                h = _hides(attrs)
                if len(attrs) <= _HIDES_CACHED:
                    if len(_HIDES) >= _HIDES_MAX:
                        _HIDES.clear()
                    _HIDES[attrs] = h
            if h:
                if end := _hidden_end(m.group(1)).match(s, m.end()):
                    out.append(s[last:m.start()])
                    out.append(" ")
                    last = pos = end.end()
                    break
                if unended is not None:
                    unended.append(m.start())
            if "<" in attrs:
                # a tag may start inside this one's attributes: a single pattern would try it, and
                # finditer would not (it goes on from this one's end)
                pos = m.start() + 1
                break
        else:
            break
    if not out:
        return s
    out.append(s[last:])
    return "".join(out)


# A template repeats its tags' attributes from copy to copy: whether they hide is kept (as _WORDS)
_HIDES: dict[str, bool] = {}
_HIDES_MAX = 1 << 14
_HIDES_CACHED = 200


def _hides(attrs: str) -> bool:
    if not attrs.isascii():
        return _HIDING.search(attrs) is not None
    a = attrs.lower()
    for lit, pat in _HIDING_ASCII:
        if lit in a and pat.search(a):
            return True
    return False


def _unleet(m: re.Match[str]) -> str:
    w = m.group(0)
    core = w.rstrip("!|")  # "now!" is a word and an exclamation mark, not leetspeak
    t = core.translate(_LEET)
    # only a word that reads as letters once translated, and has a letter of its own: 2026, a1b2c3 stay
    if t.isalpha() and not _LEET_CHARS.issuperset(core):
        return t + w[len(core):]
    return w


def plain(s: str) -> str:
    """What a reader sees: invisible characters dropped, compatibility forms and entities resolved."""
    s = _seen(s)
    if "&" in s and ";" in s:
        s = unescape(s)
    return s


def _seen(s: str) -> str:
    """plain() but for the entities: invisible characters dropped, compatibility forms resolved."""
    if not s.isascii():
        s = _INVISIBLE.sub("", s)
        if not unicodedata.is_normalized("NFKC", s):
            # Most texts that are not are so for a no-break space or an ellipsis alone: each replaced by
            # what NFKC makes of it (starters that compose with nothing, so NFKC of the result is NFKC of
            # s), the text is then mostly found normalised, without normalize's pass over all of it.
            s = s.replace("\xa0", " ").replace("\u2026", "...")
            if not unicodedata.is_normalized("NFKC", s):
                s = unicodedata.normalize("NFKC", s)
    return s


def normalise_reads(limit: int) -> int:
    """How much of a body normalise(subject, body, limit) reads: the rest makes no difference to it."""
    return limit * 2


def normalise(subject: str, body: str, limit: int = MAX_TEXT) -> str:
    """Lower-case subject + body with obfuscations erased and URLs, addresses, numbers, hash-busters replaced."""
    b = body[:normalise_reads(limit)]
    if len(b) < _BODY_KEPT_MIN:
        return _joined(plain(f"{subject}\n{b}"), limit)
    # The same, subject and body apart: plain() works character by character but for two things a line
    # break stops (a character reference, an NFKC composition), except whether entities are resolved at
    # all, which asks whether the whole text has an "&" and a ";"; and the words of the text are the
    # subject's and then the body's. A run's copies repeat their body (the greeting and tokens go in the
    # subject and headers, or in a multipart's preamble): its words' results are kept, by the body.
    kept = _BODIES.get(b)
    pb = None
    if kept is None or kept[0] != limit:
        pb = _seen(b)
        kept = [limit, "&" in pb, ";" in pb, None, None]
        if len(_BODIES) >= _BODIES_MAX:
            _BODIES.clear()
        _BODIES[b] = kept
    ps = _seen(subject)
    refs = ("&" in ps or kept[1]) and (";" in ps or kept[2])
    words = kept[4 if refs else 3]
    if words is None:
        pb = _seen(b) if pb is None else pb
        words = kept[4 if refs else 3] = _joined(unescape(pb) if refs else pb, limit)
    head = _joined(unescape(ps) if refs else ps, limit)
    return (f"{head} {words}" if head and words else head or words)[:limit]


def _joined(s: str, limit: int) -> str:
    """The results of the words of s (white space already where plain() puts it), joined, to `limit`
    characters: the words past the first `limit` characters of s only when those fall short."""
    # Line by line: a line's result is its words' results joined (a line break is white space), one
    # without words gives "" and is left out (a word's result is never empty). A run's copies repeat
    # most lines whole, their per-copy tokens in a few: one lookup a line instead of one a word (96 in
    # a hundred lines of the plain 10k were kept ones; a quarter of normalise's cost).
    get = _LINES.__getitem__
    if len(s) > limit + limit // 8 and (cut := s.find(" ", limit + limit // 16)) >= 0:
        # (a space ends a word: the words before it are words of s)
        head = [*filter(None, map(get, s[:cut].split("\n")))]
        out = " ".join(head)
        if len(out) >= limit:
            return out[:limit]
        return " ".join([*head, *filter(None, map(get, s[cut:].split("\n")))])[:limit]
    return " ".join(filter(None, map(get, s.split("\n"))))[:limit]


class _Lines(dict[str, str]):
    """The results of the latest lines (see _joined), by the line; a line not kept is read word by word."""

    __slots__ = ()

    def __missing__(self, line: str) -> str:
        get = _WORDS.get
        out = " ".join([get(w) or _word(w) for w in line.split()])
        if len(line) <= _LINE_CACHED:
            if len(self) >= _LINES_MAX:
                self.clear()
            self[line] = out
        return out


_LINES = _Lines()
_LINES_MAX = 1 << 14
_LINE_CACHED = 200  # longer lines (a paragraph of HTML without breaks) are not kept


# the words' results of the latest bodies, by the body (a body this short is not worth keeping)
_BODIES: dict[str, list[Any]] = {}  # body: [limit, has "&", has ";", words, words with entities resolved]
_BODIES_MAX = 512
_BODY_KEPT_MIN = 200


# normalise reads the text word by word (a word: what str.split() separates). No pattern above matches
# across white space, and a look-behind or \b at a word's edge sees white space or the end of the text
# alike, so a text's result is its words' results joined; and lower() neither makes nor unmakes white
# space. A run repeats its words from copy to copy: each word's result is kept (two thirds of the cost).
_WORDS: dict[str, str] = {}
_WORDS_MAX = 1 << 17  # words kept (8 MiB measured for words of 3-12 characters); then the cache starts again
_WORD_CACHED = 64  # longer words (a base64 line, a long URL) are worked out each time, not kept


def _word(w: str) -> str:
    s = w.lower()
    if "http" in s or "www." in s:
        s = _URL.sub(" zurlz ", s)
    email, word, variable = (_EMAIL_A, _WORD_A, _VARIABLE_A) if s.isascii() else (_EMAIL, _WORD, _VARIABLE)
    if "@" in s:
        s = email.sub(" zurlz ", s)
    s = word.sub(_unleet, s)
    # punctuation stays: the tokenizer splits on it anyway, and removing it cost a third
    s = variable.sub("ztokz", s)
    if " " in s:
        s = " ".join(s.split())
    if len(w) <= _WORD_CACHED:
        if len(_WORDS) >= _WORDS_MAX:
            _WORDS.clear()
        _WORDS[w] = s
    return s
