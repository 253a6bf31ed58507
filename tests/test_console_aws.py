"""The console in AWS: the Lambda handler (Mangum) fed function-URL events over an S3 store on moto's server,
and the SigV4-signing proxy of `spoolsweep console --aws` against a local stand-in for the function URL."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl

import boto3
import httpx
import pytest
import uvicorn
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from adapters.aws import S3Store
from console.aws_proxy import Signer, canonical_target, create_proxy, region_of
from pipeline.instructions import Approval
from pipeline.manifest_io import read_manifest
from pipeline.queues import manifest_key
from pipeline.store import LocalStore
from spoolsweep.lab import free_port
from tests.support.console import HOST, INCIDENT, XSS_SUBJECTS, build_store

TOKEN = "aws-console-token-0123456789abcdef"
ARN = "arn:aws:iam::123456789012:user/alice"
BASE = f"/api/incidents/{INCIDENT}"


@pytest.fixture(scope="module")
def local_store(corpus, policy, tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("console-aws") / "store", corpus, policy)


@pytest.fixture
def bucket(moto_url, local_store, monkeypatch):
    """A fresh bucket holding the incident's manifest and snapshot; the handler configured for it."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    name = "console-" + uuid.uuid4().hex[:8]
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    s3.create_bucket(Bucket=name)
    for p in sorted(local_store.rglob("*")):
        if p.is_file():
            s3.put_object(Bucket=name, Key=p.relative_to(local_store).as_posix(), Body=p.read_bytes())
    for k, v in {"SPOOLSWEEP_STORE": f"s3://{name}", "SPOOLSWEEP_ENDPOINT_URL": moto_url,
                 "SPOOLSWEEP_CONSOLE_TOKEN": TOKEN}.items():
        monkeypatch.setenv(k, v)
    from functions import console

    console.handler.reset()
    yield {"s3": s3, "name": name, "store": S3Store(name, s3),
           "manifest": read_manifest(LocalStore(local_store), INCIDENT)}
    console.handler.reset()


