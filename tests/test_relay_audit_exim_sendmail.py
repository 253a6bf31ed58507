"""`spoolsweep agent audit --mta exim|sendmail` tells an open relay from a locked-down one in the running configuration
of a real Exim and a real Sendmail (Debian's packages, unpacked privately), and relay-test agrees on the wire."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.audit import audit_exim, audit_sendmail
from pipeline.relaytest import relay_test
from spoolsweep.lab import exim as lab_exim
from spoolsweep.lab import sendmail as lab_sendmail

ROOT = Path(__file__).resolve().parent.parent


def audit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spoolsweep", "agent", "audit", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.exim
def test_exim_open_and_locked():
    if why := lab_exim.available():
        pytest.skip(why)
    with lab_exim.private_exim(open_relay=True) as o, lab_exim.private_exim(open_relay=False) as c:
        ro = audit_cli("--mta", "exim", "--exim", str(o.wrapper), "--exim-config", str(o.conf))
        rc = audit_cli("--mta", "exim", "--exim", str(c.wrapper), "--exim-config", str(c.conf))
        assert ro.returncode == 1, ro.stdout + ro.stderr
        assert "[open-relay] acl_smtp_rcpt (acl_rcpt) = accept" in ro.stdout
        assert "change to: accept domains = +local_domains : +relay_to_domains" in ro.stdout
        # the locked one has no open-relay finding (only the risk of AUTH without TLS, exit 3)
        assert rc.returncode == 3 and "[open-relay]" not in rc.stdout, rc.stdout + rc.stderr
        # and on the wire: 127.0.0.1 is not in the locked one's relay_from_hosts (127.0.0.2)
        assert relay_test("127.0.0.1", o.port, "example.org").open
        locked = relay_test("127.0.0.1", c.port, "example.org")
        assert locked.control_accepted and not locked.open, [(r.trick, r.reply) for r in locked.results]


@pytest.mark.parametrize("conf,setting", [
    ("hostlist relay_from_hosts = 0.0.0.0/0\nacl_smtp_rcpt = r\nbegin acl\nr:\n  accept hosts = +relay_from_hosts\n"
     "  deny", "relay_from_hosts"),
    ("hostlist relay_from_hosts = <; 127.0.0.1 ; 203.0.0.0/8\n", "relay_from_hosts"),
    ("acl_smtp_rcpt = r\nbegin acl\nr:\n  accept hosts = *\n  require domains = +local_domains", "acl_smtp_rcpt (r)"),
    ("domainlist relay_to_domains = *\n", "relay_to_domains"),
])
def test_exim_audit_rules(conf, setting):
    assert setting in {f.setting for f in audit_exim(conf) if f.severity == "open-relay"}


@pytest.mark.parametrize("conf", [
    "acl_smtp_rcpt = r\nbegin acl\nr:\n  require domains = +local_domains : +relay_to_domains\n  accept",
    "acl_smtp_rcpt = r\nbegin acl\nr:\n  accept hosts = :\n  accept hosts = 192.168.1.0/24\n"
    "  accept authenticated = *\n  deny message = relay not permitted",
    "hostlist relay_from_hosts = 127.0.0.1 : 10.0.0.0/8\n",
])
def test_exim_audit_locked(conf):
    assert not [f for f in audit_exim(conf) if f.severity == "open-relay"]


@pytest.mark.sendmail
def test_sendmail_open_and_locked():
    if why := lab_sendmail.available():
        pytest.skip(why)
    with lab_sendmail.private_sendmail(open_relay=True) as o, \
            lab_sendmail.private_sendmail(open_relay=False) as c, \
            lab_sendmail.private_sendmail(open_relay=False, local_config="CR203 10.1 example.org") as r:
        ro = audit_cli("--mta", "sendmail", "--sendmail", str(o.wrapper), "--sendmail-config", str(o.cf))
        rc = audit_cli("--mta", "sendmail", "--sendmail", str(c.wrapper), "--sendmail-config", str(c.cf))
        rr = audit_cli("--mta", "sendmail", "--sendmail", str(r.wrapper), "--sendmail-config", str(r.cf))
        assert ro.returncode == 1, ro.stdout + ro.stderr
        assert "[open-relay] FEATURE(`promiscuous_relay')" in ro.stdout
        assert "change to: delete FEATURE(`promiscuous_relay')dnl from sendmail.mc" in ro.stdout
        assert rc.returncode == 0 and "no open-relay settings" in rc.stdout, rc.stdout + rc.stderr + str(c.root)
        # class R as the running Sendmail has it: 203 (a public /8) opens the relay, 10.1 and example.org do not
        assert rr.returncode == 1 and "class R (relay-domains) = 203\n" in rr.stdout, rr.stdout + rr.stderr
        assert "= 10.1\n" not in rr.stdout and "example.org\n" not in rr.stdout
        assert relay_test("127.0.0.1", o.port, "example.org").open


@pytest.mark.parametrize("access,severity", [
    ("Connect:203 RELAY\n", "open-relay"),
    ("203.0 RELAY\n", "open-relay"),
    ("From:boss@example.org RELAY\n", "risk"),
])
def test_sendmail_access_rules(access, severity):
    cf = "# Relaying denied\n"
    assert [f.severity for f in audit_sendmail(cf, [], access)] == [severity]


def test_sendmail_access_local_is_fine():
    assert audit_sendmail("R$* 550 Relaying denied\n", ["127.0.0.1", "localhost", "192.168"],
                          "Connect:127.0.0.1 RELAY\nConnect:10 RELAY\nTo:example.org RELAY\n") == []
