"""moto's server mode on 127.0.0.1 for the tests that speak to S3/SQS over HTTP."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from spoolsweep.lab.sink import free_port


@contextmanager
def moto_server() -> Iterator[str]:
    """A fresh moto server on a free port; yields its endpoint URL, stops it afterwards."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
