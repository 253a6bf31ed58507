"""Stream the members of a snapshot (tar, tar.gz, tar.zst or a directory) without extracting it.

Tarballs are read with libarchive when it is installed (the `triage` extra; Debian's libarchive13):
it walks a gzip tar about three times faster than the standard library's tarfile, which is the
one stage of triage that cannot use a second core. Without it, tarfile does the same job; both
paths apply the same checks and the tests run both.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipeline.errors import ArchiveLimitExceeded, SnapshotError
from pipeline.policy import Limits

_CHUNK = 1 << 20


@dataclass(slots=True)
class Member:
    """One regular file of the snapshot; data is None when it was too big to hold."""

    path: str
    data: bytes | None
    size: int
    mtime: float = 0.0
    sha256: str | None = None
    defects: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ArchiveReport:
    """What the walk saw besides messages: defects of the archive itself and skipped entries."""

    defects: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    members: int = 0
    bytes: int = 0
    sha256: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # a canonical snapshot's spoolsweep-snapshot.json


def unsafe_name(name: str) -> str | None:
    # A backslash is a separator to Windows, where these names may be written back (an IIS pickup
    # folder): `..\..\x` escapes and `\\server\share` or `C:\x` is absolute there too.
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "path escapes the archive ('..')"
    if "\x00" in name:
        return "NUL in name"
    return None


class _HashingReader(io.RawIOBase):
    """Wraps the raw archive stream to compute the whole archive's sha256 as it is read."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.h = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:  # io.RawIOBase's signature: any writable buffer
        data = self.raw.read(len(b))
        n = len(data)
        b[:n] = data
        self.h.update(data)
        return n


def _open_stream(path: Path) -> tuple[IO[bytes], _HashingReader, list[IO[bytes]]]:
    fh = open(path, "rb")  # closed by the caller via the returned list
    head = fh.read(4)
    fh.seek(0)
    hashed = _HashingReader(fh)
    buffered = io.BufferedReader(hashed, buffer_size=_CHUNK)
    if head == b"\x28\xb5\x2f\xfd":
        import zstandard

        dec = zstandard.ZstdDecompressor().stream_reader(buffered, read_size=_CHUNK)
        return dec, hashed, [dec, buffered, fh]
    return buffered, hashed, [buffered, fh]


def iter_members(source: str | Path, limits: Limits, report: ArchiveReport) -> Iterator[Member]:
    """Yield every regular file in sorted (directory) or stored (archive) order, enforcing limits."""
    src = Path(source)
    if src.is_dir():
        yield from _iter_dir(src, limits, report)
        return
    if not src.exists():
        raise SnapshotError(f"{src}: no such file or directory")
    if not src.is_file():
        # /dev/zero, a FIFO or a socket would be read for ever (zeros parse as an endless archive)
        raise SnapshotError(f"{src}: not a regular file or a folder (a device, pipe or socket)")
    if _use_libarchive():
        try:
            yield from _iter_libarchive(src, limits, report)
            return
        except _NotForLibarchive:
            pass  # e.g. a libarchive built without zstd: tarfile (with zstandard) reads it, or says why not
    stream, hashed, closers = _open_stream(src)
    try:
        try:
            tf = tarfile.open(fileobj=stream, mode="r|*")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise SnapshotError(f"{src}: not a tar archive ({e})") from None
        yield from _iter_tar(tf, limits, report)
        # drain so the archive digest covers every byte
        while stream.read(_CHUNK):
            pass
        report.sha256 = hashed.h.hexdigest()
    finally:
        for c in closers:
            try:
                c.close()
            except Exception:  # noqa: S110 - closing a broken stream must not mask the real error
                pass


class _NotForLibarchive(Exception):
    """libarchive could not open the stream; raised before any member was yielded."""


def _use_libarchive() -> bool:
    if os.environ.get("SPOOLSWEEP_TAR_READER", "").lower() == "tarfile":
        return False
    try:
        import libarchive  # noqa: F401
    except (ImportError, OSError):  # OSError: the package is there but libarchive.so is not
        return False
    return True


