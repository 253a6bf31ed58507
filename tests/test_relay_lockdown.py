"""relay-test and agent audit tell a real open relay from a locked-down Postfix, trick by trick."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.audit import audit_postfix, parse_postconf
from pipeline.relaytest import relay_test
from tests.support.postfix import available, private_postfix

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.postfix

# the open relay of a real incident: "mynetworks = 0.0.0.0/0" and a permit before the destination check
OPEN = {"mynetworks": "0.0.0.0/0", "relay_domains": "example.org"}
# locked: only 127.0.0.2 is trusted, so the test client on 127.0.0.1 is a stranger
LOCKED = {"mynetworks": "127.0.0.2/32", "relay_domains": "example.org"}


@pytest.fixture(scope="module")
def servers():
    if why := available():
        pytest.skip(why)
    with private_postfix(open_relay=True, extra=OPEN) as open_pf, \
            private_postfix(open_relay=False, extra=LOCKED) as locked_pf:
        yield open_pf, locked_pf


def test_relay_test_tells_them_apart(servers):
    open_pf, locked_pf = servers
    o = relay_test("127.0.0.1", open_pf.port, "example.org")
    c = relay_test("127.0.0.1", locked_pf.port, "example.org")
    assert o.control_accepted and c.control_accepted
    assert o.open and not c.open
    by = {r.trick: r for r in o.results}
    for trick in ("plain relay", "spoofed local sender", "null sender", "upper-case domain", "IP literal",
                  "after a failed AUTH"):
        assert by[trick].accepted, (trick, by[trick].reply)
    for r in c.results:
        if r.relays_outside:
            assert not r.accepted, (r.trick, r.reply)
    # nothing was ever queued: every trick stopped at RCPT TO
    assert open_pf.postqueue_json() == [] and locked_pf.postqueue_json() == []


def test_cli_exit_status(servers):
    open_pf, locked_pf = servers
    run = [sys.executable, "-m", "spoolsweep", "relay-test", "--local-domain", "example.org"]
    o = subprocess.run([*run, f"127.0.0.1:{open_pf.port}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    c = subprocess.run([*run, f"127.0.0.1:{locked_pf.port}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert o.returncode == 1 and "OPEN RELAY" in o.stdout
    assert c.returncode == 0 and "no relay trick was accepted" in c.stdout
    assert "servers you operate" in o.stderr


def test_audit_tells_them_apart(servers):
    open_pf, locked_pf = servers
    o = audit_postfix(parse_postconf(open_pf.run("postconf", "-c", str(open_pf.root / "etc"), "-n").stdout.decode()))
    c = audit_postfix(parse_postconf(locked_pf.run("postconf", "-c", str(locked_pf.root / "etc"),
                                                   "-n").stdout.decode()))
    settings = {f.setting for f in o if f.severity == "open-relay"}
    assert settings == {"mynetworks", "smtpd_relay_restrictions"}
    assert any("0.0.0.0/0" in f.problem for f in o)
    assert not [f for f in c if f.severity == "open-relay"]
    r = subprocess.run([sys.executable, "-m", "spoolsweep", "agent", "audit", "--config-dir",
                        str(open_pf.root / "etc")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "change to: mynetworks = 127.0.0.0/8" in r.stdout


@pytest.mark.parametrize("conf,setting", [
    ("smtpd_relay_restrictions = permit_mynetworks permit", "smtpd_relay_restrictions"),
    ("smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated", "smtpd_relay_restrictions"),
    ("relay_domains = *", "relay_domains"),
    ("mynetworks = 203.0.0.0/8", "mynetworks"),
])
def test_audit_rules(conf, setting):
    assert setting in {f.setting for f in audit_postfix(parse_postconf(conf)) if f.severity == "open-relay"}


def test_audit_sasl_without_tls():
    f = audit_postfix(parse_postconf("smtpd_sasl_auth_enable = yes"))
    assert [x.change_to for x in f] == ["smtpd_tls_auth_only = yes"]
