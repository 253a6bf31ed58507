"""console: the review console's ASGI app in Lambda, behind a function URL (AuthType AWS_IAM), data from S3.

The function URL admits only SigV4-signed requests of principals allowed lambda:InvokeFunctionUrl;
the app's own token and CSRF check stay on behind it. `spoolsweep console --aws URL` signs for a browser.
"""

from __future__ import annotations

from typing import Any

from mangum import Mangum

from adapters.bootstrap import build_store
from console.app import create_app
from functions.common import ColdStart, Handler
from functions.settings import ConsoleSettings


def build(s: ConsoleSettings) -> Handler:
    # warm=False: a thread would freeze between invocations; the first request parses the manifest
    asgi = create_app(build_store(s.store, s.cloud), s.console_token.get_secret_value(), raw_limit=s.raw_limit_bytes,
                      warm=False)
    mangum = Mangum(asgi, lifespan="off")

    def serve(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return dict(mangum(event, context))

    return serve


handler = ColdStart(build, ConsoleSettings)
