"""The agent records a real Postfix's and a real Exim's own configuration in the snapshot, and `spoolsweep policy
suggest` and triage recover exactly that policy from it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent import siteconf
from agent.journal import Journal
from agent.take import take
from agent.upload import parse_destination
from pipeline.policy import SitePolicy
from pipeline.triage import read_and_parse, triage
from spoolsweep.commands.policy import render

MSG = b"From: <a@example.org>\nTo: <b@far.example>\nSubject: hi\nMessage-ID: <sc-1@example.org>\n\nhello\n"


def _snapshot(queue, mta: str, tmp_path: Path) -> tuple[Path, dict]:
    site = siteconf.record(queue, mta)
    assert site is not None
    dest = parse_destination(None, tmp_path / "store", "inc-sc", "mx1")
    take(queue, mta, dest, Journal(tmp_path / "state/journal.sqlite"), tmp_path / "state", site=site)
    return tmp_path / "store/incoming/inc-sc/mx1/snapshot.tar.zst", site


def _suggested(snap: Path) -> dict:
    _, records, report = read_and_parse(snap, SitePolicy(), workers=1)
    return tomllib.loads(render(snap.name, records, report.meta))


@pytest.mark.postfix
@pytest.mark.slow
def test_real_postfix_policy_recovered_exactly(tmp_path: Path) -> None:
    from agent.mta.postfix import PostfixQueue
    from tests.support.postfix import available, private_postfix

    if why := available():
        pytest.skip(why)
    extra = {"mydestination": "$myhostname, localhost.$mydomain, localhost",
             "virtual_alias_domains": "example.org example.net", "relay_domains": "partner.example",
             "mynetworks": "127.0.0.0/8 192.0.2.0/24 0.0.0.0/0"}
    with private_postfix(users={}, extra=extra) as pf:
        pf.send("a@example.org", ["b@far.example"], MSG)
        pf.wait_queued(1)
        snap, site = _snapshot(PostfixQueue(pf.etc), "postfix", tmp_path)
    assert site["how"] == "postconf -x" and site["params"]["mydestination"].startswith("mx1.example.org")
    assert _suggested(snap) == {
        "server_names": ["mx1.example.org"], "local_domains": ["mx1.example.org", "example.org", "example.net"],
        "relay_domains": ["partner.example"], "trusted_networks": ["127.0.0.0/8", "192.0.2.0/24"]}
    m = triage(snap, SitePolicy(), workers=1)
    assert m.policy is not None and m.policy.values["server_names"] == ["mx1.example.org"]
    assert m.policy.origins["relay_domains"] == "postfix on mx1 (postconf -x): relay_domains"
    assert any("0.0.0.0/0" in n for n in m.policy.notes)  # the open relay's own setting is not trusted


@pytest.mark.exim
@pytest.mark.slow
def test_real_exim_policy_recovered_exactly(tmp_path: Path) -> None:
    from agent.mta.exim import EximQueue
    from tests.support.exim import EximInstance, available, private_exim

    if why := available():
        pytest.skip(why)
    lists = ("domainlist local_domains = @ : localhost : example.org : example.net\n"
             "domainlist relay_to_domains = partner.example\n"
             "hostlist relay_from_hosts = <; 127.0.0.1 ; ::1 ; 192.0.2.0/24\n\n")
    setup = EximInstance.setup

    def with_lists(self: EximInstance) -> None:
        setup(self)
        self.conf.write_text(self.conf.read_text().replace("begin acl", lists + "begin acl", 1))

    mp = pytest.MonkeyPatch()
    mp.setattr(EximInstance, "setup", with_lists)
    try:
        with private_exim() as ex:
            ex.send_smtp("a@example.org", ["b@far.example"], MSG)
            snap, site = _snapshot(EximQueue(command=ex.argv(), env=ex.env()), "exim", tmp_path)
    finally:
        mp.undo()
    assert site["params"]["relay_from_hosts"] == "<; 127.0.0.1 ; ::1 ; 192.0.2.0/24"
    assert _suggested(snap) == {
        "server_names": ["mx1.example.org"], "local_domains": ["mx1.example.org", "example.org", "example.net"],
        "relay_domains": ["partner.example"], "trusted_networks": ["127.0.0.1/32", "::1/128", "192.0.2.0/24"]}
