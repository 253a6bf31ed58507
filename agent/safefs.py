"""Open, list and delete queue files relative to a directory handle, never through a link.

Whoever can write a queue folder (the MTA's user, a compromised web app that drops mail into a
pickup folder) can swap a file or a subfolder for a symlink or a hard link between the agent's
look and its act. A path string is resolved again on every call; a directory handle is not. So
every step here descends from an opened folder one component at a time with O_NOFOLLOW, and
checks what it opened with fstat (a regular file, one link, an expected owner) before reading it.
Adapters keep relative names (`sub/NTFS_1.EML`) and hand them to these functions.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from agent.errors import AgentError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a FIFO planted in the queue must not hang the agent (it is refused after fstat)
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class UnsafePath(AgentError):
    """A queue path is refused (a link, not a regular file, another owner, or outside the folder):"""


def owners_of(st: os.stat_result) -> frozenset[int]:
    """Who may own what sits in a folder: the folder's owner, the agent itself, root."""
    return frozenset({st.st_uid, os.geteuid(), 0})


def parts_of(rel: str) -> tuple[str, ...]:
    """The components of a relative name; UnsafePath for an absolute one, `..`, `.` or an empty part."""
    if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        raise UnsafePath(repr(rel))
    parts = tuple(rel.split("/"))
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(repr(rel))
    return parts


def open_dir(path: str | Path, dir_fd: int | None = None) -> int:
    """A handle on a folder; refuses it if its last component is a link (the configured parents are trusted)."""
    try:
        return os.open(path, _DIR, dir_fd=dir_fd)
    except OSError as e:
        raise UnsafePath(f"{path}: not a folder one may open without following a link ({e.strerror})") from None


@contextlib.contextmanager
def folder(path: str | Path) -> Iterator[int]:
    fd = open_dir(path)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _parent(root_fd: int, parts: tuple[str, ...]) -> Iterator[int]:
    """The handle of the folder holding parts[-1], descended from root_fd without following links."""
    fds: list[int] = []
    try:
        fd = root_fd
        for p in parts[:-1]:
            fd = open_dir(p, dir_fd=fd)
            fds.append(fd)
        yield fd
    finally:
        for f in fds:
            os.close(f)


def _check(fd: int, rel: str, owners: frozenset[int] | None, parent_st: os.stat_result) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"{rel}: not a regular file")
    if st.st_nlink != 1:
        # a hard link made by the queue's writer would let the agent read or release another file's bytes
        raise UnsafePath(f"{rel}: has {st.st_nlink} links")
    if st.st_uid not in (owners if owners is not None else owners_of(parent_st)):
        raise UnsafePath(f"{rel}: owned by uid {st.st_uid}, not by the queue's owner")
    return st


def open_file(root_fd: int, rel: str, owners: frozenset[int] | None = None) -> tuple[int, os.stat_result]:
    """(handle, fstat) of the regular file `rel` under root_fd; UnsafePath for anything else,
    FileNotFoundError if it is not there."""
    parts = parts_of(rel)
    with _parent(root_fd, parts) as parent:
        fd = _open_leaf(parts[-1], parent, rel)
        try:
            return fd, _check(fd, rel, owners, os.fstat(parent))
        except BaseException:
            os.close(fd)
            raise


def _open_leaf(name: str, parent: int, rel: str) -> int:
    try:
        return os.open(name, _FILE, dir_fd=parent)
    except FileNotFoundError:
        raise
    except OSError as e:
        # ELOOP: the name is a symlink; ENXIO: a socket; anything else is refused the same way
        raise UnsafePath(f"{rel}: {e.strerror}") from None


def read_file(root_fd: int, rel: str, owners: frozenset[int] | None = None) -> bytes:
    fd, st = open_file(root_fd, rel, owners)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def stat_file(root_fd: int, rel: str, owners: frozenset[int] | None = None) -> os.stat_result:
    fd, st = open_file(root_fd, rel, owners)
    os.close(fd)
    return st


def unlink(root_fd: int, rel: str) -> bool:
    """Delete `rel` under root_fd; its folders are entered without following links, and unlink itself never
    follows one (a link put in the file's place is what goes, not its target). False if it was not there."""
    parts = parts_of(rel)
    try:
        with _parent(root_fd, parts) as parent:
            os.unlink(parts[-1], dir_fd=parent)
    except FileNotFoundError:
        return False
    return True


def walk(root_fd: int) -> Iterator[tuple[str, list[str]]]:
    """(relative folder, sorted file names) for every folder under root_fd; links to folders are not entered
    (os.fwalk keeps a handle per folder and compares it with what it listed)."""
    for dirpath, dirnames, filenames, _fd in os.fwalk(".", dir_fd=root_fd, follow_symlinks=False):
        dirnames.sort()
        rel = os.path.normpath(dirpath)
        yield ("" if rel == "." else PurePosixPath(rel).as_posix()), sorted(filenames)


def make_private(path: Path) -> None:
    """Make a folder the agent's alone (owner the agent, mode 0700); UnsafePath if it cannot be."""
    fd = open_dir(path)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            try:
                os.fchown(fd, os.geteuid(), os.getegid())
            except PermissionError:
                raise UnsafePath(f"{path}: owned by uid {st.st_uid}; run the agent as root or as its owner") from None
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def is_private(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def write_new(dir_fd: int, name: str, data: bytes) -> None:
    """Write `name` in the folder (replacing a file there, never following a link in its place), synced."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    except OSError as e:
        raise UnsafePath(f"{name}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise UnsafePath(f"{name}: not a regular file")
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
