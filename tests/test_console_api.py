"""The console's JSON API: every endpoint with and without the token, CSRF and malformed bodies."""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime, timedelta

import pytest
from starlette.testclient import TestClient

from console.app import create_app
from pipeline.blocklist.models import BlocklistReport, Status, ZoneResult
from pipeline.instructions import Approval, Receipt, ReceiptItem
from pipeline.manifest_io import read_manifest, write_manifest
from pipeline.models import Manifest
from pipeline.queues import manifest_key
from pipeline.store import LocalStore
from tests.support.console import INCIDENT, XSS_SUBJECTS, build_store

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = f"/api/incidents/{INCIDENT}"


@pytest.fixture(scope="module")
def store_root(corpus, policy, tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("console") / "store", corpus, policy)


@pytest.fixture()
def client(store_root):
    for d in ("approvals", "state"):
        for p in sorted((store_root / d).rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
    c = TestClient(create_app(store_root, TOKEN))
    c.app_root = store_root
    return c


@pytest.fixture()
def csrf(client):
    return client.get("/api/session", headers=AUTH).json()["csrf"]


def store_root_of(client):
    return client.app_root


def manifest(root) -> Manifest:
    return read_manifest(LocalStore(root), INCIDENT)


GETS = ["/api/session", "/api/incidents", BASE, f"{BASE}/messages", f"{BASE}/timeline", f"{BASE}/approval-summary",
        f"{BASE}/receipts", f"{BASE}/blocklists"]
POSTS = [f"{BASE}/verdicts", f"{BASE}/approve"]


@pytest.mark.parametrize("path", GETS + [f"{BASE}/messages/x"])
def test_get_needs_the_token(client, path):
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    client.cookies.set("spoolsweep_token", "wrong")
    assert client.get(path).status_code == 401


@pytest.mark.parametrize("path", GETS)
def test_get_with_token_and_headers(client, path):
    r = client.get(path, headers=AUTH)
    assert r.status_code == 200, r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("path", POSTS)
def test_post_needs_token_and_csrf(client, csrf, path):
    body = {"kind": "campaign", "target": "1", "verdict": "spam"} if path.endswith("verdicts") else {"digest": "0" * 64}
    assert client.post(path, json=body).status_code == 401
    wrong = {"Authorization": "Bearer nope", "X-CSRF-Token": csrf}
    assert client.post(path, json=body, headers=wrong).status_code == 401
    assert client.post(path, json=body, headers=AUTH).status_code == 403
    assert client.post(path, json=body, headers={**AUTH, "X-CSRF-Token": "x" * 64}).status_code == 403
    for bad in (b"{", b"[]", json.dumps({**body, "extra": 1}).encode(), b'{"kind": "campaign"}',
                json.dumps({"kind": "campaign", "target": "1", "verdict": "maybe"}).encode(),
                json.dumps({"digest": "not-hex"}).encode()):
        r = client.post(path, content=bad, headers={**AUTH, "X-CSRF-Token": csrf})
        assert r.status_code == 422, (bad, r.text)
    assert not (store_root_of(client) / "approvals").exists() and not (store_root_of(client) / "state").exists()


def test_cookie_from_token_url(store_root):
    c = TestClient(create_app(store_root, TOKEN))
    assert c.get("/").status_code == 401
    assert c.get("/?token=wrong", follow_redirects=False).status_code == 401
    r = c.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    sc = r.headers["set-cookie"].lower()
    assert "httponly" in sc and "samesite=strict" in sc
    assert c.get("/api/incidents").status_code == 200
    page = c.get("/")
    assert page.status_code == 200 and "<script src=\"/static/app.js\"" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_incidents_and_detail(client, store_root):
    m = manifest(store_root)
    inc = client.get("/api/incidents", headers=AUTH).json()["incidents"]
    assert [i["id"] for i in inc] == [INCIDENT]
    assert inc[0]["size"] == m.totals.messages and inc[0]["status"] == "triaged"
    assert inc[0]["blocklist"] == "not checked"
    d = client.get(BASE, headers=AUTH).json()
    assert d["totals"]["spam"] == m.totals.spam and d["totals"]["valid"] == m.totals.valid
    sizes = [c["size"] for c in d["campaigns"]]
    assert sizes == sorted(sizes, reverse=True) and len(sizes) == min(60, m.totals.campaigns)
    assert d["campaigns_total"] == m.totals.campaigns
    one = client.get(f"{BASE}?campaigns=1", headers=AUTH).json()
    assert [c["size"] for c in one["campaigns"]] == sizes[:1] and one["campaigns_total"] == m.totals.campaigns
    for bad in ("campaigns=0", "campaigns=x", "campaigns=100001"):
        assert client.get(f"{BASE}?{bad}", headers=AUTH).status_code == 400, bad
    assert sum(g["messages"] for g in d["valid_groups"]) >= 1
    assert client.get("/api/incidents/nope", headers=AUTH).status_code == 404
    assert client.get("/api/incidents/..%2Fetc", headers=AUTH).status_code == 404


def test_messages_pagination_and_filters(client, store_root):
    m = manifest(store_root)
    r = client.get(f"{BASE}/messages?per_page=7&page=2", headers=AUTH).json()
    assert r["total"] == m.totals.messages and [x["id"] for x in r["messages"]] == [x.id for x in m.messages[7:14]]
    spam = client.get(f"{BASE}/messages?verdict=spam&per_page=500", headers=AUTH).json()
    assert spam["total"] == m.totals.spam and all(x["verdict"] == "spam" for x in spam["messages"])
    cid = m.campaigns[0].id
    camp = client.get(f"{BASE}/messages?campaign={cid}&per_page=500", headers=AUTH).json()
    assert camp["total"] == m.campaigns[0].size
    hit = client.get(f"{BASE}/messages", params={"q": "window.__xss"}, headers=AUTH).json()
    assert hit["total"] == 2
    for bad in ("verdict=maybe", "page=0", "per_page=100000", "page=x", "campaign=x"):
        assert client.get(f"{BASE}/messages?{bad}", headers=AUTH).status_code == 400, bad


def test_message_detail_from_snapshot(client, store_root):
    m = manifest(store_root)
    x = next(x for x in m.messages if x.subject == XSS_SUBJECTS[0])
    d = client.get(f"{BASE}/messages/{x.id}", headers=AUTH).json()
    assert d["source"] == "snapshot" and d["subject"] == XSS_SUBJECTS[0]
    assert any(k.lower() == "subject" for k, _ in d["headers"]) and isinstance(d["body"], str) and d["body"]
    assert d["reasons"] and d["envelope"]["rcpt_to"] == x.envelope.rcpt_to
    assert client.get(f"{BASE}/messages/nope", headers=AUTH).status_code == 404


def test_timeline(client, store_root):
    t = client.get(f"{BASE}/timeline", headers=AUTH).json()
    assert sum(sum(s["counts"]) for s in t["series"]) == manifest(store_root).totals.messages
    assert all(len(s["counts"]) == t["buckets"] for s in t["series"])


def test_verdicts_recorded_and_summary(client, csrf, store_root):
    m = manifest(store_root)
    h = {**AUTH, "X-CSRF-Token": csrf}
    before = client.get(f"{BASE}/approval-summary", headers=AUTH).json()
    assert before["text"].startswith(f"replay {m.totals.valid:,} messages") and before["purge"] == m.totals.spam
    c = max((c for c in m.campaigns if c.verdict.value == "spam"), key=lambda c: c.size)
    r = client.post(f"{BASE}/verdicts", json={"kind": "campaign", "target": str(c.id), "verdict": "review",
                                             "by": "alice"}, headers=h)
    assert r.status_code == 200
    after = r.json()["summary"]
    assert after["hold"] == before["hold"] + c.size and after["digest"] != before["digest"]
    valid = next(x for x in m.messages if x.verdict.value == "valid")
    assert client.post(f"{BASE}/verdicts", json={"kind": "message", "target": valid.id, "verdict": "review"},
                       headers=h).status_code == 200
    dec = json.loads((store_root / f"state/{INCIDENT}/decisions.json").read_text())
    assert dec["campaigns"][str(c.id)]["by"] == "alice" and dec["messages"][valid.id]["verdict"] == "review"
    assert [e["target"] for e in dec["log"]] == [str(c.id), valid.id]
    assert client.post(f"{BASE}/verdicts", json={"kind": "campaign", "target": "99999", "verdict": "spam"},
                       headers=h).status_code == 404
    assert client.get("/api/incidents", headers=AUTH).json()["incidents"][0]["status"] == "awaiting approval"


def test_approve_once_with_digest(client, csrf, store_root):
    h = {**AUTH, "X-CSRF-Token": csrf}
    m = manifest(store_root)
    s = client.get(f"{BASE}/approval-summary", headers=AUTH).json()
    assert client.post(f"{BASE}/approve", json={"digest": "0" * 64}, headers=h).status_code == 409
    assert not list(store_root.glob("approvals/*/*.json"))
    r = client.post(f"{BASE}/approve", json={"digest": s["digest"], "by": "alice"}, headers=h)
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    a = Approval.model_validate_json((store_root / key).read_bytes())
    assert a.approved_by == "alice" and len(a.replay) == m.totals.valid and len(a.purge) == m.totals.spam
    assert a.host == "mail.example.net"
    written = (store_root / key).read_bytes()
    again = client.post(f"{BASE}/approve", json={"digest": s["digest"], "by": "alice"}, headers=h)
    assert again.status_code == 200 and again.json()["new"] is False
    assert (store_root / key).read_bytes() == written
    assert client.get(f"{BASE}/approval-summary", headers=AUTH).json()["approvals"] == [key]
    assert client.get("/api/incidents", headers=AUTH).json()["incidents"][0]["status"] == "replaying"


def test_receipts_and_blocklists(client, store_root):
    m = manifest(store_root)
    now = datetime.now(UTC)
    items = [ReceiptItem(id=x.id, sha256=x.sha256, outcome="purged") for x in m.messages[:3]]
    items.append(ReceiptItem(id=m.messages[3].id, sha256=m.messages[3].sha256, outcome="missing"))
    r = Receipt(instruction_id="i1", incident=INCIDENT, host="mail.example.net", started_at=now,
                finished_at=now + timedelta(seconds=1), items=items)
    p = store_root / f"receipts/{INCIDENT}/mail.example.net/i1.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(r.model_dump_json())
    bl = store_root / f"blocklists/{INCIDENT}/report.json"
    bl.parent.mkdir(parents=True, exist_ok=True)
    # the shape check_blocklists writes: a BlocklistReport (pipeline.blocklist.models)
    listed = ZoneResult(target="192.0.2.25", zone="zen.spamhaus.org", status=Status.listed, codes=["127.0.0.2"],
                        meanings=["SBL"], delist_url="https://check.spamhaus.org/")
    unknown = ZoneResult(target="192.0.2.25", zone="bl.spamcop.net", status=Status.unknown, why="no answer")
    report = BlocklistReport(checked_at=now, targets=["192.0.2.25"], results=[listed, unknown])
    bl.write_text(report.model_dump_json())
    try:
        got = client.get(f"{BASE}/receipts", headers=AUTH).json()
        assert got["totals"]["purged"] == 3 and got["totals"]["missing"] == 1 and got["receipts"][0]["finished"]
        assert client.get(f"{BASE}/blocklists", headers=AUTH).json()["report"]["results"][0]["status"] == "listed"
        assert client.get("/api/incidents", headers=AUTH).json()["incidents"][0]["blocklist"] == "listed on 1 zone(s)"
        bl.write_text(report.model_copy(update={"results": [unknown]}).model_dump_json())
        assert client.get("/api/incidents", headers=AUTH).json()["incidents"][0]["blocklist"] == \
            "not listed, 1 check(s) unknown"
    finally:
        p.unlink()
        bl.unlink()


@pytest.mark.slow
def test_large_incident_pages_are_summarised_on_the_server(client, store_root, tmp_path):
    """100,000 messages: every page's API answer is a page or a summary, never the whole incident (the time each
    takes is measured by bench/console_bench.py, not here)."""
    m = manifest(store_root)
    msgs = [x.model_copy(update={"id": f"{i:024x}"}) for i in range(100_000) for x in [m.messages[i % len(m.messages)]]]
    big = m.model_copy(update={"incident": "big", "messages": msgs,
                               "totals": m.totals.model_copy(update={"messages": len(msgs)})})
    write_manifest(big, tmp_path / "manifests/big", per_part=30_000)  # 4 parts
    c = TestClient(create_app(tmp_path, TOKEN))
    spam = sum(1 for x in msgs if x.verdict.value == "spam")
    for path in ("/api/incidents", "/api/incidents/big", "/api/incidents/big/messages?verdict=spam&page=40",
                 "/api/incidents/big/messages?q=window", "/api/incidents/big/timeline",
                 "/api/incidents/big/approval-summary"):
        r = c.get(path, headers=AUTH)
        assert r.status_code == 200, path
        assert len(r.content) < 300_000, f"{path} sent {len(r.content):,} bytes"
    page = c.get("/api/incidents/big/messages?verdict=spam&page=2&per_page=50", headers=AUTH).json()
    assert len(page["messages"]) == 50 and page["total"] == spam
    assert c.get("/api/incidents/big/approval-summary", headers=AUTH).json()["purge"] == spam


@pytest.mark.slow
def test_cli_prints_the_address_and_serves(store_root):
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "spoolsweep", "console", "--data", str(store_root), "--port", str(port),
                          "--token", "cli-token"], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().strip()
        assert line == f"http://127.0.0.1:{port}/?token=cli-token"
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/incidents",
                                     headers={"Authorization": "Bearer cli-token"})
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    assert json.load(r)["incidents"][0]["id"] == INCIDENT
                break
            except OSError:
                assert time.monotonic() < deadline and p.poll() is None
                time.sleep(0.2)
    finally:
        p.terminate()
        p.wait(10)


