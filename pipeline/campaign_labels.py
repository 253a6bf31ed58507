"""A campaign in words a person reads: its most typical subject and a short phrase its members' text shares.

The normalised tokens the grouping works on (`ztokz`, `zurlz`, lower case) stay in Campaign.label, for search.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from pipeline.normalise import normalise

SAMPLE = 200  # members read: a campaign's wording is settled long before that
PHRASE_WORDS = 8
_PLACEHOLDER = re.compile(r"ztokz|zurlz")
_WORD = re.compile(r"[a-z][a-z'’-]*[a-z]|[a-z]")
_ASCII_DIGIT = re.compile("[0-9]")  # what str.isdigit finds in an ASCII token
_MARKS = ":;,.!?-–—*()[]<>\"'#"
_JOINING = frozenset("fwd the and for you your our with from this that are was not but all any can has have will"
                     .split())


def typical_subject(subjects: Sequence[str]) -> str:
    """The subject whose words the members share most, with the words fewer than half of them have dropped
    (a spamware run appends per-copy tokens to one subject: those go, the subject stays); whole when no
    word that says anything would be left (members with subjects of their own, a list's issues say, share
    a "to", a "Re:" or the list's tag, which name none of them)."""
    subs = [s.strip() for s in subjects[:SAMPLE] if s and s.strip()]
    if not subs:
        return ""
    df: Counter[str] = Counter()
    for s in subs:
        df.update(set(s.split()))
    # most shared words first; among equals the shorter subject (fewer stray tokens), then the first seen
    best = min(range(len(subs)), key=lambda k: (-sum(df[w] for w in set(subs[k].split())), len(subs[k]), k))
    words = subs[best].split()
    kept = [w for w in words if df[w] * 2 >= len(subs)]
    return " ".join(kept if any(map(_says_something, kept)) else words)[:200]


def _says_something(word: str) -> bool:
    """A subject's word that names something: not a list's [tag], a reply or forward mark, or a word that
    only joins others."""
    w = word.lower().strip(_MARKS)
    return len(w) >= 3 and not word.startswith("[") and w not in _JOINING


def shared_phrase(texts: Sequence[str], subjects: Sequence[str] = ()) -> str:
    """A run of up to PHRASE_WORDS words from the body that most members' normalised text holds, read in the
    first member's order; the subject's words are skipped (the subject is shown already)."""
    texts = [t for t in texts[:SAMPLE] if t]
    if not texts:
        return ""
    runs: list[list[str]] = []
    words_of = _WORDS  # the members of a run share most of their tokens, and runs share words: each is read once
    if len(words_of) > _WORDS_KEPT:
        words_of.clear()
    normalised: dict[str, str] = {}  # a run's members share a few subjects
    for k, t in enumerate(texts):
        subject = ""
        if k < len(subjects):
            subject = normalised.get(subjects[k]) or normalised.setdefault(
                subjects[k], normalise(subjects[k], "").strip())
        body = t[len(subject):] if subject and t.startswith(subject) else t
        runs.append(list(map(words_of.__getitem__, body.split())))  # __missing__ still applies
    n = min(PHRASE_WORDS, 4)
    first = runs[0]
    # the earliest shared 4-word run of the first member that at least half hold (else the most held one)
    need = max(2, len(runs) // 2) if len(runs) > 1 else 1
    grams = list(zip(*(first[j:] for j in range(n)), strict=False))
    # only the first member's runs can be that one: in a campaign, the earliest usually is. So the first
    # few are looked for in every member by themselves (a member holds a run when its words joined by \x01
    # hold the run's: no word holds \x01, none is empty); failing those, every run is counted (each once per
    # member) as a set's intersection with each member's runs.
    wanted = {g for g in grams if all(g) and len(" ".join(g)) > 12}
    start = None
    if wanted:
        joined = ["\x01" + "\x01".join(words) + "\x01" for words in runs]
        tried = 0
        for i, g in enumerate(grams):
            if g in wanted:
                if sum(("\x01" + "\x01".join(g) + "\x01") in j for j in joined) >= need:
                    start = i
                    break
                tried += 1
                if tried == _TRIED_ALONE:
                    break
        if start is None and tried == _TRIED_ALONE:
            held: Counter[tuple[str, ...]] = Counter()
            for words in runs:
                held.update(wanted.intersection(zip(*(words[j:] for j in range(n)), strict=False)))
            start = next((i for i, g in enumerate(grams) if g in wanted and held[g] >= need), None)
    if start is None:
        df: Counter[tuple[str, ...]] = Counter()
        for words in runs:
            # n-word runs, each counted once per member, in the order read: a set's order would change with
            # the process's hash seed and, through the ties of max() below, the phrase with it
            df.update(dict.fromkeys((g for g in zip(*(words[j:] for j in range(n)), strict=False) if all(g)), 1))
        if not df:
            return ""
        gram, _ = max(df.items(), key=lambda kv: (kv[1], len(" ".join(kv[0]))))
        return " ".join(gram)
    end = start + n
    while end < len(first) and end - start < PHRASE_WORDS and first[end]:
        end += 1
    return " ".join(first[start:end])


class _Words(dict[str, str]):
    """Token -> the word it counts as: a placeholder or number breaks a run (those vary from copy to copy)."""

    def __missing__(self, tok: str) -> str:
        if _PLACEHOLDER.search(tok) or (_ASCII_DIGIT.search(tok) if tok.isascii() else any(c.isdigit() for c in tok)):
            word = ""
        else:
            m = _WORD.search(tok)
            word = m.group(0) if m else ""
        self[tok] = word
        return word


_WORDS = _Words()
_TRIED_ALONE = 3  # a campaign's first runs looked for by themselves before every run is counted
_WORDS_KEPT = 200_000  # tokens remembered across campaigns (spamware's per-copy tokens would grow it unbounded)


def describe(subjects: Sequence[str], texts: Sequence[str]) -> tuple[str, str]:
    """(typical subject, shared phrase) of a campaign's members."""
    return typical_subject(subjects), shared_phrase(texts, subjects)
