"""Lab parts on 127.0.0.1 that the demo and the tests share: a private Postfix and an SMTP sink."""

from __future__ import annotations

import socket


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing holds right now: the kernel picks it, we release it."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
