"""bench/parse_budget.py's bare parse leaves out the grouping features and nothing else."""

from __future__ import annotations

import hashlib

import pytest

import pipeline.parse as parse
from bench.parse_budget import _without_grouping_features
from pipeline.models import RawMessage
from pipeline.readers.base import Found

FEATURES = {"keys", "sketch", "shape"}


def test_bare_parse_lacks_only_the_grouping_features(corpus, policy, monkeypatch: pytest.MonkeyPatch) -> None:
    # the replacements go into pipeline.parse itself: put back after the test
    monkeypatch.setattr(parse, "_set_grouping", parse._set_grouping)
    monkeypatch.setattr(parse, "shape", parse.shape)
    ham, spam = corpus

    def found() -> list[Found]:  # afresh for each parse: a record takes its message's envelope, and fills it in
        return [Found(RawMessage(path=f"m/{i:04d}.eml"), d, hashlib.sha256(d).hexdigest(), len(d))
                for i, d in enumerate([*ham[:30], *spam[:30]])]

    full = [parse.parse_found(f, policy) for f in found()]
    _without_grouping_features()
    bare = [parse.parse_found(f, policy) for f in found()]
    # the shipped parse gave them (else the comparison below shows nothing)
    assert sum(bool(r.keys) for r in full) > 30 and sum(bool(r.sketch) for r in full) > 30
    assert all(r.shape for r in full)
    assert all(not r.keys and not r.sketch and r.shape == "" for r in bare)
    assert [r.model_dump(exclude=FEATURES) for r in bare] == [r.model_dump(exclude=FEATURES) for r in full]
