"""The console's page routes: the token link that becomes a cookie, the page itself, its static files, the session."""

from __future__ import annotations

import hmac
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from console.web import Console, api, console_of, cookie_name

STATIC = Path(__file__).parent / "static"


async def index(request: Request) -> Response:
    c = console_of(request)
    t = request.query_params.get("token")
    if t is not None:
        if not hmac.compare_digest(t.encode(), c.token.encode()):
            return PlainTextResponse("wrong token", status_code=401)
        # move the token from the address into a cookie, so it leaves the history and the screen
        r = RedirectResponse("/", status_code=303)
        r.set_cookie(cookie_name(request), c.token, httponly=True, samesite="strict", path="/")
        return r
    if not c.authed(request):
        return PlainTextResponse("open the address spoolsweep console printed (it carries the token)", 401)
    return FileResponse(STATIC / "index.html")


async def favicon(request: Request) -> Response:
    return Response(status_code=204)


async def session(request: Request, c: Console) -> Response:
    return JSONResponse({"csrf": c.csrf})


routes: list[BaseRoute] = [
    Route("/", index),
    Route("/favicon.ico", favicon),
    Route("/api/session", api(session)),
]
static = Mount("/static", StaticFiles(directory=STATIC), name="static")
