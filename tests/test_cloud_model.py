"""bench/cloud_model.py: dispatch is scaled from the size its handlers were measured at, not the steps'."""

from __future__ import annotations

from bench.cloud_model import model

STEPS = {"plan": {"seconds": 10.0, "peak_rss_mb": 1000.0}, "facts": {"seconds": 1.0, "peak_rss_mb": 600.0},
         "decide": {"seconds": 1.0, "peak_rss_mb": 500.0}, "verdicts": {"seconds": 2.0, "peak_rss_mb": 700.0},
         "summary": {"seconds": 20.0, "peak_rss_mb": 1500.0}}
MEASURED = {"parse_per_shard": 14.0, "triage": 4.0, "blocklist": 0.0, "dispatch": 2.0}


def test_dispatch_scales_from_the_handlers_run() -> None:
    # handlers measured at 20,000 messages, steps at 1,000,000: a million messages dispatch 50 times 2 s
    row = model(1_000_000, MEASURED, 1_000_000, 20_000, 50, 1.0, 0.002, STEPS, handlers_n=20_000)
    assert row["dispatch_seconds"] == 100.0
    # the steps' own figures stay as measured at their size, and the reduces grow past it
    assert row["steps"]["summary"]["seconds"] == 20.0  # type: ignore[index]
    ten = model(10_000_000, MEASURED, 1_000_000, 20_000, 50, 1.0, 0.002, STEPS, handlers_n=20_000)
    assert ten["steps"]["summary"]["peak_rss_mb"] == 500.0 + (1500.0 - 500.0) * 10  # type: ignore[index]
    assert ten["steps_fit_3008_mb"] is False
