"""console: the review console's ASGI app in Lambda, behind a function URL (AuthType AWS_IAM), data from S3.

The function URL admits only SigV4-signed requests of principals allowed lambda:InvokeFunctionUrl;
the app's own token and CSRF check stay on behind it. `spoolsweep console --aws URL` signs for a browser.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from mangum import Mangum

from console.app import create_app
from functions.root import build_store
from functions.settings import ConsoleSettings, load


@cache
def app() -> Mangum:
    s = load(ConsoleSettings)
    # warm=False: a thread would freeze between invocations; the first request parses the manifest
    asgi = create_app(build_store(s), s.console_token.get_secret_value(), raw_limit=s.raw_limit_bytes, warm=False)
    return Mangum(asgi, lifespan="off")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app()(event, context)


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    app()  # cold start: fail fast on bad settings
