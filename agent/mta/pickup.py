"""Pickup folders (IIS SMTP, Exchange Replay): freeze by moving the folder aside (Out -> Out.old), replay by
writing each approved message, its envelope as `X-Sender:`/`X-Receiver:` lines on top, into the folder
the MTA watches.

Whoever can write the pickup folder could plant links in it; so the folder moved aside becomes the agent's
alone (0700), and every file in it is opened, listed and deleted through agent.safefs: relative to a
folder handle, never following a link, a regular file of an expected owner only."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from agent import safefs
from agent.errors import FreezeError
from agent.journal import Phase
from agent.mta.base import Commit, FreezeReport, Queue, QueuedMessage, fsync_dir, sha256_hex
from pipeline.models import Envelope
from pipeline.readers.eml import _NOT_MESSAGES, read_pickup_file, split_iis_envelope

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
log = logging.getLogger("spoolsweep.agent")


def envelope_lines(env: Envelope, eol: bytes = b"\r\n") -> bytes:
    sender = env.mail_from if env.mail_from else "<>"
    lines = [f"X-Sender: {sender}".encode()] + [f"X-Receiver: {r}".encode() for r in env.rcpt_to]
    return eol.join(lines) + eol


class PickupQueue(Queue):
    """`folder` is where the MTA keeps the queue; frozen messages live in `aside` (default folder + '.old')."""

    name = "pickup"
    releases_natively = True

    def __init__(self, folder: str | Path, aside: str | Path | None = None, pickup: str | Path | None = None) -> None:
        self.folder = Path(folder)
        self.aside = Path(aside) if aside else self.folder.with_name(self.folder.name + ".old")
        self.pickup = Path(pickup) if pickup else self.folder
        self.staging = self.pickup.with_name(f".{self.pickup.name}.spoolsweep-staging")

    def freeze(self, dry_run: bool = False, resume: bool = False) -> FreezeReport:
        if os.path.lexists(self.aside) and resume:  # this snapshot's own rename, cut short after it
            if not dry_run:
                safefs.make_private(self.aside)  # a crash between the rename and the chmod leaves it open
            n, size = self._count()
            return FreezeReport(f"{self.aside} (already moved aside)", n, size)
        if os.path.lexists(self.aside):
            # left by an earlier snapshot (emptied by its replay and purge) or by something else: taken for
            # this one's, it was packed in place of the queue, which went on unfrozen and unread
            if not self._empty_folder(self.aside):
                raise FreezeError(f"{self.aside} exists already and is not an empty folder (left by an earlier "
                                  f"snapshot?): {self.folder} was not moved; move {self.aside} away, or give --aside")
            if not dry_run:
                os.rmdir(self.aside)
        try:
            st = os.stat(self.folder, follow_symlinks=False)
        except FileNotFoundError:
            raise FreezeError(f"{self.folder} is not a folder") from None
        if not os.path.isdir(self.folder) or os.path.islink(self.folder):
            raise FreezeError(f"{self.folder} is not a folder")
        if st.st_uid != os.geteuid() and os.geteuid() != 0:
            # the folder moved aside must become the agent's alone, which only its owner or root can make it
            raise FreezeError(f"{self.folder} is owned by uid {st.st_uid}: run the agent as root or as that user")
        if dry_run:
            n, size = self._count(self.folder)
            return FreezeReport(f"would move {self.folder} to {self.aside}", n, size)
        # one rename moves the whole queue out of the MTA's sight; an empty folder lets new mail flow
        os.rename(self.folder, self.aside)
        safefs.make_private(self.aside)
        self.folder.mkdir(mode=st.st_mode & 0o7777)
        try:
            os.chown(self.folder, st.st_uid, st.st_gid)
        except PermissionError:
            pass
        fsync_dir(self.folder.parent)
        n, size = self._count()
        return FreezeReport(f"moved {self.folder} to {self.aside}", n, size)

    @staticmethod
    def _empty_folder(path: Path) -> bool:
        """A real folder (not a link) with nothing in it."""
        if os.path.islink(path) or not os.path.isdir(path):
            return False
        with os.scandir(path) as it:
            return next(it, None) is None

    def _files(self, root_fd: int) -> Iterator[tuple[str, os.stat_result]]:
        """(relative name, fstat) of each message file; links, devices and strangers' files are skipped, said."""
        for d, filenames in safefs.walk(root_fd):
            for fn in filenames:
                rel = f"{d}/{fn}" if d else fn
                if fn.startswith(".") or _NOT_MESSAGES.search(rel):
                    continue
                try:
                    st = safefs.stat_file(root_fd, rel)
                except safefs.UnsafePath as e:
                    log.warning("skipped in %s: %s", self.aside, e.detail)
                    continue
                except FileNotFoundError:
                    continue
                yield rel, st

    def _count(self, root: Path | None = None) -> tuple[int, int]:
        n = size = 0
        with safefs.folder(root or self.aside) as fd:
            for _, st in self._files(fd):
                n += 1
                size += st.st_size
        return n, size

    def _message(self, root_fd: int, rel: str) -> QueuedMessage:
        env, body, defects = read_pickup_file(safefs.read_file(root_fd, rel))
        return QueuedMessage(rel, rel, env or Envelope(), sha256_hex(body), len(body), source=self.aside / rel,
                             defects=defects)

    def list(self) -> Iterator[QueuedMessage]:
        with safefs.folder(self.aside) as fd:
            for rel, _ in self._files(fd):
                try:
                    yield self._message(fd, rel)
                except (safefs.UnsafePath, FileNotFoundError):
                    continue

    def locate(self, name: str, queue_id: str | None) -> QueuedMessage | None:
        rel = queue_id or name.removeprefix("messages/")
        try:
            safefs.parts_of(rel)
        except safefs.UnsafePath:
            return None
        with safefs.folder(self.aside) as fd:
            try:
                return self._message(fd, rel)
            except FileNotFoundError:
                return None

    @staticmethod
    def _rel(qm: QueuedMessage) -> str:
        return qm.queue_id or qm.name.removeprefix("messages/")

    def content(self, qm: QueuedMessage) -> bytes:
        with safefs.folder(self.aside) as fd:
            return split_iis_envelope(safefs.read_file(fd, self._rel(qm)))[1]

    def remove(self, qm: QueuedMessage) -> None:
        with safefs.folder(self.aside) as fd:
            safefs.unlink(fd, self._rel(qm))

    def release(self, qm: QueuedMessage, commit: Commit, resumed: Phase | None) -> None:
        """Stage the file beside the pickup folder, then rename it in: the MTA never sees half a message."""
        stem = _SAFE.sub("_", PurePosixPath(qm.name).stem)[:60]
        name = f"{stem}-{qm.sha256[:16]}.eml"
        if not os.path.lexists(self.staging):
            self.staging.mkdir(mode=0o700)
        with safefs.folder(self.staging) as sfd, safefs.folder(self.pickup) as pfd:
            if resumed is not Phase.commit:
                data = self.content(qm)
                eol = b"\r\n" if b"\r\n" in data[:4096] else b"\n"
                safefs.write_new(sfd, name, envelope_lines(qm.envelope, eol) + data)
                commit()
            # after `commit`, a staged file still present means the rename did not happen yet
            try:
                os.replace(name, name, src_dir_fd=sfd, dst_dir_fd=pfd)
            except FileNotFoundError:
                pass
            else:
                os.fsync(pfd)
        self.remove(qm)