def _iter_libarchive(src: Path, limits: Limits, report: ArchiveReport) -> Iterator[Member]:
    import libarchive
    from libarchive.exception import ArchiveError

    with open(src, "rb") as fh:
        hashed = _HashingReader(fh)
        stream = io.BufferedReader(hashed, buffer_size=_CHUNK)
        try:
            ctx = libarchive.stream_reader(stream, format_name="tar", block_size=_CHUNK,
                                           header_codec="utf-8")
            archive = ctx.__enter__()
        except (ArchiveError, OSError, ValueError):
            raise _NotForLibarchive from None
        try:
            yield from _walk_libarchive(iter(archive), limits, report, ArchiveError)
        finally:
            try:
                ctx.__exit__(None, None, None)
            except ArchiveError:
                pass
        # drain so the archive digest covers every byte
        while stream.read(_CHUNK):
            pass
        report.sha256 = hashed.h.hexdigest()


def _walk_libarchive(entries: Iterator[Any], limits: Limits, report: ArchiveReport,
                     error: type[Exception]) -> Iterator[Member]:
    seen: set[str] = set()
    broken = (error, OSError, ValueError, EOFError)
    while True:
        try:
            e = next(entries)
            raw_name = e.pathname
            name = _text(raw_name)
        except StopIteration:
            return
        except broken as err:
            report.defects.append(f"archive damaged after {report.members} members: {_why(err, error)}")
            return
        if e.isdir:
            continue
        if not e.isreg:
            kind = "link" if (e.issym or e.islnk) else "device or special file"
            link = _text(e.linkpath or "")
            report.defects.append(f"{name}: {kind}{f' -> {link}' if link else ''} not followed")
            continue
        size = e.size or 0
        _check_totals(limits, report, size)
        defects = _name_defects(name, raw_name, seen)
        h = hashlib.sha256()
        kept: list[bytes] | None = [] if size <= _cap(name, limits) else None
        got = 0
        try:
            # one buffer at least the member's size (libarchive-c copies the whole buffer on every
            # block), a power of two: ctypes makes a new array type for every new size, 20 µs each
            for block in e.get_blocks(min(max(1 << max(size - 1, 0).bit_length(), 4096), _CHUNK)):
                got += len(block)
                h.update(block)
                if kept is not None:
                    kept.append(block)
        except broken as err:
            why = _why(err, error)
            report.defects.append(f"archive damaged inside {name}: {why}")
            yield Member(name, b"", size, float(e.mtime or 0), None, [*defects, f"member unreadable: {why}"])
            return
        if kept is None:
            defects.append(f"message of {size} bytes exceeds limits.max_member_bytes; not parsed")
            yield Member(name, None, size, float(e.mtime or 0), h.hexdigest(), defects)
            continue
        if got != size:
            defects.append(f"member truncated: {got} of {size} bytes")
        yield Member(name, b"".join(kept), size, float(e.mtime or 0), h.hexdigest(), defects)


def _why(err: BaseException, error: type[Exception]) -> str:
    """What went wrong reading the archive, as an admin reads it: libarchive's own message, without the
    errno, return code and address of its handle that its exception appends (the address changes from run
    to run: the same damaged archive gave a different manifest every time)."""
    msg = getattr(err, "msg", None) if isinstance(err, error) else None
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "backslashreplace")
    return str(msg) if msg else str(err)


def _text(name: str | bytes) -> str:
    """A member name as text that JSON can carry. A name that is not UTF-8 (a Latin-1 tarball made by hand)
    keeps its bytes visible as \\xNN escapes; both tar readers give the same string for it."""
    if isinstance(name, str):
        if name.isascii():
            return name
        try:
            name.encode("utf-8")
            return name
        except UnicodeEncodeError:  # tarfile's surrogateescape'd bytes
            name = name.encode("utf-8", "surrogateescape")
    return name.decode("utf-8", "backslashreplace")


_NOT_UTF8 = "member name is not UTF-8 (its bytes are shown as \\x escapes)"


def _name_defects(name: str, raw_name: str | bytes, seen: set[str]) -> list[str]:
    """What a member's name alone says against it (both tar walkers); `seen` collects the names."""
    defects: list[str] = []
    if bad := unsafe_name(name):
        defects.append(f"unsafe member name: {bad}")
    if raw_name != name:
        defects.append(_NOT_UTF8)
    if name in seen:
        defects.append("duplicate member name in archive")
    seen.add(name)
    return defects