def url_event(method: str, path: str, query: str = "", headers: dict | None = None, body: bytes = b"",
              cookies: list[str] | None = None) -> dict:
    """A Lambda function-URL event (payload format 2.0) as AWS sends it after IAM auth."""
    domain = "abcdefghij0123456789abcdefghij01.lambda-url.us-east-1.on.aws"
    ev = {"version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
          "headers": {"host": domain, "x-amzn-trace-id": "Root=1-0-0", "x-forwarded-proto": "https",
                      "authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261128/us-east-1/lambda/aws4_request",
                      **(headers or {})},
          "requestContext": {"accountId": "123456789012", "apiId": domain.split(".")[0], "domainName": domain,
                             "domainPrefix": domain.split(".")[0], "requestId": str(uuid.uuid4()),
                             "routeKey": "$default", "stage": "$default", "time": "28/Nov/2026:23:00:00 +0000",
                             "timeEpoch": 1795906800000,
                             "authorizer": {"iam": {"accessKey": "AKIDEXAMPLE", "accountId": "123456789012",
                                                    "callerId": "AIDAEXAMPLE", "userArn": ARN,
                                                    "userId": "AIDAEXAMPLE"}},
                             "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                      "sourceIp": "127.0.0.1", "userAgent": "pytest"}},
          "isBase64Encoded": bool(body), "body": base64.b64encode(body).decode() if body else None}
    if query:
        ev["queryStringParameters"] = dict(parse_qsl(query))
    if cookies:
        ev["cookies"] = cookies
    return ev


class Context:
    function_name = "spoolsweep-console"
    aws_request_id = "req-1"


def call(method: str, path: str, token: str | None = TOKEN, csrf: str | None = None, body: dict | None = None,
         query: str = "", cookies: list[str] | None = None) -> tuple[int, dict, dict]:
    from functions.console import handler

    h = {"authorization": f"Bearer {token}"} if token else {}
    if csrf:
        h["x-csrf-token"] = csrf
    raw = json.dumps(body).encode() if body is not None else b""
    if raw:
        h["content-type"] = "application/json"
    r = handler(url_event(method, path, query, h, raw, cookies), Context())
    text = base64.b64decode(r["body"]).decode() if r.get("isBase64Encoded") else r["body"]
    try:
        data = json.loads(text) if text else {}
    except json.JSONDecodeError:
        data = {"text": text}
    return r["statusCode"], data, r


def test_s3_store_version_changes_with_the_object(bucket):
    store = bucket["store"]
    assert store.version("state/none.json") is None
    store.put("state/v.json", b"1")
    v1 = store.version("state/v.json")
    store.put("state/v.json", b"22")
    assert v1 and store.version("state/v.json") not in (None, v1)
    assert store.size("state/v.json") == 2


def test_token_is_required_behind_the_function_url(bucket):
    m = bucket["manifest"]
    assert call("GET", "/api/incidents", token=None)[0] == 401
    assert call("GET", "/api/incidents", token="wrong")[0] == 401
    status, data, r = call("GET", "/api/incidents")
    assert status == 200, data
    assert [i["id"] for i in data["incidents"]] == [INCIDENT]
    assert data["incidents"][0]["size"] == m.totals.messages and data["incidents"][0]["status"] == "triaged"
    assert "script-src 'self'" in r["headers"]["content-security-policy"]
    status, page, r = call("GET", "/", token=None, query=f"token={TOKEN}")
    # the cookie's name carries the port the browser used (443 behind the function URL): see console.web.cookie_name
    assert status == 303 and any(c.startswith("spoolsweep_token_443=") and "HttpOnly" in c for c in r["cookies"])
    assert call("GET", "/api/incidents", token=None, cookies=[f"spoolsweep_token_443={TOKEN}"])[0] == 200


def test_verdict_and_approval_land_in_the_bucket(bucket):
    s3, name, m = bucket["s3"], bucket["name"], bucket["manifest"]
    csrf = call("GET", "/api/session")[1]["csrf"]
    camp = max((c for c in m.campaigns if c.verdict.value == "spam"), key=lambda c: c.size)
    change = {"kind": "campaign", "target": str(camp.id), "verdict": "review", "by": "alice"}
    assert call("POST", f"{BASE}/verdicts", body=change)[0] == 403  # no CSRF header
    status, data, _ = call("POST", f"{BASE}/verdicts", csrf=csrf, body=change)
    assert status == 200, data
    dec = json.loads(s3.get_object(Bucket=name, Key=f"state/{INCIDENT}/decisions.json")["Body"].read())
    assert dec["campaigns"][str(camp.id)]["by"] == f"alice ({ARN})"
    summary = call("GET", f"{BASE}/approval-summary")[1]
    assert summary["hold"] == m.totals.review + camp.size and summary["purge"] == m.totals.spam - camp.size
    assert "Contents" not in s3.list_objects_v2(Bucket=name, Prefix="approvals/")
    status, data, _ = call("POST", f"{BASE}/approve", csrf=csrf, body={"digest": summary["digest"], "by": "alice"})
    assert status == 201, data
    key = data["key"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=name, Prefix="approvals/")["Contents"]] == [key]
    a = Approval.model_validate_json(s3.get_object(Bucket=name, Key=key)["Body"].read())
    assert a.approved_by == f"alice ({ARN})" and a.host == HOST
    assert len(a.replay) == summary["replay"] and len(a.purge) == summary["purge"] and len(a.hold) == summary["hold"]
    assert call("GET", "/api/incidents")[1]["incidents"][0]["status"] == "replaying"


def test_message_drill_down_reads_the_snapshot_from_s3(bucket, monkeypatch):
    m = bucket["manifest"]
    x = next(x for x in m.messages if x.subject == XSS_SUBJECTS[0])
    status, d, _ = call("GET", f"{BASE}/messages/{x.id}")
    assert status == 200, d
    assert d["source"] == "snapshot" and d["subject"] == XSS_SUBJECTS[0]
    assert any(k.lower() == "subject" for k, _ in d["headers"]) and d["body"]
    other = next(y for y in m.messages if y.id != x.id and y.verdict.value == "valid")
    assert call("GET", f"{BASE}/messages/{other.id}")[1]["source"] == "snapshot"  # the cached download
    # a snapshot over the limit is not downloaded: the page shows the manifest's data instead
    monkeypatch.setenv("SPOOLSWEEP_RAW_LIMIT_BYTES", "1000")
    from functions import console

    console.handler.reset()
    d = call("GET", f"{BASE}/messages/{x.id}")[1]
    assert d["source"] == "manifest" and d["subject"] == XSS_SUBJECTS[0] and d["body"] is None


def test_a_changed_manifest_is_read_again(bucket):
    s3, name, m = bucket["s3"], bucket["name"], bucket["manifest"]
    assert call("GET", BASE)[1]["totals"]["messages"] == m.totals.messages
    fewer = m.model_copy(update={"messages": m.messages[:10]})
    s3.put_object(Bucket=name, Key=manifest_key(INCIDENT), Body=fewer.model_dump_json().encode())
    t = call("GET", BASE)[1]["totals"]
    assert t["spam"] + t["valid"] + t["review"] == 10


