"""A wrong site policy is a clear error that names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import PolicyError
from pipeline.policy import load_policy


def _load(tmp_path: Path, text: str):
    p = tmp_path / "site.toml"
    p.write_text(text)
    return load_policy(p)


def test_documented_keys(tmp_path: Path) -> None:
    pol = _load(tmp_path, 'local_domains = ["Example.org"]\ntrusted_networks = ["10.0.0.0/8"]\n'
                          'server_ips = ["192.0.2.25"]\nserver_names = ["mx1.example.org"]\n')
    assert pol.is_local_address("bob@EXAMPLE.org") and pol.is_local_address("x@sub.example.org")
    assert not pol.is_local_address("x@badexample.org")
    assert pol.is_trusted("10.1.2.3") and pol.is_trusted("192.0.2.25") and not pol.is_trusted("11.0.0.1")
    assert pol.is_trusted("::ffff:10.0.0.1")


@pytest.mark.parametrize("text,key", [
    ('local_domain = ["example.org"]', "local_domain"),
    ('trusted_networks = ["10.0.0.0/33"]', "trusted_networks"),
    ('server_ips = ["not-an-ip"]', "server_ips"),
    ('[thresholds]\ncampaign_similarity = 3', "thresholds.campaign_similarity"),
])
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(PolicyError, match=rf"key '{key}"):
        _load(tmp_path, text)


def test_not_toml(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not TOML"):
        _load(tmp_path, "local_domains = [")
