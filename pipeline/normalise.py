"""Text normalisation for campaign grouping: the variable parts of a spam run become placeholders."""

from __future__ import annotations

import html
import re

# no leading \b: a literal start lets the engine skip ahead instead of trying every position
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"')\]]++")
# the look-behind lets only the start of a word try to be an address, which keeps this linear
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_HTML_DROP = re.compile(r"(?is)<(script|style|head)\b.*?</\1\s*>|<!--.*?-->")
_TAG = re.compile(r"(?s)<[^>]{0,2000}>")
# numbers, tokens mixing letters and digits (hash-busters), long consonant runs
# (possessive quantifiers: the same matches, without the engine trying shorter ones first)
_VARIABLE = re.compile(r"\b(?:\d\w*+|(?=[a-z_]*+\d)\w{5,}+|[bcdfghjklmnpqrstvwxz]{6,}+)\b")

# The first few KB of text decide which run a message belongs to; reading further only costs time.
MAX_TEXT = 1500


def html_to_text(s: str) -> str:
    s = _HTML_DROP.sub(" ", s[: MAX_TEXT * 8])
    s = _TAG.sub(" ", s)
    return html.unescape(s)


def normalise(subject: str, body: str) -> str:
    """Lower-case subject + body with URLs, addresses, numbers and hash-buster tokens replaced."""
    s = f"{subject}\n{body[:MAX_TEXT]}".lower()
    if "http" in s or "www." in s:
        s = _URL.sub(" zurlz ", s)
    if "@" in s:
        s = _EMAIL.sub(" zurlz ", s)
    # punctuation stays: the TF-IDF tokenizer splits on it anyway, and removing it cost a third
    s = _VARIABLE.sub("ztokz", s)
    return " ".join(s.split())[:MAX_TEXT]