def test_settings_refuse_a_short_token(bucket, monkeypatch):
    from functions import console
    from functions.errors import SettingsError

    monkeypatch.setenv("SPOOLSWEEP_CONSOLE_TOKEN", "short")
    console.handler.reset()
    with pytest.raises(SettingsError, match="CONSOLE_TOKEN"):
        console.handler.built()


# --- the signing proxy --------------------------------------------------------------------------

class Served:
    """An ASGI app on 127.0.0.1 in a thread (uvicorn), stopped at teardown."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive()
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def stand_in():
    """Plays the function URL: records what arrives, answers with two cookies and a JSON body."""
    seen: list[dict] = []

    async def record(request: Request):
        seen.append({"method": request.method, "path": request.url.path, "query": request.url.query,
                     "headers": dict(request.headers), "body": await request.body()})
        r = JSONResponse({"ok": True, "n": len(seen)}, status_code=201)
        r.set_cookie("a", "1")
        r.set_cookie("b", "2")
        return r

    app = Starlette(routes=[Route("/{p:path}", record, methods=["GET", "POST"])])
    s = Served(app)
    yield s.url, seen
    s.stop()


CREDS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token-1")


@pytest.fixture
def proxy(stand_in):
    url, seen = stand_in
    s = Served(create_proxy(url, Signer(CREDS, "eu-west-1")))
    yield s.url, url, seen
    s.stop()


def _verify(rec: dict, target: str, body: bytes) -> bool:
    """Recompute the SigV4 signature of a recorded request (botocore) and compare it with the one it carried."""
    auth = rec["headers"]["authorization"]
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    sig = auth.split("Signature=")[1]
    url = target + rec["path"] + (f"?{rec['query']}" if rec["query"] else "")
    req = AWSRequest(method=rec["method"], url=url, data=body, headers={h: rec["headers"][h] for h in signed})
    req.context["timestamp"] = rec["headers"]["x-amz-date"]
    signer = SigV4Auth(CREDS, "lambda", "eu-west-1")
    return signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req) == sig


def test_proxy_signs_and_forwards_unchanged(proxy):
    local, target, seen = proxy
    body = json.dumps({"kind": "campaign", "target": "3", "verdict": "review", "note": "ünïcode <b>"}).encode()
    r = httpx.post(f"{local}/api/incidents/inc-1/verdicts?b=2&a=x%20y", content=body,
                   headers={"Authorization": "Bearer tok-123", "X-CSRF-Token": "c" * 64, "Cookie": "spoolsweep_token=t",
                            "Content-Type": "application/json", "X-Not-Forwarded": "1"})
    assert r.status_code == 201 and r.json() == {"ok": True, "n": 1}
    assert sorted(r.headers.get_list("set-cookie")) == ["a=1; Path=/; SameSite=lax", "b=2; Path=/; SameSite=lax"]
    [rec] = seen
    h = rec["headers"]
    assert rec["method"] == "POST" and rec["path"] == "/api/incidents/inc-1/verdicts" and rec["body"] == body
    assert dict(parse_qsl(rec["query"])) == {"a": "x y", "b": "2"}
    assert h["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/lambda/aws4_request" in h["authorization"]
    signed = h["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "x-amz-date", "x-csrf-token", "content-type", "cookie", "x-spoolsweep-token"} <= set(signed)
    assert len(h["x-amz-date"]) == 16 and h["x-amz-date"].endswith("Z")
    assert h["x-amz-security-token"] == "session-token-1"
    assert h["x-spoolsweep-token"] == "tok-123" and h["cookie"] == "spoolsweep_token=t"
    assert h["x-csrf-token"] == "c" * 64 and "x-not-forwarded" not in h
    assert _verify(rec, target, body)
    assert not _verify(rec, target, body + b" ")  # the check can tell a changed body


def test_proxy_get_redirect_and_host_check(proxy):
    local, target, seen = proxy
    r = httpx.get(f"{local}/?token=abc")
    assert r.status_code == 201 and seen[0]["query"] == "token=abc" and seen[0]["method"] == "GET"
    assert _verify(seen[0], target, b"")
    # a page that rebinds its own name to 127.0.0.1 is refused before anything is signed
    assert httpx.get(f"{local}/api/incidents", headers={"Host": "evil.example"}).status_code == 400
    assert len(seen) == 1


def test_region_and_canonical_url():
    assert region_of("https://abc123.lambda-url.eu-central-1.on.aws/") == "eu-central-1"
    assert region_of("http://127.0.0.1:9/", "us-west-2") == "us-west-2"
    assert canonical_target("https://h/", "/a b/%7Ex", "z=1&a=%3c+") == "https://h/a%20b/~x?a=%3C%20&z=1"


# --- the stack --------------------------------------------------------------------------------

@pytest.mark.slow
def test_template_console_is_iam_only_and_grants_the_permissions_table():
    import re

    from cfnlint.decode import decode

    root = Path(__file__).resolve().parent.parent
    tpl, problems = decode(str(root / "infra" / "template.yaml"))
    assert not problems
    fn = tpl["Resources"]["ConsoleFunction"]["Properties"]
    assert fn["FunctionUrlConfig"]["AuthType"] == "AWS_IAM"
    assert fn["ImageConfig"]["Command"] == ["functions.console.handler"]
    assert fn["Environment"]["Variables"]["SPOOLSWEEP_CONSOLE_TOKEN"] == {"Ref": "ConsoleToken"}
    assert tpl["Parameters"]["ConsoleToken"]["NoEcho"] is True
    grants: dict[str, set[str]] = {"s3:GetObject": set(), "s3:PutObject": set()}
    for s in fn["Policies"][0]["Statement"]:
        assert s["Effect"] == "Allow" and "*" not in str(s["Action"]) and "Delete" not in str(s["Action"])
        if isinstance(s["Action"], str) and s["Action"] in grants:
            res = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
            grants[s["Action"]] |= {r["Fn::Sub"].split("}/", 1)[1] for r in res}
    [row] = [line for line in (root / "infra" / "permissions.md").read_text().splitlines()
             if line.startswith("| console ")]
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    assert grants["s3:GetObject"] == set(re.findall(r"`([^`]+)`", cells[2]))
    assert grants["s3:PutObject"] == set(re.findall(r"`([^`]+)`", cells[3])) == {"state/*/decisions.json",
                                                                                            "approvals/*"}
    user = tpl["Resources"]["ConsoleUserPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert {s["Action"] for s in user} == {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}
    assert all(s["Resource"] == {"Fn::GetAtt": ["ConsoleFunction", "Arn"]} and s["Condition"] for s in user)


def _in_own_loop(handler, event: dict) -> dict:
    """Lambda's runtime calls the handler on a thread with no running event loop; Mangum makes its own."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return handler(event, Context())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_browser_proxy_function_url_handler_chain(bucket):
    """proxy -> a stand-in function URL that checks the signature as AWS would -> the Lambda handler over S3."""
    from starlette.responses import Response

    from functions.console import handler

    target: dict[str, str] = {}

    async def function_url(request: Request):
        body = await request.body()
        rec = {"method": request.method, "path": request.url.path, "query": request.url.query,
               "headers": dict(request.headers), "body": body}
        if not _verify(rec, target["url"], body):
            return Response("signature mismatch", status_code=403)
        h = {k: v for k, v in request.headers.items() if k != "cookie"}
        cookies = [c.strip() for c in request.headers.get("cookie", "").split(";") if c.strip()]
        r = await asyncio.to_thread(_in_own_loop, handler,
                                    url_event(request.method, request.url.path, request.url.query, h, body, cookies))
        out = Response(base64.b64decode(r["body"]) if r.get("isBase64Encoded") else (r.get("body") or "").encode(),
                       status_code=r["statusCode"])
        out.raw_headers += [(k.encode(), v.encode()) for k, v in r.get("headers", {}).items()
                            if k.lower() != "content-length"]
        out.raw_headers += [(b"set-cookie", c.encode()) for c in r.get("cookies") or []]
        return out

    fn = Served(Starlette(routes=[Route("/{p:path}", function_url, methods=["GET", "POST"])]))
    target["url"] = fn.url
    px = Served(create_proxy(fn.url, Signer(CREDS, "eu-west-1")))
    try:
        with httpx.Client(base_url=px.url, follow_redirects=True) as browser:
            assert browser.get("/api/incidents").status_code == 401
            r = browser.get(f"/?token={TOKEN}")  # follows the 303; the cookie now lives on 127.0.0.1
            assert r.status_code == 200 and '<script src="/static/app.js"' in r.text
            assert [i["id"] for i in browser.get("/api/incidents").json()["incidents"]] == [INCIDENT]
            csrf = browser.get("/api/session").json()["csrf"]
            cid = str(bucket["manifest"].campaigns[0].id)
            r = browser.post(f"{BASE}/verdicts", json={"kind": "campaign", "target": cid, "verdict": "review"},
                             headers={"X-CSRF-Token": csrf})
            assert r.status_code == 200, r.text
            assert r.json()["log"]["by"] == f"console ({ARN})"
            hits = browser.get(f"{BASE}/messages", params={"q": "window.__xss", "per_page": 5}).json()
            assert hits["total"] == 2
    finally:
        px.stop()
        fn.stop()


