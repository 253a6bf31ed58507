"""Keyed blocklists (Spamhaus DQS, Abusix) and the catalogue check: keys from the environment or Secrets Manager
(moto server on 127.0.0.1), never printed; `--check-catalogue` marks the zones that stopped answering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import boto3
import pytest

from pipeline.blocklist import Status, load_catalogue
from pipeline.blocklist.check import KeyUnavailable, check_targets, resolve_key
from tests.support.dns_server import LocalDNS, ZoneResolver

ROOT = Path(__file__).resolve().parent.parent
KEY = "k3yfromsecretsmanager0123ab"
DQS = next(z for z in load_catalogue() if z.id == "zen.dq.spamhaus.net")


def _records(key: str) -> dict:
    zone = f"{key}.zen.dq.spamhaus.net"
    return {f"2.0.0.127.{zone}": (["127.0.0.2"], []),
            f"{'.'.join(['2', '0', '0', '0', '0', '0', 'f', '7', 'f', 'f', 'f', 'f'] + ['0'] * 20)}.{zone}":
                (["127.0.0.2"], []),
            f"25.2.0.192.{zone}": (["127.0.0.4", "127.0.0.10"], [f"https://check.spamhaus.org/ key {key}"])}


@pytest.fixture
def aws(moto_url, monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "SPOOLSWEEP_ENDPOINT_URL": moto_url}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SPOOLSWEEP_SPAMHAUS_DQS_KEY", raising=False)
    return boto3.client("secretsmanager", endpoint_url=moto_url, region_name="us-east-1")


@pytest.mark.slow
def test_dqs_key_from_secrets_manager_is_used_and_never_shown(aws, monkeypatch):
    from adapters.bootstrap import Cloud, secret_reader

    secrets = secret_reader(Cloud(endpoint_url=os.environ["SPOOLSWEEP_ENDPOINT_URL"], region="us-east-1"))
    aws.create_secret(Name="spoolsweep/dqs", SecretString=json.dumps({"key": KEY}))
    monkeypatch.setenv("SPOOLSWEEP_SPAMHAUS_DQS_SECRET", "spoolsweep/dqs")
    with LocalDNS(ZoneResolver(_records(KEY), set(), set(), set())) as server:
        rep = check_targets(["192.0.2.25"], server.nameserver, [DQS], timeout=1, read_secret=secrets)
    (row,) = rep.results
    assert row.status is Status.listed and row.zone == "zen.dq.spamhaus.net"
    assert set(row.meanings) == {"XBL: exploited host (botnet, proxy, malware)",
                                 "PBL: end-user range listed by its ISP (should not send direct-to-MX)"}
    assert KEY not in rep.model_dump_json() and "<key>" in row.txt[0]
    monkeypatch.setenv("SPOOLSWEEP_SPAMHAUS_DQS_SECRET", "spoolsweep/missing")
    with pytest.raises(KeyUnavailable, match="spoolsweep/missing: ResourceNotFoundException"):
        resolve_key("spamhaus_dqs", secrets)


def test_key_from_the_environment_and_bad_keys(monkeypatch):
    monkeypatch.delenv("SPOOLSWEEP_ABUSIX_SECRET", raising=False)
    monkeypatch.setenv("SPOOLSWEEP_ABUSIX_KEY", "  abc-123  ")
    assert resolve_key("abusix") == "abc-123"
    monkeypatch.setenv("SPOOLSWEEP_ABUSIX_KEY", "abc.evil.example")  # a dot would move the query to another zone
    with pytest.raises(KeyUnavailable, match="single DNS label") as e:
        resolve_key("abusix")
    assert "evil" not in str(e.value)
    monkeypatch.delenv("SPOOLSWEEP_ABUSIX_KEY")
    assert resolve_key("abusix") is None


@pytest.mark.slow
def test_cli_keyed_zone_never_prints_the_key(monkeypatch, tmp_path):
    key = "envkey0123456789abcdefgh"
    pol = tmp_path / "site.toml"
    pol.write_text('server_ips = ["192.0.2.25"]\nblocklist_zones = ["zen.dq.spamhaus.net"]\n')
    with LocalDNS(ZoneResolver(_records(key), set(), set(), set())) as server:
        r = subprocess.run([sys.executable, "-m", "spoolsweep", "blocklist", "--policy", str(pol), "--nameserver",
                            server.nameserver, "--timeout", "1"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, env={**__import__("os").environ, "SPOOLSWEEP_SPAMHAUS_DQS_KEY": key,
                                             "COLUMNS": "200"})
    assert r.returncode == 1, r.stderr
    assert "zen.dq.spamhaus.net" in r.stdout and "XBL" in r.stdout
    assert key not in r.stdout + r.stderr


@pytest.mark.slow
def test_check_catalogue_marks_zones_that_stopped_answering(tmp_path):
    cat = tmp_path / "cat.toml"
    cat.write_text("# my catalogue\n" + "".join(
        f'[[zone]]\nzone = "{z}"\nname = "{z}"\nlists = ["ipv4", "ipv6"]\ndocs = "https://{z}/"\n'
        f'answered = 2026-01-01\ntest = {{ ipv4 = "127.0.0.2", ipv6 = "::ffff:7f00:2" }}\n'
        f'[zone.codes]\n"127.0.0.2" = "spam"\n\n' for z in ("alive.test", "v4only.test")))
    v6 = ".".join(["2", "0", "0", "0", "0", "0", "f", "7", "f", "f", "f", "f"] + ["0"] * 20)
    records = {"2.0.0.127.alive.test": (["127.0.0.2"], []), f"{v6}.alive.test": (["127.0.0.2"], []),
               "2.0.0.127.v4only.test": (["127.0.0.2"], [])}
    marked = tmp_path / "marked.toml"
    with LocalDNS(ZoneResolver(records, set(), set(), set())) as server:
        r = subprocess.run([sys.executable, "-m", "spoolsweep", "blocklist", "--check-catalogue", "--catalogue",
                            str(cat), "--nameserver", server.nameserver, "--timeout", "1", "--json",
                            "--write-catalogue", str(marked)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    health = {(h["zone"], h["family"]): h for h in json.loads(r.stdout)}
    assert health[("alive.test", "ipv6")]["working"] and not health[("v4only.test", "ipv6")]["working"]
    text = marked.read_text()
    assert text.startswith("# my catalogue\n")  # comments and layout kept
    zones = {z["zone"]: z for z in tomllib.loads(text)["zone"]}
    assert str(zones["alive.test"]["answered"]) != "2026-01-01" and "stopped" not in zones["alive.test"]
    assert "ipv6: does not list its ipv6 test entry" in zones["v4only.test"]["stopped"]
    assert str(zones["v4only.test"]["answered"]) == "2026-01-01"  # the last good date stays
