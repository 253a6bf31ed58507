"""The console's edges: the token cookie is per port, POST bodies are bounded, `by` is one plain line."""

from __future__ import annotations

import hashlib
import json

import pytest
from starlette.testclient import TestClient

from console.app import MAX_POST, create_app
from pipeline import queues
from pipeline.models import Envelope, Manifest, ManifestMessage, SnapshotInfo, Totals, Verdict
from pipeline.store import LocalStore

TOKEN = "t0ken-for-hardening-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INC = "inc-hard"


@pytest.fixture
def root(tmp_path):
    msgs = [ManifestMessage(id="id0", path="messages/0.eml", sha256=hashlib.sha256(b"0").hexdigest(), size=1,
                            format="eml", envelope=Envelope(mail_from="a@example.net", rcpt_to=["b@example.org"]),
                            subject="s", verdict=Verdict.review, confidence=0.5, reasons=[])]
    m = Manifest(incident=INC, snapshot=SnapshotInfo(source="x", format="eml", host="mx1"), policy_sha256="0" * 64,
                 totals=Totals(messages=1, valid=0, spam=0, review=1, bytes=1, campaigns=0), campaigns=[],
                 accounts=[], sources=[], messages=msgs)
    LocalStore(tmp_path).put(queues.manifest_key(INC), m.model_dump_json().encode())
    return tmp_path


def _client(root, base_url: str = "http://127.0.0.1:8765") -> TestClient:
    return TestClient(create_app(root, TOKEN, warm=False), base_url=base_url)


def test_two_consoles_on_two_ports_keep_their_own_cookie(root):
    a, b = _client(root, "http://127.0.0.1:8765"), _client(root, "http://127.0.0.1:8766")
    r = a.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303
    [set_cookie] = r.headers.get_list("set-cookie")
    assert set_cookie.startswith("spoolsweep_token_8765=") and "HttpOnly" in set_cookie
    # a browser sends both consoles' cookies to either port: each console reads only its own
    for c in (a, b):
        c.cookies.set("spoolsweep_token_8765", TOKEN)
        c.cookies.set("spoolsweep_token_8766", "the-other-consoles-token")
    assert a.get("/api/incidents").status_code == 200
    assert b.get("/api/incidents").status_code == 401


def _post(c: TestClient, path: str, content: bytes, **headers: str):
    csrf = c.get("/api/session", headers=AUTH).json()["csrf"]
    return c.post(path, content=content, headers={**AUTH, "X-CSRF-Token": csrf, "Content-Type": "application/json",
                                                   **headers})


def test_post_bodies_are_bounded(root):
    c = _client(root)
    big = json.dumps({"kind": "message", "target": "id0", "verdict": "spam", "note": "x" * (MAX_POST + 1)}).encode()
    r = _post(c, f"/api/incidents/{INC}/verdicts", big)
    assert r.status_code == 413 and "over" in r.json()["error"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(MAX_POST // 1000 + 2):
            yield b" " * 1000

    r = _post(c, f"/api/incidents/{INC}/verdicts", chunks())  # type: ignore[arg-type]
    assert r.status_code == 413
    ok = json.dumps({"kind": "message", "target": "id0", "verdict": "spam", "by": "alice"}).encode()
    assert _post(c, f"/api/incidents/{INC}/verdicts", ok).status_code == 200


@pytest.mark.parametrize("by", ["alice\nbob", "alice\u202eecila", "ad\u2066min", "x\x00"])
def test_by_must_be_one_plain_line(root, by):
    c = _client(root)
    r = _post(c, f"/api/incidents/{INC}/verdicts",
              json.dumps({"kind": "message", "target": "id0", "verdict": "spam", "by": by}).encode())
    assert r.status_code == 422, r.text
    r = _post(c, f"/api/incidents/{INC}/approve", json.dumps({"digest": "0" * 64, "by": by}).encode())
    assert r.status_code == 422, r.text


def test_the_consoles_shutdown_removes_its_downloaded_snapshots(root):
    """Snapshots downloaded for drill-down are customers' mail: the app's shutdown removes them."""
    app = create_app(root, TOKEN, warm=False)
    with TestClient(app):
        scratch = app.state.console.inc._scratch()
        (scratch / "snapshot").write_bytes(b"From: a@example.org\n\nmail\n")
    assert not scratch.exists()
