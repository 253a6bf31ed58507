"""The catalogue replayed: a DNS server on 127.0.0.1 answers every documented code of every zone (and codes no zone
documents), generated from the catalogue's own data; the report must read each one as the list defines it."""

from __future__ import annotations

import pytest

from pipeline.blocklist import Status, load_catalogue
from pipeline.blocklist.check import check_targets
from tests.support.dns_server import LocalDNS, ZoneResolver
from tests.support.dnsbl_replay import KEYS, plan

LIVE = [z for z in load_catalogue() if z.status == "live"]


@pytest.fixture(scope="module")
def replay():
    plans = [plan(z) for z in LIVE]
    records = {k: v for p in plans for k, v in p.records.items()}
    with LocalDNS(ZoneResolver(records, set(), set(), set())) as server:
        yield server, plans


@pytest.mark.slow
def test_every_documented_code_of_every_zone_is_read_as_documented(replay, monkeypatch):
    server, plans = replay
    for name, key in KEYS.items():
        monkeypatch.setenv(f"SPOOLSWEEP_{name.upper()}_KEY", key)
    wrong, checked = [], 0
    for p in plans:
        rep = check_targets([c.target for c in p.cases], server.nameserver, [p.zone], timeout=1)
        got = {r.target: r for r in rep.results}
        assert not rep.zones, (p.zone.id, [h.why for h in rep.zones])  # every zone trusted: its test entries answer
        for c in p.cases:
            r = got.get(c.target)
            text = " ".join([*(r.meanings if r else []), r.why if r else ""])
            if r is None or r.status is not c.status or c.says not in text:
                wrong.append(f"{p.zone.id} {c.target} answered {c.answer}: expected {c.status.value} saying "
                             f"{c.says!r}, got {r.status.value if r else None}: {text!r}")
            checked += 1
        for key in KEYS.values():
            assert key not in rep.model_dump_json(), "a service key reached the report"
    assert not wrong, f"{len(wrong)} of {checked} answers misread:\n" + "\n".join(wrong[:20])
    assert checked > 300
    kinds = {c.status for p in plans for c in p.cases}
    assert kinds == {Status.listed, Status.unknown, Status.reputation, Status.allowlisted}


def test_keyed_zones_are_skipped_without_a_key_and_say_how_to_add_one(replay, monkeypatch):
    server, plans = replay
    for name in KEYS:
        monkeypatch.delenv(f"SPOOLSWEEP_{name.upper()}_KEY", raising=False)
        monkeypatch.delenv(f"SPOOLSWEEP_{name.upper()}_SECRET", raising=False)
    keyed = [p.zone for p in plans if p.zone.key]
    rep = check_targets(["198.18.0.2"], server.nameserver, keyed, timeout=1)
    assert rep.results == []  # not asked, not "unknown": the admin chose no key
    assert {h.zone for h in rep.zones} >= {"zen.dq.spamhaus.net", "combined.mail.abusix.zone"}
    assert all("SPOOLSWEEP_" in h.why and "_KEY" in h.why for h in rep.zones)
    # named by the admin (policy blocklist_zones): no key means the check could not be made, so unknown
    chosen = check_targets(["198.18.0.2"], server.nameserver, keyed, timeout=1, chosen=True)
    assert chosen.results and all(r.status is Status.unknown and "needs a key" in r.why for r in chosen.results)
