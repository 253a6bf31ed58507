"""The two ports (object store, instruction channel) and their local-directory adapters.

The S3/SQS adapters live in adapters/aws.py (boto3 is never imported under pipeline/); the local ones
here are the embedded default: durable on disk, a result object written last and renamed into
place so that its presence means it is complete.
"""

from __future__ import annotations

import contextlib
import os
import stat
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


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _parts(key: str) -> list[str]:
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\x00" in key or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"key {key!r} is not allowed")
    return parts


class LocalStore:
    """Objects as files under a root folder.

    Every key is walked from a handle on the root one folder at a time with O_NOFOLLOW, and the object itself
    is opened, renamed or linked relative to its folder's handle: a symlink planted anywhere inside the store
    (by whoever else can write it) is refused, never followed, so nothing is read or written outside it.
    A check of the path first and an open of it afterwards would leave the gap between them."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _folder(self, key: str, create: bool = False) -> Iterator[tuple[int, str]]:
        """(handle of the folder holding the key's object, the object's name in it)."""
        parts = _parts(key)
        with self._descend(parts[:-1], key, create) as fd:
            yield fd, parts[-1]

    @contextlib.contextmanager
    def _descend(self, folders: list[str], key: str, create: bool = False) -> Iterator[int]:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        try:
            for p in folders:
                try:
                    nxt = os.open(p, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(p, 0o777, dir_fd=fd)
                    nxt = os.open(p, _DIR, dir_fd=fd)
                except OSError as e:  # ELOOP or ENOTDIR: a link or a file where a folder should be
                    raise StoreError(f"key {key!r}: {p!r} is not a plain folder ({e.strerror})") from None
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    def _write_tmp(self, fd: int, name: str, data: bytes) -> str:
        tmp = f".{name}.{uuid.uuid4().hex}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=fd)
        try:
            with os.fdopen(out, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            os.unlink(tmp, dir_fd=fd)
            raise
        return tmp

    def put(self, key: str, data: bytes) -> None:
        with self._folder(key, create=True) as (fd, name):
            tmp = self._write_tmp(fd, name, data)
            try:
                # rename replaces whatever has the name, a link included; it never writes through one
                os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=fd)
                raise

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write once: False if the key already exists (used for fan-in and immutable approvals)."""
        with self._folder(key, create=True) as (fd, name):
            tmp = self._write_tmp(fd, name, data)
            try:
                os.link(tmp, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp, dir_fd=fd)
            return True

    def _open(self, key: str) -> tuple[int, os.stat_result]:
        with self._folder(key) as (fd, name):
            try:
                f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0),
                            dir_fd=fd)
            except FileNotFoundError:
                raise
            except OSError as e:
                raise StoreError(f"key {key!r} is not a plain file ({e.strerror})") from None
        st = os.fstat(f)
        if not stat.S_ISREG(st.st_mode):
            os.close(f)
            raise StoreError(f"key {key!r} is not a plain file")
        return f, st

    def get(self, key: str) -> bytes:
        try:
            f, _ = self._open(key)
        except (FileNotFoundError, NotADirectoryError):
            raise StoreError(f"no object {key!r}") from None
        with os.fdopen(f, "rb") as fh:
            return fh.read()

    def _lstat(self, key: str) -> os.stat_result | None:
        try:
            with self._folder(key) as (fd, name):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError, StoreError):
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def exists(self, key: str) -> bool:
        return self._lstat(key) is not None

    def version(self, key: str) -> str | None:
        st = self._lstat(key)
        return None if st is None else f"{st.st_mtime_ns}-{st.st_size}"

    def list(self, prefix: str) -> Iterator[str]:
        folder = prefix.strip("/")
        try:
            with self._descend(_parts(folder) if folder else [], prefix) as fd:
                # fwalk with follow_symlinks=False enters no linked folder; linked files are left out below
                for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
                    dirnames.sort()
                    rel = os.path.normpath(os.path.join(folder, dirpath)) if folder else os.path.normpath(dirpath)
                    for fn in sorted(filenames):
                        if fn.startswith("."):
                            continue
                        try:
                            if not stat.S_ISREG(os.stat(fn, dir_fd=dfd, follow_symlinks=False).st_mode):
                                continue
                        except FileNotFoundError:
                            continue
                        yield fn if rel == "." else f"{rel}/{fn}"
        except (FileNotFoundError, NotADirectoryError, StoreError):
            return


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
                        if lease.exists() and _lease_until(lease) > now:
                            continue
                        atomic_write(lease, str(now + self.visibility).encode())
                        # bytes that are not UTF-8 arrive as they are (surrogateescape) for the agent to refuse,
                        # as SQS would never deliver them: reading must not be what fails
                        out.append(ChannelMessage(p.read_bytes().decode("utf-8", "surrogateescape"), p.name))
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


def _lease_until(lease: Path) -> float:
    """When a lease ends; an unreadable lease file has ended (the message is offered again, not stuck)."""
    try:
        return float(lease.read_text("ascii") or 0)
    except (ValueError, UnicodeDecodeError):
        return 0.0
