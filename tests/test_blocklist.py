"""Blocklist checks against a real DNS server on 127.0.0.1: every answer kind, over UDP and TCP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.query
import pytest

from pipeline.blocklist import Status, load_catalogue
from pipeline.blocklist.catalogue import RFC5782_TEST, UnknownZones, Zone, parse_catalogue, select_zones
from pipeline.blocklist.check import BadNameserver, check_policy, check_targets, parse_nameserver, query_name
from pipeline.policy import SitePolicy
from tests.support.dns_server import LocalDNS, ZoneResolver

ROOT = Path(__file__).resolve().parent.parent
V6 = "2001:db8::25"
V6_NIBBLES = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
TEST_V6 = "2.0.0.0.0.0.f.7.f.f.f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0"
SPAM = {"127.0.0.2": "spam source"}


def zone(name: str, **kw) -> Zone:
    kw.setdefault("codes", SPAM)
    kw.setdefault("test", {f: RFC5782_TEST[f] for f in kw.get("lists", ["ipv4"])})
    return Zone.model_validate({"zone": name, "name": name, "lists": ["ipv4"], "docs": f"https://{name}/docs", **kw})


ZONES = [
    zone("good.test", lists=["ipv4", "ipv6"], codes={"127.0.0.2": "spam source", "127.0.0.4": "exploited"},
         delist="https://good.test/delist", expires=True),
    zone("clean.test"),
    zone("spamhaus.test", ranges={"127.255.255.0/24": {"kind": "error", "means": "an error code"}},
         codes={**SPAM, "127.255.255.254": {"kind": "error", "means": "public resolver refused"}}),
    zone("outside.test"),
    zone("slowname.test"),
    zone("slow.test"),
    zone("broken.test"),
    zone("wild.test"),
    zone("notest.test"),
    zone("gone.test", status="dead", why_dead="shut down", dead_since="2024-06", dead_source="https://news.test/"),
    zone("dbl.test", lists=["domain"], test={"domain": "dbltest.com"}, codes={"127.0.1.2": "spam domain"}),
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


@pytest.mark.slow
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
    assert "2024-06" in health["gone.test"].why and "SERVFAIL" in health["broken.test"].why
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


def test_an_ipv6_target_is_never_clean_on_a_zone_without_ipv6_data():
    """The zone claims IPv6 but does not list its IPv6 test entry: the IPv6 answer cannot be trusted."""
    z = zone("v4only.test", lists=["ipv4", "ipv6"])
    with LocalDNS(ZoneResolver({"2.0.0.127.v4only.test": (["127.0.0.2"], [])}, set(), set(), set())) as server:
        rep = check_targets(["192.0.2.77", V6], server.nameserver, [z], timeout=0.5)
    got = {r.target: r for r in rep.results}
    assert got["192.0.2.77"].status is Status.not_listed
    assert got[V6].status is Status.unknown and "ipv6 test entry ::ffff:7f00:2" in got[V6].why


def test_a_public_resolver_refusal_is_named_not_called_wildcard():
    zen = next(z for z in load_catalogue() if z.zone == "zen.spamhaus.org")
    refused = {f"{n}.zen.spamhaus.org": (["127.255.255.254"], []) for n in ("2.0.0.127", "1.0.0.127", "9.2.0.192")}
    with LocalDNS(ZoneResolver(refused, set(), set(), set())) as server:
        rep = check_targets(["192.0.2.9"], server.nameserver, [zen], timeout=0.5)
    (row,) = rep.results
    assert row.status is Status.unknown and "public or open resolver" in row.why and "wildcard" not in row.why


def test_domains_are_asked_as_their_registered_domain():
    """mx1.example.org is listed where example.org is (Public Suffix List; co.uk is one suffix)."""
    z = zone("dbl2.test", lists=["domain"], codes={"127.0.1.2": "spam domain"})
    records = {"test.dbl2.test": (["127.0.1.2"], []), "example.org.dbl2.test": (["127.0.1.2"], []),
               "shop.co.uk.dbl2.test": (["127.0.1.2"], [])}
    with LocalDNS(ZoneResolver(records, set(), set(), set())) as server:
        rep = check_targets(["mx1.example.org", "a.b.shop.co.uk", "www.other.co.uk"], server.nameserver, [z],
                            timeout=0.5)
        as_given = check_targets(["mx1.example.org"], server.nameserver, [z.model_copy(
            update={"domain_form": "as_given"})], timeout=0.5)
    got = {r.target: r for r in rep.results}
    assert got["mx1.example.org"].status is Status.listed and got["mx1.example.org"].queried == "example.org"
    assert got["a.b.shop.co.uk"].status is Status.listed and got["a.b.shop.co.uk"].queried == "shop.co.uk"
    assert got["www.other.co.uk"].status is Status.not_listed
    assert as_given.results[0].status is Status.not_listed


def test_misspelt_policy_zones_are_an_error_naming_them():
    cat = load_catalogue()
    with pytest.raises(UnknownZones, match=r"zen\.spamhuas\.org \(did you mean zen\.spamhaus\.org\?\), nosuch\.test"):
        select_zones(cat, ["zen.spamhuas.org", "nosuch.test", "bl.spamcop.net"])
    with pytest.raises(UnknownZones):
        check_policy(SitePolicy(server_ips=["192.0.2.1"], blocklist_zones=["zen.spamhuas.org"]))
    assert [z.id for z in select_zones(cat, ["BL.SpamCop.net."])] == ["bl.spamcop.net"]


def test_nameserver_specs():
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("[::1]:53") == ("::1", 53)
    assert parse_nameserver("localhost:1")[1] == 1
    for bad in ("127.0.0.1:notaport", "127.0.0.1:0", "127.0.0.1:70000", "[::1]x", ":53", "no-such-host.invalid"):
        with pytest.raises(BadNameserver):
            parse_nameserver(bad)


def test_catalogue():
    cat = load_catalogue()
    live = [z for z in cat if z.status == "live"]
    assert len([z for z in live if "ipv4" in z.lists]) >= 45
    assert {z.zone for z in cat if "domain" in z.lists} >= {"dbl.spamhaus.org", "multi.surbl.org", "multi.uribl.com"}
    for name, since in (("dnsbl.sorbs.net", "2024-06-05"), ("db.wpbl.info", "2024"), ("dnsbl.inps.de", "2020-05-25")):
        z = next(z for z in cat if z.zone == name)
        assert z.status == "dead" and z.dead_since == since and z.dead_source, name
    assert all(z.delist and z.docs for z in live)
    keyed = {z.id: z.key for z in cat if z.key}
    assert keyed == {"zen.dq.spamhaus.net": "spamhaus_dqs", "dbl.dq.spamhaus.net": "spamhaus_dqs",
                     "authbl.dq.spamhaus.net": "spamhaus_dqs", "combined.mail.abusix.zone": "abusix"}


def test_catalogue_refuses_what_it_cannot_read():
    bare = '[[zone]]\nzone = "x.test"\nname = "x"\nlists = ["ipv4"]\ndocs = "https://x.test"\n'
    base = bare + 'test = { ipv4 = "127.0.0.2" }\n'
    parse_catalogue(base + '[zone.codes]\n"127.0.0.2" = "spam"\n')
    for bad, msg in ((base, "documented codes"), (bare + '[zone.codes]\n"127.0.0.2" = "spam"\n', "test entry for ipv4"),
                     (base + 'bitmask = true\n[zone.codes]\n"3" = "two bits"\n', "single bit"),
                     (base + '[zone.codes]\nany = "everything"\n', "not an IPv4"),
                     (base.replace('docs = "https://x.test"\n', 'status = "dead"\n'), "dead_since")):
        with pytest.raises(Exception, match=msg):
            parse_catalogue(bad)


def _cli(*args, timeout=120, env=None):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "spoolsweep", "blocklist", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env=env)
    return r, time.monotonic() - t0


@pytest.mark.slow
def test_cli_json_and_exit_status(dns_server):
    r, _ = _cli("192.0.2.9", "--nameserver", dns_server.nameserver, "--json", "--timeout", "0.5")
    rep = json.loads(r.stdout)
    assert {"target", "zone", "status"} <= set(rep["results"][0])
    # the real catalogue's zones do not exist on the test server: all unknown (not trusted), none listed
    assert all(row["status"] == "unknown" for row in rep["results"])
    assert r.returncode == 3


@pytest.mark.slow
def test_cli_bad_input_is_one_line(tmp_path):
    r, _ = _cli("192.0.2.9", "--nameserver", "127.0.0.1:notaport")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "notaport" in r.stderr and "Traceback" not in r.stderr
    pol = tmp_path / "site.toml"
    pol.write_text('server_ips = ["192.0.2.9"]\nblocklist_zones = ["zen.spamhuas.org"]\n')
    r, _ = _cli("--policy", str(pol))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "zen.spamhuas.org" in r.stderr
    r, _ = _cli("192.0.2.9", "--check-catalogue")
    assert r.returncode == 2 and "--nameserver" in r.stderr


@pytest.mark.slow
def test_cli_unreachable_resolver_is_one_line_and_exit_3_within_seconds():
    for spec in ("localhost:1", "127.0.0.1:9"):  # nothing listens there: refused, or silence
        r, took = _cli("192.0.2.9", "--nameserver", spec, "--timeout", "1")
        assert r.returncode == 3, (spec, r.stderr)
        assert r.stderr.count("\n") == 1 and "did not answer" in r.stderr and "Traceback" not in r.stderr
        assert took < 20, took  # the process start dominates; the resolver verdict takes at most --timeout


@pytest.mark.slow
def test_watch_posts_changes_to_a_webhook(tmp_path):
    import http.server
    import threading

    got: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # the http.server API
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    cat = tmp_path / "cat.toml"
    cat.write_text('[[zone]]\nzone = "flip.test"\nname = "flip"\nlists = ["ipv4"]\ndelist = "https://flip.test"\n'
                   'docs = "https://flip.test/docs"\ntest = { ipv4 = "127.0.0.2" }\n'
                   '[zone.codes]\n"127.0.0.2" = "spam"\n')
    resolver = ZoneResolver({"2.0.0.127.flip.test": (["127.0.0.2"], [])}, set(), set(), set(), ttl=0)
    with LocalDNS(resolver) as server:
        p = subprocess.Popen([sys.executable, "-m", "spoolsweep", "blocklist", "192.0.2.50", "--nameserver",
                              server.nameserver, "--catalogue", str(cat), "--watch", "0.3", "--webhook",
                              f"http://127.0.0.1:{hook.server_port}/hook"], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
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
