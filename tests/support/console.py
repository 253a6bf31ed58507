"""A small generated incident in a local store, with hostile subjects, for the console tests."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.generator import generate, write_canonical
from pipeline.manifest_io import write_manifest
from pipeline.policy import SitePolicy
from pipeline.triage import triage

INCIDENT = "inc-console"
HOST = "mail.example.net"
XSS_SUBJECTS = [
    "<script>window.__xss=1</script>",
    '"><img src=x onerror="window.__xss=1">',
    "Invoice \u202egnp.exe paid",
    "long " + "A" * 10_240,
]


def _subject(data: bytes, subject: str) -> bytes:
    head, sep, body = data.partition(b"\n\n")
    head = re.sub(rb"(?im)^subject:.*(\n[ \t].*)*\n?", b"", head + b"\n").rstrip(b"\n")
    return head + b"\nSubject: " + subject.encode() + b"\n" + sep[1:] + b"\n" + body


def build_store(root: Path, corpus: tuple[list[bytes], list[bytes]], policy: SitePolicy, n: int = 300) -> Path:
    """root/ becomes a local store with manifests/, incoming/ for one incident; returns the root."""
    ham, spam = corpus
    inc = generate(ham, spam, n=n, seed=11)
    # the hostile subjects go on valid and spam messages alike, so they show in campaigns and the valid list
    for i, s in enumerate(XSS_SUBJECTS):
        m = inc.messages[i * 7]
        m.data = _subject(m.data, "=?utf-8?b?" + __import__("base64").b64encode(s.encode()).decode() + "?=")
    work = root.parent / (root.name + "-work")
    tar = write_canonical(inc, work / "snapshot.tar", host=HOST)
    manifest = triage(tar, policy, incident=INCIDENT, workers=1)
    write_manifest(manifest, root / "manifests" / INCIDENT, per_part=100)  # several parts, as a big one has
    dest = root / "incoming" / INCIDENT / HOST
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(tar, dest / "snapshot.tar")
    return root


@contextmanager
def served(data: Any, token: str) -> Iterator[str]:
    """The console over DATA on 127.0.0.1 in a thread, as `spoolsweep up` serves it; yields its base URL."""
    from spoolsweep.commands.console import serve_in_thread

    url, server = serve_in_thread(data, token=token)
    try:
        yield url.split("/?", 1)[0]
    finally:
        server.should_exit = True
