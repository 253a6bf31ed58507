"""The published JSON Schema is the models' schema, and manifests validate against it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.manifest_io import manifest_schema

SCHEMA = Path(__file__).resolve().parent.parent / "pipeline" / "schema" / "manifest.schema.json"


def test_checked_in_schema_is_current() -> None:
    assert json.loads(SCHEMA.read_text()) == json.loads(json.dumps(manifest_schema())), (
        "regenerate: python -m spoolsweep schema > pipeline/schema/manifest.schema.json")


@pytest.mark.slow
def test_manifest_fields(incident_tar, policy) -> None:
    from pipeline.triage import triage

    m = json.loads(triage(incident_tar, policy).model_dump_json())
    msg = m["messages"][0]
    for key in ("path", "verdict", "queue_id", "sha256", "size", "envelope", "subject", "campaign", "reasons",
                "confidence"):
        assert key in msg
    assert set(m["totals"]) >= {"messages", "valid", "spam", "review"}
