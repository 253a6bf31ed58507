"""Pickup folders (IIS SMTP, Exchange Replay): freeze by moving the folder aside (Out -> Out.old), replay by
writing each approved message, its envelope as `X-Sender:`/`X-Receiver:` lines on top, into the folder
the MTA watches."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from agent.errors import FreezeError
from agent.mta.base import Commit, FreezeReport, Queue, QueuedMessage, fsync_dir, sha256_hex
from pipeline.models import Envelope
from pipeline.readers.eml import _NOT_MESSAGES, split_iis_envelope

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


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

    def freeze(self, dry_run: bool = False) -> FreezeReport:
        if self.aside.exists():
            n, size = self._count(self.aside)
            return FreezeReport(f"{self.aside} (already moved aside)", n, size)
        if not self.folder.is_dir():
            raise FreezeError(f"{self.folder} is not a folder")
        n, size = self._count(self.folder)
        if dry_run:
            return FreezeReport(f"would move {self.folder} to {self.aside}", n, size)
        mode = self.folder.stat().st_mode & 0o7777
        st = self.folder.stat()
        # one rename moves the whole queue out of the MTA's sight; an empty folder lets new mail flow
        os.rename(self.folder, self.aside)
        self.folder.mkdir(mode=mode)
        try:
            os.chown(self.folder, st.st_uid, st.st_gid)
        except PermissionError:
            pass
        fsync_dir(self.folder.parent)
        return FreezeReport(f"moved {self.folder} to {self.aside}", n, size)

    def _files(self, root: Path) -> Iterator[Path]:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for fn in sorted(filenames):
                p = Path(dirpath) / fn
                rel = p.relative_to(root).as_posix()
                if fn.startswith(".") or _NOT_MESSAGES.search(rel) or not p.is_file() or p.is_symlink():
                    continue
                yield p

    def _count(self, root: Path) -> tuple[int, int]:
        n = size = 0
        for p in self._files(root):
            n += 1
            size += p.stat().st_size
        return n, size

    def _message(self, path: Path) -> QueuedMessage:
        env, body = split_iis_envelope(path.read_bytes())
        rel = path.relative_to(self.aside).as_posix()
        return QueuedMessage(rel, rel, env or Envelope(), sha256_hex(body), len(body), source=path)

    def list(self) -> Iterator[QueuedMessage]:
        for p in self._files(self.aside):
            yield self._message(p)

    def locate(self, name: str, queue_id: str | None) -> QueuedMessage | None:
        rel = queue_id or name.removeprefix("messages/")
        parts = PurePosixPath(rel).parts
        if not parts or ".." in parts or rel.startswith("/"):
            return None
        path = self.aside.joinpath(*parts)
        if not path.is_file():
            return None
        return self._message(path)

    def content(self, qm: QueuedMessage) -> bytes:
        assert qm.source is not None
        return split_iis_envelope(qm.source.read_bytes())[1]

    def remove(self, qm: QueuedMessage) -> None:
        if qm.source is not None:
            qm.source.unlink(missing_ok=True)

    def release(self, qm: QueuedMessage, commit: Commit, resumed: str | None) -> None:
        """Stage the file beside the pickup folder, then rename it in: the MTA never sees half a message."""
        stem = _SAFE.sub("_", PurePosixPath(qm.name).stem)[:60]
        staged = self.staging / f"{stem}-{qm.sha256[:16]}.eml"
        final = self.pickup / staged.name
        if resumed != "commit":
            data = self.content(qm)
            eol = b"\r\n" if b"\r\n" in data[:4096] else b"\n"
            self.staging.mkdir(parents=True, exist_ok=True)
            with open(staged, "wb") as fh:
                fh.write(envelope_lines(qm.envelope, eol) + data)
                fh.flush()
                os.fsync(fh.fileno())
            commit()
        # after `commit`, a staged file still present means the rename did not happen yet
        if staged.exists():
            os.replace(staged, final)
            fsync_dir(self.pickup)
        self.remove(qm)
