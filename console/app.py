"""The console's ASGI app: one Console state object, the routes of each resource, the security headers."""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from console import approval, incidents, messages, pages, review
from console.data import RAW_LIMIT, Incidents
from console.web import MAX_POST, Console, SecurityHeaders
from pipeline.store import Store

__all__ = ["MAX_POST", "create_app", "new_token"]


def create_app(data: str | Path | Store, token: str, raw_limit: int = RAW_LIMIT, warm: bool = True) -> Starlette:
    """DATA: a local store root, a triage output folder, or any Store (S3Store in Lambda)."""
    console = Console(Incidents(data, raw_limit=raw_limit), token)
    routes: list[BaseRoute] = [*pages.routes, *incidents.routes, *messages.routes, *approval.routes,
                               *review.routes, pages.static]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if warm:
            threading.Thread(target=review.warm, args=(console.inc,), daemon=True).start()
        try:
            yield
        finally:
            console.inc.close()  # the snapshots downloaded for drill-down hold customers' mail

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.console = console
    app.add_middleware(SecurityHeaders)
    return app


def new_token() -> str:
    return secrets.token_urlsafe(24)
