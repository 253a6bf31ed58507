"""Text from hostile sources made safe to show: control and bidi characters become visible escapes."""

from __future__ import annotations

import re

# C0/C1 controls (newlines included: one line stays one line) and the Unicode bidi and invisible
# formatting marks that reorder or hide what an admin reads (Trojan Source, CVE-2021-42574); lone surrogates
# (undecodable bytes kept by surrogateescape) cannot be written as UTF-8 at all
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")


def neutral(text: str) -> str:
    """The text with every control and bidi mark replaced by its \\uXXXX escape."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def has_unsafe(text: str) -> bool:
    return _UNSAFE.search(text) is not None
