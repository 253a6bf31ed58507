"""Text normalisation for campaign grouping: the variable parts of a spam run become placeholders."""

from __future__ import annotations

import html
import re

_URL = re.compile(r"(?i)\b(?:https?://|www\.)[^\s<>\"')\]]+")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_HTML_DROP = re.compile(r"(?is)<(script|style|head)\b.*?</\1\s*>|<!--.*?-->")
_TAG = re.compile(r"(?s)<[^>]{0,2000}>")
_NUM = re.compile(r"\b\d[\d,.:/-]*\b")
# hash-busters: tokens mixing letters and digits, or long consonant runs
_MIXED = re.compile(r"\b(?=\w*\d)(?=\w*[a-z])\w{5,}\b")
_NOISE = re.compile(r"\b[bcdfghjklmnpqrstvwxz]{6,}\b")
_WS = re.compile(r"\s+")
_NONWORD = re.compile(r"[^\w\s]+")

# The first few KB of text decide which run a message belongs to; reading further only costs time.
MAX_TEXT = 3000


def html_to_text(s: str) -> str:
    s = _HTML_DROP.sub(" ", s[: MAX_TEXT * 8])
    s = _TAG.sub(" ", s)
    return html.unescape(s)


def normalise(subject: str, body: str) -> str:
    """Lower-case subject + body with URLs, addresses, numbers and hash-buster tokens replaced."""
    s = f"{subject}\n{body[:MAX_TEXT]}".lower()
    s = _URL.sub(" zurlz ", s)
    s = _EMAIL.sub(" zemailz ", s)
    s = _NUM.sub(" znumz ", s)
    s = _NONWORD.sub(" ", s)
    s = _MIXED.sub(" ztokz ", s)
    s = _NOISE.sub(" ztokz ", s)
    return _WS.sub(" ", s).strip()[:MAX_TEXT]