def _cap(name: str, limits: Limits) -> int:
    """The bytes a member may have and still be read: the snapshot's index may be bigger than a message."""
    return limits.max_index_bytes if name.rsplit("/", 1)[-1] == "index.jsonl" else limits.max_member_bytes


def _check_totals(limits: Limits, report: ArchiveReport, size: int) -> None:
    report.members += 1
    report.bytes += size
    if report.members > limits.max_members:
        raise ArchiveLimitExceeded(f"more than {limits.max_members} members (limits.max_members)")
    if report.bytes > limits.max_total_bytes:
        raise ArchiveLimitExceeded(f"more than {limits.max_total_bytes} bytes (limits.max_total_bytes)")


def _read_limited(fh: IO[bytes], size: int, limits: Limits, name: str = "") -> tuple[bytes | None, str, list[str]]:
    if size <= _cap(name, limits):
        data = fh.read(size)
        defects = [] if len(data) == size else [f"member truncated: {len(data)} of {size} bytes"]
        return data, hashlib.sha256(data).hexdigest(), defects
    h = hashlib.sha256()
    while chunk := fh.read(_CHUNK):
        h.update(chunk)
    return None, h.hexdigest(), [f"message of {size} bytes exceeds limits.max_member_bytes; not parsed"]


def _iter_tar(tf: tarfile.TarFile, limits: Limits, report: ArchiveReport) -> Iterator[Member]:
    seen: set[str] = set()
    while True:
        try:
            ti = tf.next()
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            report.defects.append(f"archive damaged after {report.members} members: {e}")
            return
        if ti is None:
            return
        raw_name = ti.name
        name = _text(raw_name)
        if ti.isdir():
            continue
        if not ti.isfile():
            kind = "link" if (ti.issym() or ti.islnk()) else "device or special file"
            target = f" -> {_text(ti.linkname)}" if ti.linkname else ""
            report.defects.append(f"{name}: {kind}{target} not followed")
            continue
        _check_totals(limits, report, ti.size)
        defects = _name_defects(name, raw_name, seen)
        fh = tf.extractfile(ti)
        if fh is None:
            report.defects.append(f"{name}: cannot be read")
            continue
        try:
            data, digest, more = _read_limited(fh, ti.size, limits, name)
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            report.defects.append(f"archive damaged inside {name}: {e}")
            yield Member(name, b"", ti.size, float(ti.mtime), None, [*defects, f"member unreadable: {e}"])
            return
        yield Member(name, data, ti.size, float(ti.mtime), digest, defects + more)


def _iter_dir(root: Path, limits: Limits, report: ArchiveReport) -> Iterator[Member]:
    def unreadable(e: OSError) -> None:
        # os.walk would skip a folder it cannot list without a word: the messages in it would be lost
        where = Path(e.filename).relative_to(root).as_posix() if e.filename else "?"
        report.defects.append(f"{_text(where)}/: folder cannot be read ({e.strerror or e}); its messages are "
                              "not in this triage")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=unreadable):
        dirnames.sort()
        for fn in sorted(filenames):
            full = Path(dirpath) / fn
            raw_rel = full.relative_to(root).as_posix()
            rel = _text(raw_rel)
            try:
                st = full.lstat()
            except OSError as e:
                report.defects.append(f"{rel}: cannot stat: {e}")
                continue
            if not stat.S_ISREG(st.st_mode):
                kind = "link" if stat.S_ISLNK(st.st_mode) else "device or special file"
                report.defects.append(f"{rel}: {kind} not followed")
                continue
            _check_totals(limits, report, st.st_size)
            try:
                with open(full, "rb") as fh:
                    data, digest, defects = _read_limited(fh, st.st_size, limits, rel)
            except OSError as e:
                yield Member(rel, b"", st.st_size, st.st_mtime, None, [f"cannot read: {e}"])
                continue
            if raw_rel != rel:
                defects = [*defects, _NOT_UTF8]
            yield Member(rel, data, st.st_size, st.st_mtime, digest, defects)
