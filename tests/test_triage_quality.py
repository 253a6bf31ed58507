"""Triage of a generated incident meets the issue's quality bars and is deterministic."""

from __future__ import annotations

import pytest

from pipeline.generator import score
from pipeline.manifest_io import manifest_bytes
from pipeline.models import Verdict
from pipeline.triage import triage


@pytest.mark.slow
def test_quality_bars(incident_tar, policy):
    m = triage(incident_tar, policy, workers=2)
    s = score(m.messages, incident_tar.with_name("incident.truth.jsonl"))
    assert s["messages"] == 1500
    assert s["valid_as_spam"] == 0, s["by_kind"]
    assert s["spam_as_valid_share"] <= 0.005, s["by_kind"]
    assert s["review_share"] <= 0.02, s["by_kind"]
    assert m.totals.valid + m.totals.spam + m.totals.review == 1500
    # the newsletter is a big near-identical cluster and must stay valid
    news = [c for c in m.campaigns if c.accounts.top and c.accounts.top[0][0] == "news"]
    assert news and all(c.verdict is Verdict.valid for c in news)
    # the stolen account is named with its sources
    bob = next(a for a in m.accounts if a.account == "bob")
    assert bob.compromised and bob.client_ips >= 3 and "bob" in bob.summary
    assert not next(a for a in m.accounts if a.account == "news").compromised


@pytest.mark.slow
def test_every_verdict_has_reasons(incident_tar, policy):
    m = triage(incident_tar, policy, workers=1)
    for msg in m.messages:
        assert msg.reasons, msg.path
        assert 0 <= msg.confidence <= 1
    for c in m.campaigns:
        assert c.label and c.size >= policy.thresholds.campaign_min_size


@pytest.mark.slow
def test_deterministic(incident_tar, policy):
    a = triage(incident_tar, policy, workers=2)
    b = triage(incident_tar, policy, workers=1)
    assert manifest_bytes(a) == manifest_bytes(b)


@pytest.mark.slow
def test_deterministic_across_processes(incident_tar, policy_file, tmp_path):
    """Same snapshot, same policy, two processes with different hash seeds: the same manifest bytes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / seed
        env = {**os.environ, "PYTHONHASHSEED": seed}
        r = subprocess.run([sys.executable, "-m", "spoolsweep", "triage", str(incident_tar), "--policy",
                            str(policy_file), "--out", str(out), "-q"], cwd=root, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append((out / "manifest.json").read_bytes())
    assert outs[0] == outs[1]
