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


@pytest.mark.parametrize("nets", [["0.0.0.0/0"], ["::/0"], ["0.0.0.0/1", "128.0.0.0/1"], ["10.0.0.0/8", "64.0.0.0/3"],
                                  ["2000::/3"]])
def test_a_trusted_network_of_half_the_internet_is_refused(tmp_path: Path, nets: list[str]) -> None:
    # mynetworks = 0.0.0.0/0 is the open relay under investigation; written into the policy as trusted_networks,
    # every relayed spam came from a trusted network and was called valid, to be replayed.
    with pytest.raises(PolicyError, match=r"key 'trusted_networks'.* is a public network of /\d+: trusting so much "
                                          r"of the Internet is how a relay is opened"):
        _load(tmp_path, f"trusted_networks = {nets!r}".replace("'", '"'))


def test_private_networks_and_an_organisations_own_allocation_are_trusted(tmp_path: Path) -> None:
    pol = _load(tmp_path, 'trusted_networks = ["10.0.0.0/8", "172.16.0.0/12", "fc00::/7", "130.149.0.0/16", '
                          '"2001:db8::/32", "198.51.100.0/24"]\n')
    assert pol.is_trusted("130.149.7.1") and pol.is_trusted("fd00::1") and not pol.is_trusted("131.1.1.1")
