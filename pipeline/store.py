"""The two ports (object store, instruction channel) and their local-directory adapters.

The S3/SQS adapters live in functions/adapters.py (boto3 is imported only there); the local ones
here are the embedded default: durable on disk, a result object written last and renamed into
place so that its presence means it is complete.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline.errors import StoreError
from pipeline.manifest_io import atomic_write


class Store(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def put_if_absent(self, key: str, data: bytes) -> bool: ...
    def version(self, key: str) -> str | None:
        """A string that changes whenever the object does (None if it is absent): for cache invalidation."""
        ...


@dataclass(frozen=True)
class ChannelMessage:
    body: str
    receipt: str


class Channel(Protocol):
    """A per-host queue of instructions: at-least-once, like SQS."""

    def send(self, host: str, body: str, dedup_id: str) -> None: ...
    def receive(self, host: str, max_messages: int = 10, wait_seconds: float = 0) -> list[ChannelMessage]: ...
    def delete(self, host: str, receipt: str) -> None: ...


def _safe(root: Path, key: str) -> Path:
    if key.startswith("/") or ".." in key.split("/") or "\\" in key or not key:
        raise StoreError(f"key {key!r} is not allowed")
    return root / key


class LocalStore:
    """Objects as files under a root folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, data: bytes) -> None:
        atomic_write(_safe(self.root, key), data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write once: False if the key already exists (used for fan-in and immutable approvals)."""
        path = _safe(self.root, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def get(self, key: str) -> bytes:
        try:
            return _safe(self.root, key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"no object {key!r}") from None

    def exists(self, key: str) -> bool:
        return _safe(self.root, key).is_file()

    def version(self, key: str) -> str | None:
        try:
            st = _safe(self.root, key).stat()
        except FileNotFoundError:
            return None
        return f"{st.st_mtime_ns}-{st.st_size}"

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix.rstrip("/") if prefix else self.root
        if not base.exists():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.startswith("."):
                    continue
                yield (Path(dirpath) / fn).relative_to(self.root).as_posix()


class LocalChannel:
    """Instructions as files under <root>/<host>/; a received message is hidden for a visibility timeout."""

    def __init__(self, root: str | Path, visibility_timeout: float = 60.0) -> None:
        self.root = Path(root)
        self.visibility = visibility_timeout

    def send(self, host: str, body: str, dedup_id: str) -> None:
        d = _safe(self.root, host)
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{dedup_id}.msg"
        if not path.exists():
            atomic_write(path, body.encode())

    def receive(self, host: str, max_messages: int = 10, wait_seconds: float = 0) -> list[ChannelMessage]:
        d = _safe(self.root, host)
        deadline = time.monotonic() + wait_seconds
        while True:
            out: list[ChannelMessage] = []
            if d.exists():
                now = time.time()
                for p in sorted(d.glob("*.msg")):
                    lease = p.with_suffix(".lease")
                    try:
                        if lease.exists() and float(lease.read_text() or 0) > now:
                            continue
                        atomic_write(lease, str(now + self.visibility).encode())
                        out.append(ChannelMessage(p.read_text(), p.name))
                    except FileNotFoundError:
                        continue
                    if len(out) >= max_messages:
                        break
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(0.2)

    def delete(self, host: str, receipt: str) -> None:
        d = _safe(self.root, host)
        (d / receipt).unlink(missing_ok=True)
        (d / receipt).with_suffix(".lease").unlink(missing_ok=True)