def test_plain_triage_folder_is_one_incident(store_root, tmp_path):
    shutil.copytree((store_root / manifest_key(INCIDENT)).parent, tmp_path, dirs_exist_ok=True)  # summary + parts
    c = TestClient(create_app(tmp_path, TOKEN))
    assert [i["id"] for i in c.get("/api/incidents", headers=AUTH).json()["incidents"]] == [INCIDENT]
    assert c.get("/api/incidents/other", headers=AUTH).status_code == 404
    mid = c.get(f"{BASE}/messages?per_page=1", headers=AUTH).json()["messages"][0]["id"]
    assert c.get(f"{BASE}/messages/{mid}", headers=AUTH).json()["source"] == "manifest"
    csrf = c.get("/api/session", headers=AUTH).json()["csrf"]
    s = c.get(f"{BASE}/approval-summary", headers=AUTH).json()
    r = c.post(f"{BASE}/approve", json={"digest": s["digest"], "by": "bob"}, headers={**AUTH, "X-CSRF-Token": csrf})
    assert r.status_code == 201
    a = Approval.model_validate_json((tmp_path / r.json()["key"]).read_bytes())
    assert a.approved_by == "bob" and len(a.replay) == s["replay"] and len(a.purge) == s["purge"]


def test_stale_summary_is_refused(client, csrf, store_root):
    h = {**AUTH, "X-CSRF-Token": csrf}
    old = client.get(f"{BASE}/approval-summary", headers=AUTH).json()
    cid = str(manifest(store_root).campaigns[0].id)
    assert client.post(f"{BASE}/verdicts", json={"kind": "campaign", "target": cid, "verdict": "review"},
                       headers=h).status_code == 200
    r = client.post(f"{BASE}/approve", json={"digest": old["digest"]}, headers=h)
    assert r.status_code == 409 and "changed" in r.json()["error"]
    assert not list(store_root.glob("approvals/*/*.json"))


def test_raw_scan_goes_past_an_oversize_member_of_the_same_name(tmp_path):
    """An oversize member (held as data=None) named like the message must not end the archive scan."""
    import hashlib
    import io
    import tarfile
    from types import SimpleNamespace

    from console.data import Incidents
    from pipeline.policy import Limits

    wanted = b"Subject: the real one\n\nhello\n"
    snap = tmp_path / "incoming" / INCIDENT / "mail.example.net" / "snapshot.tar"
    snap.parent.mkdir(parents=True)
    with tarfile.open(snap, "w") as tf:
        for name, size, data in (("a/messages/0001.eml", Limits().max_member_bytes + 1, None),
                                 ("b/messages/0001.eml", len(wanted), wanted)):
            info = tarfile.TarInfo(name)
            info.size = size
            tf.addfile(info, io.BytesIO(data) if data is not None else _Zeros(size))
    m = SimpleNamespace(path="messages/0001.eml", sha256=hashlib.sha256(wanted).hexdigest())
    assert Incidents(tmp_path).raw(INCIDENT, m) == wanted


class _Zeros:
    """A file of `size` zero bytes that is never held in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)
