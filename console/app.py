"""The console's ASGI app: token auth, CSRF on POST, a JSON API under /api/ and the static pages."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from console.data import RAW_LIMIT, Incidents, Loaded, message_row, message_view
from console.fields import Who
from console.review import review_routes
from console.review import warm as warm_all
from pipeline.blocklist.models import BlocklistReport
from pipeline.models import Verdict
from pipeline.store import Store

STATIC = Path(__file__).parent / "static"
COOKIE = "spoolsweep_token"  # the cookie's name is this plus _<port>: see cookie_name
MAX_POST = 64 * 1024  # a verdict or an approval is a few hundred bytes; more is not a console's request
TOKEN_HEADER = "x-spoolsweep-token"  # noqa: S105 - a header name, not a secret
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
           "cache-control": "no-store"}


class VerdictChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["campaign", "message"]
    target: str = Field(min_length=1, max_length=200)
    verdict: Verdict
    by: Who = "console"
    note: str = Field("", max_length=2000)


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    by: Who = "console"


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] += [(k.encode(), v.encode()) for k, v in HEADERS.items()]
            await send(message)

        await self.app(scope, receive, wrapped)



def _blocklist_state(report: dict[str, Any] | None) -> str:
    """The incident list's blocklist column, read from the real report model (listed first, then unknown)."""
    if report is None:
        return "not checked"
    try:
        return BlocklistReport.model_validate(report).state()
    except ValidationError:
        return "unreadable report"

