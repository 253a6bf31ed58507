"""A SigV4-signing proxy on 127.0.0.1: the browser talks to it, it signs each request for the console's function URL.

A function URL with AuthType AWS_IAM admits only requests signed with AWS credentials (service "lambda"),
which a browser cannot make; this proxy adds the admin's signature (botocore's SigV4Auth) and nothing else.
The console's own token and CSRF check still apply at the far end.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.errors import SpoolsweepError

# only what the console reads travels on: a header the browser adds on the way must not break the signature
FORWARD = ("accept", "content-type", "cookie", "x-csrf-token", "x-spoolsweep-token")
DROP_BACK = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length", "upgrade"}
_URL_HOST = re.compile(r"^[a-z0-9]+\.lambda-url\.([a-z0-9-]+)\.on\.aws$")


class NoCredentials(SpoolsweepError):
    """No AWS credentials found (environment, profile, SSO or instance role) to sign the console's requests:"""


def region_of(url: str, default: str | None = None) -> str:
    """The region in a function URL's host name (https://<id>.lambda-url.<region>.on.aws/), else default."""
    m = _URL_HOST.match(urlsplit(url).hostname or "")
    if m:
        return m.group(1)
    if default:
        return default
    raise NoCredentials(f"cannot tell the region of {url}; give --region")


def canonical_target(base: str, path: str, query: str) -> str:
    """The URL to sign and send, path and query already in SigV4's canonical encoding, so both ends agree."""
    path = quote(unquote(path), safe="/-_.~")
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    q = urlencode(pairs, quote_via=quote, safe="-_.~")
    return base.rstrip("/") + path + (f"?{q}" if q else "")


class Signer:
    """Signs one request at a time with credentials that refresh themselves (SSO, assumed roles)."""

    def __init__(self, credentials: Any, region: str, service: str = "lambda") -> None:
        self.credentials = credentials
        self.region = region
        self.service = service

    def headers(self, method: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        req = AWSRequest(method=method, url=url, data=body, headers=headers)
        SigV4Auth(self.credentials.get_frozen_credentials(), self.service, self.region).add_auth(req)
        return dict(req.headers.items())


def session_credentials(profile: str | None = None) -> tuple[Any, str | None]:
    """(credentials, configured region) of the AWS profile, as the AWS CLI would find them."""
    import botocore.session

    session = botocore.session.Session(profile=profile)
    creds = session.get_credentials()
    if creds is None:
        raise NoCredentials("set AWS_PROFILE or AWS_ACCESS_KEY_ID, or run `aws sso login`")
    return creds, session.get_config_variable("region")


def create_proxy(target: str, signer: Signer, timeout: float = 60.0) -> Starlette:
    client: dict[str, httpx.AsyncClient] = {}

    async def forward(request: Request) -> Response:
        body = await request.body()
        url = canonical_target(target, request.url.path, request.url.query)
        headers = {k: v for k in FORWARD if (v := request.headers.get(k))}
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):  # a script's token: Authorization now carries the signature
            headers["x-spoolsweep-token"] = auth[7:]
        signed = signer.headers(request.method, url, headers, body)
        try:
            r = await client["http"].request(request.method, url, headers=signed, content=body)
        except httpx.HTTPError as e:
            return Response(f"the console at {target} did not answer: {e}\n", status_code=502,
                            media_type="text/plain")
        out = Response(r.content, status_code=r.status_code)
        out.raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in r.headers.multi_items()
                            if k.lower() not in DROP_BACK]
        return out

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as c:
            client["http"] = c
            yield

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    # a page that rebinds its own host name to 127.0.0.1 must not reach the signer
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan,
                     middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"])])
