"""Blocklist checks against a real DNS server on 127.0.0.1: every answer kind, over UDP and TCP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.query
import pytest

from pipeline.blocklist import Status, load_catalogue
from pipeline.blocklist.catalogue import Zone
from pipeline.blocklist.check import check_targets, query_name
from tests.support.dns_server import LocalDNS, ZoneResolver

ROOT = Path(__file__).resolve().parent.parent
V6 = "2001:db8::25"
V6_NIBBLES = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
TEST_V6 = "2.0.0.0.0.0.f.7.f.f.f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0"

ZONES = [
    Zone(zone="good.test", name="good", lists=["ipv4", "ipv6"], codes={"127.0.0.2": "spam source",
                                                                      "127.0.0.4": "exploited"},
         delist="https://good.test/delist", expires=True),
    Zone(zone="clean.test", name="clean", lists=["ipv4"]),
    Zone(zone="spamhaus.test", name="spamhaus-like", lists=["ipv4"]),
    Zone(zone="outside.test", name="redirecting resolver", lists=["ipv4"]),
    Zone(zone="slowname.test", name="slow for one name", lists=["ipv4"]),
    Zone(zone="slow.test", name="slow zone", lists=["ipv4"]),
    Zone(zone="broken.test", name="servfail", lists=["ipv4"]),
    Zone(zone="wild.test", name="wildcard", lists=["ipv4"]),
    Zone(zone="notest.test", name="no test entry", lists=["ipv4"]),
    Zone(zone="gone.test", name="dead", lists=["ipv4"], status="dead", why_dead="shut down in June 2024"),
    Zone(zone="dbl.test", name="domains", lists=["domain"], test="dbltest.com", codes={"127.0.1.2": "spam domain"}),
]

RECORDS = {
    **{f"2.0.0.127.{z}": (["127.0.0.2"], []) for z in ("good.test", "clean.test", "spamhaus.test", "outside.test",
                                                     "slowname.test")},
    f"{TEST_V6}.good.test": (["127.0.0.2"], []),
    "9.2.0.192.good.test": (["127.0.0.2", "127.0.0.4"], ["Listed: see https://good.test/q?ip=192.0.2.9"]),
    f"{V6_NIBBLES}.good.test": (["127.0.0.2"], ["v6 listed"]),
    "9.2.0.192.spamhaus.test": (["127.255.255.254"], []),
    "9.2.0.192.outside.test": (["198.51.100.1"], []),
    "dbltest.com.dbl.test": (["127.0.1.2"], []),
    "spammy.example.dbl.test": (["127.0.1.2"], ["spam domain"]),
}


@pytest.fixture(scope="module")
def dns_server():
    resolver = ZoneResolver(RECORDS, slow={"slow.test", "9.2.0.192.slowname.test"}, broken={"broken.test"},
                            wildcard={"wild.test"})
    with LocalDNS(resolver) as server:
        yield server


def _by_zone(report, target):
    return {r.zone: r for r in report.results if r.target == target}


def test_every_answer_kind(dns_server):
    rep = check_targets(["192.0.2.9", V6, "spammy.example", "clean.example"], dns_server.nameserver, ZONES,
                        timeout=0.5)
    v4 = _by_zone(rep, "192.0.2.9")
    good = v4["good.test"]
    assert good.status is Status.listed and good.meanings == ["spam source", "exploited"]
    assert good.txt == ["Listed: see https://good.test/q?ip=192.0.2.9"] and good.delist_url
    assert v4["clean.test"].status is Status.not_listed
    assert v4["spamhaus.test"].status is Status.unknown and "public" in v4["spamhaus.test"].why
    assert v4["outside.test"].status is Status.unknown and "outside 127.0.0.0/8" in v4["outside.test"].why
    assert v4["slowname.test"].status is Status.unknown and "no answer" in v4["slowname.test"].why
    for z in ("slow.test", "broken.test", "wild.test", "notest.test"):
        assert v4[z].status is Status.unknown and "not trusted" in v4[z].why, z
    assert "gone.test" not in v4  # dead zones are reported, not queried
    health = {h.zone: h for h in rep.zones}
    assert "wildcard" in health["wild.test"].why and "test entry" in health["notest.test"].why
    assert "June 2024" in health["gone.test"].why and "SERVFAIL" in health["broken.test"].why
    v6 = _by_zone(rep, V6)
    assert v6["good.test"].status is Status.listed and set(v6) == {"good.test"}  # only zones listing IPv6
    assert _by_zone(rep, "spammy.example")["dbl.test"].status is Status.listed
    assert _by_zone(rep, "clean.example")["dbl.test"].status is Status.not_listed


def test_query_names():
    assert query_name("192.0.2.9", "z.test") == "9.2.0.192.z.test."
    assert query_name(V6, "z.test") == f"{V6_NIBBLES}.z.test."
    assert query_name("Example.ORG.", "dbl.test") == "example.org.dbl.test."


def test_server_speaks_tcp_too(dns_server):
    q = dns.message.make_query("9.2.0.192.good.test", "A")
    r = dns.query.tcp(q, "127.0.0.1", port=dns_server.port, timeout=2)
    assert [rr.to_text() for rrset in r.answer for rr in rrset] == ["127.0.0.2", "127.0.0.4"]


def test_answers_are_cached_for_their_ttl(dns_server):
    def asked() -> int:
        return dns_server.resolver.queries.count("9.2.0.192.good.test A")

    check_targets(["192.0.2.9"], dns_server.nameserver, ZONES[:1], timeout=0.5)
    n = asked()
    rep = check_targets(["192.0.2.9"], dns_server.nameserver, ZONES[:1], timeout=0.5)
    assert n >= 1 and asked() == n  # within the TTL the answer comes from the cache
    assert rep.results[0].status is Status.listed


def test_catalogue():
    cat = load_catalogue()
    live = [z for z in cat if z.status == "live"]
    assert len([z for z in live if "ipv4" in z.lists]) >= 50
    assert {z.zone for z in cat if "domain" in z.lists} >= {"dbl.spamhaus.org", "multi.surbl.org", "multi.uribl.com"}
    sorbs = next(z for z in cat if z.zone == "dnsbl.sorbs.net")
    assert sorbs.status == "dead" and "2024" in (sorbs.why_dead or "")
    assert all(z.delist for z in live)


def test_cli_json_and_exit_status(dns_server, tmp_path):
    zones = tmp_path / "zones.toml"
    zones.write_text('local_domains = ["spammy.example"]\nserver_ips = ["192.0.2.9"]\n'
                     'blocklist_zones = ["zen.spamhaus.org"]\n')
    r = subprocess.run([sys.executable, "-m", "spoolsweep", "blocklist", "192.0.2.9", "--nameserver",
                        dns_server.nameserver, "--json", "--timeout", "0.5"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    rep = json.loads(r.stdout)
    assert {"target", "zone", "status"} <= set(rep["results"][0])
    # the real catalogue's zones do not exist on the test server: all unknown (not trusted), none listed
    assert all(row["status"] == "unknown" for row in rep["results"])
    assert r.returncode == 3


def test_watch_posts_changes_to_a_webhook(tmp_path):
    import http.server
    import threading

    got: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server API
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    cat = tmp_path / "cat.toml"
    cat.write_text('[[zone]]\nzone = "flip.test"\nname = "flip"\nlists = ["ipv4"]\ndelist = "https://flip.test"\n'
                   '[zone.codes]\n"127.0.0.2" = "spam"\n')
    resolver = ZoneResolver({"2.0.0.127.flip.test": (["127.0.0.2"], [])}, set(), set(), set(), ttl=0)
    with LocalDNS(resolver) as server:
        p = subprocess.Popen([sys.executable, "-m", "spoolsweep", "blocklist", "192.0.2.50", "--nameserver",
                              server.nameserver, "--catalogue", str(cat), "--watch", "0.3", "--webhook",
                              f"http://127.0.0.1:{hook.server_port}/hook"], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            import time

            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and "50.2.0.192.flip.test A" not in resolver.queries:
                time.sleep(0.1)
            resolver.records["50.2.0.192.flip.test"] = (["127.0.0.2"], ["now listed"])
            while time.monotonic() < deadline and not got:
                time.sleep(0.1)
        finally:
            p.kill()
            p.communicate()
            hook.shutdown()
    assert got, "no change was posted"
    change = got[0]["blocklist_changes"][0]
    assert (change["zone"], change["before"], change["now"]) == ("flip.test", "not_listed", "listed")
