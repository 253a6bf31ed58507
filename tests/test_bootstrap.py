"""The one bootstrap: every entry point's store and channel URLs mean the same adapters."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.bootstrap import Cloud, build_channel, build_store, cloud_from_env, parse_channel, parse_store
from pipeline.errors import StoreError
from pipeline.models import SnapshotInfo
from pipeline.store import LocalChannel, LocalStore


def test_store_urls() -> None:
    assert parse_store("s3://evidence/").bucket == "evidence"
    assert parse_store("data").path == Path("data") and parse_store("data").bucket is None
    for bad in ("s3://", "s3://bucket/folder", ""):
        with pytest.raises(StoreError, match="store"):
            parse_store(bad)


@pytest.mark.parametrize(("url", "prefix"), [("sqs", "stack"), ("sqs://", "stack"), ("sqs://other", "other"),
                                             ("sqs://other/", "other")])
def test_every_documented_sqs_spelling_names_the_queues(url: str, prefix: str) -> None:
    """`--channel sqs` (the agent's README) and `sqs://PREFIX` (the functions' settings) are one syntax."""
    assert parse_channel(url, "s3://b", Cloud(name_prefix="stack")).queue_prefix == prefix


def test_an_empty_channel_is_the_stores_own() -> None:
    assert parse_channel("", "data").path == Path("data") / "channel"
    assert parse_channel("", "s3://b", Cloud(name_prefix="stack")).queue_prefix == "stack"
    assert parse_channel("chan", "s3://b").path == Path("chan")


def test_local_urls_build_local_adapters(tmp_path: Path) -> None:
    assert isinstance(build_store(str(tmp_path / "s")), LocalStore)
    ch = build_channel("", str(tmp_path / "s"), visibility=5)
    assert isinstance(ch, LocalChannel) and ch.root == tmp_path / "s" / "channel" and ch.visibility == 5


def test_cloud_from_env_reads_the_functions_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOOLSWEEP_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("SPOOLSWEEP_NAME_PREFIX", "ss1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    assert cloud_from_env(region="us-east-1") == Cloud("http://127.0.0.1:4566", "us-east-1", "ss1")
    monkeypatch.delenv("SPOOLSWEEP_ENDPOINT_URL")
    assert cloud_from_env().endpoint_url is None


def test_a_manifest_from_before_hosts_reads_its_hosts_as_a_list() -> None:
    old = SnapshotInfo.model_validate({"source": "x", "format": "eml", "host": "mx1, mx2"})
    assert old.hosts == ["mx1", "mx2"] and "host" not in old.model_dump()
    assert SnapshotInfo.model_validate({"source": "x", "format": "eml", "host": None}).hosts == []
