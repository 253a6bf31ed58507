"""Pack a frozen queue into a canonical spoolsweep snapshot (.tar.zst): index first, a sha256 per message.

Two passes keep memory flat for large queues: the first reads every message to write the index
(to a temporary file), the second streams the messages into the archive behind it and checks each
digest again, so the snapshot is exactly what was indexed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.errors import AgentError
from agent.mta.base import Queue, QueuedMessage
from pipeline.models import Envelope, IndexEntry

Progress = Callable[[str, int, int | None], None]
_MTIME = 0
_EMPTY = Envelope()


@dataclass
class Packed:
    path: Path
    sha256: str
    messages: int
    bytes: int
    damaged: int = 0  # messages whose queue files the reader found defects in (their index lines say which)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _add(tf: tarfile.TarFile, name: str, fileobj: io.IOBase | None, size: int, mtime: float = _MTIME) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = int(mtime)
    ti.mode = 0o600
    tf.addfile(ti, fileobj)
    tf.members.clear()  # type: ignore[attr-defined]  # TarFile keeps every TarInfo it wrote


def member_name(qm: QueuedMessage) -> str:
    return "messages/" + qm.name


def pack(queue: Queue, out: Path, host: str, incident: str, mta: str,
         progress: Progress | None = None, site: dict | None = None) -> Packed:
    """Write the snapshot to `out` (complete or not at all); return its digest and counts. `site`: the MTA's
    own configuration (agent/siteconf.py), from which triage derives the site policy."""
    progress = progress or (lambda stage, done, total: None)
    out.parent.mkdir(parents=True, exist_ok=True)
    keep: list[QueuedMessage] = []
    total = damaged = 0
    with tempfile.TemporaryFile(dir=out.parent) as index:
        for qm in queue.list():
            env = qm.envelope.model_copy(update={"queue_id": qm.queue_id})
            line = IndexEntry(path=member_name(qm), sha256=qm.sha256, size=qm.size, envelope=env,
                              defects=list(qm.defects) or None)
            index.write(line.model_dump_json(exclude_none=True).encode() + b"\n")
            total += qm.size
            damaged += bool(qm.defects)
            qm.envelope = _EMPTY  # the index holds it now; keep memory flat
            keep.append(qm)
            progress("indexing", len(keep), None)
        index_size = index.tell()
        index.seek(0)
        meta = json.dumps({"format": "spoolsweep-snapshot", "version": 1, "host": host, "incident": incident,
                           "mta": mta, "messages": len(keep), "bytes": total,
                           "taken_at": datetime.now(UTC).isoformat(), **({"site": site} if site else {})},
                          indent=1).encode()
        import zstandard

        part = out.with_name(f".{out.name}.part")
        with open(part, "wb") as raw:
            with zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False) as zw:
                with tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                    _add(tf, "spoolsweep-snapshot.json", io.BytesIO(meta), len(meta))
                    _add(tf, "index.jsonl", index, index_size)
                    for n, qm in enumerate(keep, 1):
                        data = queue.content(qm)
                        if hashlib.sha256(data).hexdigest() != qm.sha256:
                            raise AgentError(f"{qm.name} changed while it was being packed; is the queue frozen?")
                        _add(tf, member_name(qm), io.BytesIO(data), len(data))
                        progress("packing", n, len(keep))
            raw.flush()
            os.fsync(raw.fileno())
    os.replace(part, out)
    return Packed(out, file_sha256(out), len(keep), total, damaged)
