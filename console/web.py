"""What every console route shares: the app's state, token auth, CSRF on POST, bounded bodies, headers."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from console.data import Incidents, Loaded
from pipeline.errors import ManifestError

COOKIE = "spoolsweep_token"  # the cookie's name is this plus _<port>: see cookie_name
MAX_POST = 64 * 1024  # a verdict or an approval is a few hundred bytes; more is not a console's request
TOKEN_HEADER = "x-spoolsweep-token"  # noqa: S105 - a header name, not a secret
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
           "cache-control": "no-store"}


@dataclass(frozen=True)
class Console:
    """The state every route reads: the incidents and the token (kept in the Starlette app's state)."""

    inc: Incidents
    token: str
    csrf: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "csrf", hmac.new(self.token.encode(), b"csrf", hashlib.sha256).hexdigest())

    def authed(self, request: Request) -> bool:
        h = request.headers.get("authorization", "")
        # behind the SigV4 proxy the Authorization header is the signature: the token moves to X-Spoolsweep-Token
        given = (h[7:] if h.lower().startswith("bearer ") else
                 request.headers.get(TOKEN_HEADER) or request.cookies.get(cookie_name(request), ""))
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())


def console_of(request: Request) -> Console:
    c = request.app.state.console
    assert isinstance(c, Console)
    return c


Handler = Callable[[Request, Console], Awaitable[Response]]
IncidentHandler = Callable[[Request, Console, str, Loaded], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def err(status: int, msg: str) -> JSONResponse:
    return JSONResponse({"error": msg}, status_code=status)


def api(fn: Handler, post: bool = False) -> Endpoint:
    """An /api/ endpoint: the token, on POST the CSRF header and a bounded body (in request.state.body), and a
    malformed request answered 422 or 400 with what was wrong."""
    async def endpoint(request: Request) -> Response:
        c = console_of(request)
        if not c.authed(request):
            return err(401, "a valid token is required")
        if post and not hmac.compare_digest(request.headers.get("x-csrf-token", "").encode(), c.csrf.encode()):
            return err(403, "missing or wrong X-CSRF-Token")
        if post:
            body = await read_limited(request)
            if body is None:
                return err(413, f"the request body is over {MAX_POST} bytes")
            request.state.body = body
        try:
            return await fn(request, c)
        except ValidationError as e:
            return JSONResponse({"error": "malformed request", "detail": e.errors(
                include_url=False, include_input=False, include_context=False)}, status_code=422)
        except ValueError as e:
            return err(400, str(e))
        except ManifestError as e:  # a part missing or changed: said, never a page of what could be read
            return err(500, str(e))
    return endpoint


def incident_api(fn: IncidentHandler, post: bool = False) -> Endpoint:
    """An /api/incidents/{iid}/... endpoint: `api`, then the incident loaded (404 when there is none)."""
    async def with_incident(request: Request, c: Console) -> Response:
        iid = request.path_params["iid"]
        try:
            loaded = c.inc.load(iid)
        except ValueError:
            loaded = None
        if loaded is None:
            return err(404, "no such incident")
        return await fn(request, c, iid, loaded)
    return api(with_incident, post)


class SecurityHeaders:
    """ASGI middleware: HEADERS (the CSP first) on every HTTP response, errors and static files included."""

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


def cookie_name(request: Request) -> str:
    """spoolsweep_token_<port>. Browsers keep and send cookies by host name only, never by port (RFC 6265
    section 8.5): under one name, two consoles on 127.0.0.1 overwrite each other's token. With the port in the
    name each keeps its own. (Any server on another port of that host is still sent the cookie: a browser
    offers no port-scoped cookie; the console binds 127.0.0.1 and its token is random per run.)"""
    port = request.url.port or (443 if request.url.scheme == "https" else 80)
    return f"{COOKIE}_{port}"


async def read_limited(request: Request, limit: int = MAX_POST) -> bytes | None:
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


def who(request: Request, by: str) -> str:
    """The name typed in, and behind a function URL the IAM principal that signed the request (the audit trail)."""
    event = request.scope.get("aws.event") or {}
    arn = (((event.get("requestContext") or {}).get("authorizer") or {}).get("iam") or {}).get("userArn")
    return f"{by} ({arn})" if arn else by
