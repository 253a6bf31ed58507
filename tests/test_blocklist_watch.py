"""The scheduled blocklist watcher: compares with its last report and publishes what moved."""

from __future__ import annotations

from pipeline.blocklist import BlocklistReport
from pipeline.policy import SitePolicy
from pipeline.queues import BLOCKLIST_STATE_KEY as STATE_KEY
from pipeline.service.blocklists import watch
from pipeline.store import LocalStore
from tests.support.dns_server import LocalDNS, ZoneResolver


def test_watch_publishes_changes_and_keeps_state(tmp_path):
    store = LocalStore(tmp_path / "store")
    policy = SitePolicy(server_ips=["192.0.2.25"], blocklist_zones=["bl.spamcop.net"])
    sent: list[tuple[str, str]] = []
    records = {"2.0.0.127.bl.spamcop.net": (["127.0.0.2"], [])}
    resolver = ZoneResolver(records, set(), set(), set(), ttl=0)
    with LocalDNS(resolver) as dns:
        assert watch(store, policy, lambda s, m: sent.append((s, m)), dns.nameserver) == []  # first run: baseline
        assert store.exists(STATE_KEY) and not sent
        resolver.records["25.2.0.192.bl.spamcop.net"] = (["127.0.0.2"], ["listed"])
        moved = watch(store, policy, lambda s, m: sent.append((s, m)), dns.nameserver)
    assert [(c["zone"], c["before"], c["now"]) for c in moved] == [("bl.spamcop.net", "not_listed", "listed")]
    assert sent and "1 new listing" in sent[0][0] and "bl.spamcop.net" in sent[0][1]
    last = BlocklistReport.model_validate_json(store.get(STATE_KEY))
    assert last.listed()[0].target == "192.0.2.25"


def test_a_misspelt_zone_in_the_policy_is_a_report_that_says_so(tmp_path):
    """The pipeline's blocklist step: a configuration error is written down for the console, not retried forever."""
    from console.incidents import blocklist_state as _blocklist_state
    from pipeline import queues
    from pipeline.service.blocklists import check_incident

    store = LocalStore(tmp_path / "store")
    policy = SitePolicy(server_ips=["192.0.2.25"], blocklist_zones=["zen.spamhuas.org"])
    check_incident(store, "inc1", policy, "127.0.0.1:9")
    report = BlocklistReport.model_validate_json(store.get(queues.blocklist_key("inc1")))
    assert report.results == [] and "zen.spamhuas.org (did you mean zen.spamhaus.org?)" in report.why
    assert _blocklist_state(report.model_dump(mode="json")).startswith("not checked: These blocklist zones")