def create_app(data: str | Path | Store, token: str, raw_limit: int = RAW_LIMIT, warm: bool = True) -> Starlette:
    """DATA: a local store root, a triage output folder, or any Store (S3Store in Lambda)."""
    inc = Incidents(data, raw_limit=raw_limit)
    csrf = hmac.new(token.encode(), b"csrf", hashlib.sha256).hexdigest()

    def authed(request: Request) -> bool:
        h = request.headers.get("authorization", "")
        # behind the SigV4 proxy the Authorization header is the signature: the token moves to X-Spoolsweep-Token
        given = (h[7:] if h.lower().startswith("bearer ") else
                 request.headers.get(TOKEN_HEADER) or request.cookies.get(cookie_name(request), ""))
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())

    def err(status: int, msg: str) -> JSONResponse:
        return JSONResponse({"error": msg}, status_code=status)

    def api(fn: Any, post: bool = False) -> Any:
        async def endpoint(request: Request) -> Response:
            if not authed(request):
                return err(401, "a valid token is required")
            if post and not hmac.compare_digest(request.headers.get("x-csrf-token", "").encode(), csrf.encode()):
                return err(403, "missing or wrong X-CSRF-Token")
            if post:
                body = await _read_limited(request)
                if body is None:
                    return err(413, f"the request body is over {MAX_POST} bytes")
                request.state.body = body
            try:
                return await fn(request)
            except ValidationError as e:
                return JSONResponse({"error": "malformed request", "detail": e.errors(
                    include_url=False, include_input=False, include_context=False)}, status_code=422)
            except ValueError as e:
                return err(400, str(e))
        return endpoint

    def incident(request: Request) -> tuple[str, Loaded]:
        iid = request.path_params["iid"]
        loaded = inc.load(iid)
        if loaded is None:
            raise LookupError(iid)
        return iid, loaded

    def need(fn: Any) -> Any:
        async def inner(request: Request) -> Response:
            try:
                iid, loaded = incident(request)
            except (LookupError, ValueError):
                return err(404, "no such incident")
            return await fn(request, iid, loaded)
        return inner

    async def session(request: Request) -> Response:
        return JSONResponse({"csrf": csrf})

    async def incidents(request: Request) -> Response:
        out = []
        for iid in inc.ids():
            loaded = inc.load(iid)
            row: dict[str, Any] = {"id": iid, "status": inc.status(iid, loaded),
                                   "blocklist": _blocklist_state(inc.blocklists(iid))}
            if loaded:
                m = loaded.manifest
                row.update(host=m.snapshot.host, when=loaded.last_arrival,
                           size=m.totals.messages, bytes=m.totals.bytes, totals=m.totals.model_dump())
            out.append(row)
        return JSONResponse({"incidents": out})

    @need
    async def detail(request: Request, iid: str, loaded: Loaded) -> Response:
        m = loaded.manifest
        d = inc.decisions(iid)
        ov = inc.effective(loaded, d)
        totals = {"messages": m.totals.messages, "bytes": m.totals.bytes, "campaigns": m.totals.campaigns,
                  "valid": 0, "spam": 0, "review": 0}
        for x in m.messages:
            totals[ov.get(x.id, x.verdict).value] += 1
        # the biggest campaigns as cards; a 100k incident has thousands of small ones, which the page asks for
        # in steps (?campaigns=N) instead of receiving a megabyte on every visit
        limit = int(request.query_params.get("campaigns") or 60)
        if not 1 <= limit <= 100_000:
            raise ValueError("campaigns must be 1..100000")
        camps = []
        for c in sorted(m.campaigns, key=lambda c: -c.size)[:limit]:
            cd = d["campaigns"].get(str(c.id))
            camps.append({**c.model_dump(mode="json"), "triage_verdict": c.verdict.value,
                          "verdict": cd["verdict"] if cd else c.verdict.value, "decision": cd})
        review = [message_row(x, ov) for x in m.messages if ov.get(x.id, x.verdict) is Verdict.review][:200]
        groups: dict[tuple[str, str], int] = {}
        for x in m.messages:
            if ov.get(x.id, x.verdict) is Verdict.valid:
                s = _domain(x.envelope.mail_from)
                for r in set(map(_domain, x.envelope.rcpt_to)) or {"?"}:
                    groups[(s, r)] = groups.get((s, r), 0) + 1
        valid = [{"sender_domain": s, "recipient_domain": r, "messages": n}
                 for (s, r), n in sorted(groups.items(), key=lambda kv: -kv[1])[:100]]
        return JSONResponse({"id": iid, "host": m.snapshot.host, "status": inc.status(iid, loaded),
                             "snapshot": m.snapshot.model_dump(mode="json"), "totals": totals,
                             "campaigns": camps, "campaigns_total": len(m.campaigns),
                             "accounts": [a.model_dump(mode="json") for a in m.accounts],
                             "sources": [s.model_dump(mode="json") for s in m.sources[:200]],
                             "review_first": review, "valid_groups": valid, "decisions": d["log"][-50:],
                             # read before approving: a policy that matched too little, and which policy it was
                             "warnings": m.warnings,
                             "policy": m.policy.model_dump(mode="json") if m.policy else None})

    @need
    async def messages(request: Request, iid: str, loaded: Loaded) -> Response:
        q = request.query_params
        verdict = q.get("verdict") or None
        if verdict is not None:
            verdict = Verdict(verdict).value
        camp = q.get("campaign")
        camp_id = None if camp in (None, "") else (-1 if camp == "none" else int(camp))
        needle = (q.get("q") or "").lower()[:200]
        page = int(q.get("page") or 1)
        per = int(q.get("per_page") or 50)
        if page < 1 or not 1 <= per <= 500:
            raise ValueError("page must be >= 1 and per_page 1..500")
        ov = inc.effective(loaded, inc.decisions(iid))
        hits = []
        for x, hay in zip(loaded.manifest.messages, loaded.haystack, strict=True):
            if verdict and ov.get(x.id, x.verdict).value != verdict:
                continue
            if camp_id is not None and (x.campaign if x.campaign is not None else -1) != camp_id:
                continue
            if needle and needle not in hay:
                continue
            hits.append(x)
        start = (page - 1) * per
        return JSONResponse({"total": len(hits), "page": page, "per_page": per,
                             "messages": [message_row(x, ov) for x in hits[start:start + per]]})

    @need
    async def message(request: Request, iid: str, loaded: Loaded) -> Response:
        m = loaded.by_id.get(request.path_params["mid"])
        if m is None:
            return err(404, "no such message")
        ov = inc.effective(loaded, inc.decisions(iid))
        return JSONResponse(message_view(m, inc.raw(iid, m), ov.get(m.id, m.verdict)))

    @need
    async def timeline(request: Request, iid: str, loaded: Loaded) -> Response:
        return JSONResponse(loaded.timeline)

    @need
    async def verdicts(request: Request, iid: str, loaded: Loaded) -> Response:
        body = VerdictChange.model_validate_json(request.state.body)
        if body.kind == "campaign":
            if not any(str(c.id) == body.target for c in loaded.manifest.campaigns):
                return err(404, "no such campaign")
        elif body.target not in loaded.by_id:
            return err(404, "no such message")
        d = inc.decide(iid, body.kind, body.target, body.verdict, _who(request, body.by), body.note)
        return JSONResponse({"ok": True, "log": d["log"][-1], "summary": inc.summary(iid, loaded)})

    @need
    async def summary(request: Request, iid: str, loaded: Loaded) -> Response:
        return JSONResponse({**inc.summary(iid, loaded), "approvals": inc.approvals(iid)})

    @need
    async def approve(request: Request, iid: str, loaded: Loaded) -> Response:
        body = ApproveBody.model_validate_json(request.state.body)
        done = inc.approve(iid, loaded, _who(request, body.by), body.digest)
        if done is None:
            return err(409, "the decisions changed since this summary; review the new summary and confirm again")
        key, new = done
        s = inc.summary(iid, loaded)
        return JSONResponse({"key": key, "new": new, "summary": s}, status_code=201 if new else 200)

    @need
    async def receipts(request: Request, iid: str, loaded: Loaded) -> Response:
        return JSONResponse(inc.receipts(iid))

    @need
    async def blocklists(request: Request, iid: str, loaded: Loaded) -> Response:
        return JSONResponse({"report": inc.blocklists(iid)})

    async def index(request: Request) -> Response:
        t = request.query_params.get("token")
        if t is not None:
            if not hmac.compare_digest(t.encode(), token.encode()):
                return PlainTextResponse("wrong token", status_code=401)
            # move the token from the address into a cookie, so it leaves the history and the screen
            r = RedirectResponse("/", status_code=303)
            r.set_cookie(cookie_name(request), token, httponly=True, samesite="strict", path="/")
            return r
        if not authed(request):
            return PlainTextResponse("open the address spoolsweep console printed (it carries the token)", 401)
        return FileResponse(STATIC / "index.html")

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/api/session", api(session)),
        Route("/api/incidents", api(incidents)),
        Route("/api/incidents/{iid}", api(detail)),
        Route("/api/incidents/{iid}/messages", api(messages)),
        Route("/api/incidents/{iid}/messages/{mid}", api(message)),
        Route("/api/incidents/{iid}/timeline", api(timeline)),
        Route("/api/incidents/{iid}/verdicts", api(verdicts, post=True), methods=["POST"]),
        Route("/api/incidents/{iid}/approval-summary", api(summary)),
        Route("/api/incidents/{iid}/approve", api(approve, post=True), methods=["POST"]),
        Route("/api/incidents/{iid}/receipts", api(receipts)),
        Route("/api/incidents/{iid}/blocklists", api(blocklists)),
        *review_routes(inc, api, need, _who),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if warm:
            threading.Thread(target=warm_all, args=(inc,), daemon=True).start()
        yield

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(SecurityHeaders)
    return app


def cookie_name(request: Request) -> str:
    """spoolsweep_token_<port>. Browsers keep and send cookies by host name only, never by port (RFC 6265
    section 8.5): under one name, two consoles on 127.0.0.1 overwrite each other's token. With the port in the
    name each keeps its own. (Any server on another port of that host is still sent the cookie: a browser
    offers no port-scoped cookie; the console binds 127.0.0.1 and its token is random per run.)"""
    port = request.url.port or (443 if request.url.scheme == "https" else 80)
    return f"{COOKIE}_{port}"


async def _read_limited(request: Request, limit: int = MAX_POST) -> bytes | None:
    """The body, or None as soon as it is over `limit` (a declared length is refused before reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


def new_token() -> str:
    return secrets.token_urlsafe(24)


def _who(request: Request, by: str) -> str:
    """The name typed in, and behind a function URL the IAM principal that signed the request (the audit trail)."""
    event = request.scope.get("aws.event") or {}
    arn = (((event.get("requestContext") or {}).get("authorizer") or {}).get("iam") or {}).get("userArn")
    return f"{by} ({arn})" if arn else by


def _domain(addr: str | None) -> str:
    if addr is None:
        return "?"
    return addr.rpartition("@")[2].lower() or "<>"


