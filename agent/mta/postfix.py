"""Postfix: freeze with `postsuper -h`, read the hold queue, release with `postsuper -H` + `postqueue -f`, purge
with `postsuper -d`.

A message's digest is of its RFC 822 bytes as Postfix would deliver them: the content records of the
queue file, read by pipeline/readers/postfix.py when it is installed, else by `postcat -bh` (the two
agree). Queue ids are reused by Postfix once a message is gone, so every action first checks that
the id still holds the reviewed digest.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from agent import safefs
from agent.errors import FreezeError, MtaError
from agent.journal import Phase
from agent.mta.base import Commit, FreezeReport, Queue, QueuedMessage, said, sha256_hex
from pipeline.models import Envelope

SBIN = Path("/usr/sbin")
log = logging.getLogger("spoolsweep.agent")
_QID = re.compile(r"^[0-9A-Za-z]{5,40}\Z")  # \Z: a trailing newline would add a line to postsuper's input


def _native():  # the native reader's parse_queue_file, or None when it is not installed
    try:
        from pipeline.readers.postfix import parse_queue_file
    except ImportError:
        return None
    return parse_queue_file


class PostfixQueue(Queue):
    name = "postfix"
    releases_natively = True

    def __init__(self, config_dir: str | Path | None = None, sbin: Path = SBIN, flush_every: int = 50) -> None:
        self.config_dir = Path(config_dir) if config_dir else None
        self.sbin = sbin
        self.flush_every = flush_every
        self._released = 0
        self._parse = _native()
        self.queue_dir = Path(self._run("postconf", "-h", "queue_directory").decode().strip())

    def _run(self, tool: str, *args: str, input: bytes | None = None, check: bool = True) -> bytes:
        argv = [str(self.sbin / tool)]
        if self.config_dir is not None:
            argv += ["-c", str(self.config_dir)]
        try:
            cp = subprocess.run([*argv, *args], input=input, capture_output=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise MtaError(f"{tool}: {e}") from None
        if check and cp.returncode != 0:
            raise MtaError(f"{tool} {' '.join(args)}: {said(cp.stderr)}")
        return cp.stdout

    def queued(self) -> list[dict]:
        """`postqueue -j`: one dict per queued message, every queue."""
        return [json.loads(ln) for ln in self._run("postqueue", "-j").decode().splitlines() if ln.strip()]

    def freeze(self, dry_run: bool = False, resume: bool = False) -> FreezeReport:
        live = [m for m in self.queued() if m.get("queue_name") != "hold"]
        size = sum(int(m.get("message_size", 0)) for m in live)
        if dry_run:
            return FreezeReport(f"would put {len(live)} messages of {self.queue_dir} on hold (postsuper -h ALL)",
                                len(live), size)
        self._run("postsuper", "-h", "ALL")
        still = [m for m in self.queued() if m.get("queue_name") != "hold"]
        notes = []
        if still:
            # postsuper holds active mail once the queue manager lets go of it; a moment later it is held
            self._run("postsuper", "-h", "ALL")
            still = [m for m in self.queued() if m.get("queue_name") != "hold"]
            if still:
                notes.append(f"{len(still)} messages were not put on hold (being delivered or just arrived)")
        held = list(self._hold_files())
        if not held and live:
            raise FreezeError("postsuper -h ALL left the hold queue empty")
        total = sum(p.stat().st_size for p in held)
        return FreezeReport(f"put the queue of {self.queue_dir} on hold (postsuper -h ALL); new mail flows",
                            len(held), total, notes)

    def _hold_files(self) -> Iterator[Path]:
        root = self.queue_dir / "hold"
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for fn in sorted(filenames):
                if _QID.match(fn):
                    yield Path(dirpath) / fn

    def _path(self, qid: str) -> Path | None:
        if not _QID.match(qid):
            return None
        flat = self.queue_dir / "hold" / qid
        if flat.is_file():
            return flat
        for p in (self.queue_dir / "hold").rglob(qid):
            return p
        return None

    def _read(self, path: Path, envelope: bool = True) -> tuple[bytes, Envelope, list[str]]:
        """The message's bytes, envelope, and what the reader found wrong with its queue file (postcat reads
        a file it can read, and says nothing of one it cannot: it fails)."""
        qid = path.name
        if self._parse is not None:
            qf = self._parse(self._bytes(path), "hold")
            env = qf.envelope
            env.queue_name, env.queue_id = "hold", qid
            return qf.content, env, list(qf.defects)
        data = self._run("postcat", "-bh", "-q", qid)
        fields = self._envelope(qid) if envelope else {}
        return data, Envelope(queue_name="hold", queue_id=qid, **fields), []

    def _bytes(self, path: Path) -> bytes:
        """A hold file's bytes, opened from the hold folder without following a link: a symlink planted there
        by the postfix user must not put another file's bytes into the snapshot."""
        root = self.queue_dir / "hold"
        with safefs.folder(root) as fd:
            return safefs.read_file(fd, path.relative_to(root).as_posix())

    def full_envelope(self, qm: QueuedMessage) -> Envelope:
        if qm.envelope.rcpt_to or qm.queue_id is None:
            return qm.envelope
        return Envelope(queue_name="hold", queue_id=qm.queue_id, **self._envelope(qm.queue_id))

    def _envelope(self, qid: str) -> dict:
        env: dict = {"rcpt_to": []}
        for line in self._run("postcat", "-e", "-q", qid).decode("utf-8", "replace").splitlines():
            key, _, value = line.partition(": ")
            if key == "sender":
                env["mail_from"] = value
            elif key == "recipient":
                env["rcpt_to"].append(value)
            elif key == "named_attribute" and "=" in value:
                k, _, v = value.partition("=")
                field = {"client_address": "client_address", "client_name": "client_name", "helo_name": "helo",
                         "protocol_name": "protocol", "sasl_method": "sasl_method",
                         "sasl_username": "sasl_username"}.get(k)
                if field:
                    env[field] = v
        return env

    def _message(self, path: Path, envelope: bool = True) -> QueuedMessage:
        data, env, defects = self._read(path, envelope)
        return QueuedMessage(path.name, path.name, env, sha256_hex(data), len(data), source=path, defects=defects)

    def list(self) -> Iterator[QueuedMessage]:
        for p in self._hold_files():
            try:
                yield self._message(p)
            except FileNotFoundError:
                continue  # released or deleted by the admin meanwhile
            except MtaError as e:  # postcat fails on a file gone meanwhile, and on one it cannot read
                if p.exists():
                    log.warning("skipped in the hold queue: %s: %s", p.name, e)
            except safefs.UnsafePath as e:
                log.warning("skipped in the hold queue: %s", e.detail)

    def locate(self, name: str, queue_id: str | None) -> QueuedMessage | None:
        path = self._path(queue_id or os.path.basename(name))
        if path is None:
            return None
        try:
            return self._message(path, envelope=False)
        except (FileNotFoundError, MtaError):
            return None

    def content(self, qm: QueuedMessage) -> bytes:
        assert qm.source is not None
        return self._read(qm.source, envelope=False)[0]

    def remove(self, qm: QueuedMessage) -> None:
        if qm.queue_id and self._path(qm.queue_id) is not None:
            self._run("postsuper", "-d", qm.queue_id, "hold")

    def release(self, qm: QueuedMessage, commit: Commit, resumed: Phase | None) -> None:
        # postsuper -H is its own idempotence: a message no longer on hold is not touched again
        if qm.queue_id and qm.source is not None and self._path(qm.queue_id) is not None:
            self._run("postsuper", "-H", qm.queue_id)
            self._released += 1
            if self._released % self.flush_every == 0:
                self.flush()

    def release_many(self, qms: Sequence[QueuedMessage]) -> None:
        """One `postsuper -H -` for many ids (read from standard input); ids no longer on hold are skipped."""
        ids = [qm.queue_id for qm in qms if qm.queue_id and _QID.match(qm.queue_id)]
        if ids:
            self._run("postsuper", "-H", "-", input=("\n".join(ids) + "\n").encode())
            self._released += len(ids)
            self.flush()

    def flush(self) -> None:
        """Released mail waits in deferred/ for the next queue run; ask for it now."""
        if self._released:
            self._run("postqueue", "-f", check=False)