@pytest.mark.slow
def test_cli_console_aws_prints_the_address_and_signs(stand_in, tmp_path):
    import os
    import subprocess
    import sys

    url, seen = stand_in
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret",
           "AWS_SESSION_TOKEN": "tok", "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    env.pop("AWS_PROFILE", None)
    env.pop("SPOOLSWEEP_CONSOLE_TOKEN", None)
    root = Path(__file__).resolve().parent.parent
    bad = subprocess.run([sys.executable, "-m", "spoolsweep", "console", "--aws", url, "--region", "eu-west-1"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--token" in bad.stderr
    p = subprocess.Popen([sys.executable, "-m", "spoolsweep", "console", "--aws", url, "--token", "tok-cli",
                          "--region", "eu-west-1", "--port", "0"], cwd=root, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    try:
        line = p.stdout.readline().strip()
        assert line.startswith("http://127.0.0.1:") and line.endswith("/?token=tok-cli")
        base = line.split("/?token=")[0]
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"{base}/api/incidents", headers={"Authorization": "Bearer tok-cli"})
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline and p.poll() is None
                time.sleep(0.2)
        assert r.status_code == 201
        h = seen[-1]["headers"]
        assert h["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
        assert "/eu-west-1/lambda/aws4_request" in h["authorization"] and h["x-spoolsweep-token"] == "tok-cli"
    finally:
        p.terminate()
        p.wait(10)


def test_split_snapshot_drill_down_downloads_little_and_keeps_within_budget(bucket, local_store, tmp_path):
    """A snapshot cut into parts: each message found in its part, a part fetched again only if evicted."""
    from console.data import CACHE_FACTOR, Incidents
    from pipeline.service import incidents as embedded

    s3, m = bucket["s3"], bucket["manifest"]
    name = "split-" + uuid.uuid4().hex[:8]
    s3.create_bucket(Bucket=name)
    for key in LocalStore(local_store).list(f"manifests/{INCIDENT}/"):  # the summary and its parts
        s3.put_object(Bucket=name, Key=key, Body=(local_store / key).read_bytes())
    fetched: list[str] = []

    class Counting(S3Store):
        def download(self, key, path):
            fetched.append(key)
            super().download(key, path)

    store = Counting(name, s3)
    parts = embedded.upload(store, local_store / f"incoming/{INCIDENT}/{HOST}/snapshot.tar", INCIDENT, HOST,
                            shard_size=100)
    assert len(parts) == 3
    biggest = max(store.size(k) for k in parts)
    inc = Incidents(store, raw_limit=biggest)
    picks = [m.messages[i] for i in (0, 150, 299, 151, 250, 1)]
    for x in picks:
        raw = inc.raw(INCIDENT, x)
        assert raw is not None and __import__("hashlib").sha256(raw).hexdigest() == x.sha256
        kept = list(inc._scratch().iterdir())
        assert sum(p.stat().st_size for p in kept) <= CACHE_FACTOR * biggest and len(kept) <= CACHE_FACTOR
    # 0 fetches part 1; 150 part 2; 299 part 3 (part 1 evicted); 151 and 250 are known to be in the parts kept,
    # so nothing is scanned or fetched (scanning in order would fetch 1 and 2 again, and 3); 1 fetches part 1 again
    assert fetched == [*parts, parts[0]], fetched
    smallest = min(store.size(k) for k in parts)
    assert Incidents(store, raw_limit=smallest - 1).raw(INCIDENT, m.messages[0]) is None  # every part over the limit
    # the downloads are copies of customers' mail: they go with the console, never left in /tmp
    scratch = inc._scratch()
    assert any(scratch.iterdir())
    inc.close()
    assert not scratch.exists()
    assert inc.raw(INCIDENT, m.messages[0]) is not None  # after close a drill-down downloads again
    again = inc._scratch()
    del inc
    __import__("gc").collect()
    assert not again.exists()
