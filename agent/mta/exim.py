"""Exim: freeze with `exim -Mf`, read the spool's -H/-D files, release with `exim -Mt` + `exim -M`, purge with
`exim -Mrm`."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from agent.errors import MtaError
from agent.journal import Phase
from agent.mta.base import Commit, FreezeReport, Queue, QueuedMessage, said, sha256_hex
from pipeline.models import Envelope
from pipeline.readers.exim import read_pair

_ID = re.compile(r"^[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}\Z")
_LIST = re.compile(r"^\s*\S+\s+\S+\s+([0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4})\s.*?(\*\*\* frozen \*\*\*)?$")


def _read_pair(h: bytes, d: bytes, qid: str) -> tuple[bytes, Envelope, list[str]]:
    """RFC 822 bytes, envelope and defects of a -H/-D pair, read by the pipeline's Exim reader (the bytes and
    defects it gives reading the spool itself)."""
    env, data, defects = read_pair(qid, h, d)
    return data, env, defects


class EximQueue(Queue):
    name = "exim"
    releases_natively = True

    def __init__(self, exim: str = "exim", config: Path | None = None, command: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        # `command` replaces `exim [-C config]` (e.g. a wrapper that runs Exim in a namespace)
        self.command = command or [exim, *(["-C", str(config)] if config else [])]
        self.env = env
        self.spool = Path(self._run("-bP", "spool_directory").decode().split("=", 1)[-1].strip())

    def _run(self, *args: str, done: tuple[str, ...] = ()) -> bytes:
        """Run exim; `done`: the replies that mean the work was already done (exim exits 1 for them), so a step
        repeated after a crash is not an error."""
        try:
            cp = subprocess.run([*self.command, *args], capture_output=True, timeout=300, check=False, env=self.env)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise MtaError(f"{self.command[0]}: {e}") from None
        lines = [ln for ln in cp.stdout.decode("utf-8", "replace").splitlines() if ln.strip()]
        if cp.returncode != 0 and done and lines and all(any(d in ln for d in done) for ln in lines):
            return cp.stdout
        if cp.returncode != 0:
            raise MtaError(f"exim {' '.join(args[:3])}: {said(cp.stderr)}")
        return cp.stdout

    def _queue(self) -> list[tuple[str, bool]]:
        out = []
        for line in self._run("-bp").decode("utf-8", "replace").splitlines():
            if m := _LIST.match(line):
                out.append((m.group(1), m.group(2) is not None))
        return out

    def freeze(self, dry_run: bool = False, resume: bool = False) -> FreezeReport:
        live = [qid for qid, frozen in self._queue() if not frozen]
        if dry_run:
            return FreezeReport(f"would freeze {len(live)} messages (exim -Mf)", len(live), 0)
        for i in range(0, len(live), 200):
            # frozen or gone meanwhile (by the admin, a repeated freeze, a delivery) is what we wanted
            self._run("-Mf", *live[i:i + 200], done=("is now frozen", "is already frozen", "does not exist"))
        msgs = list(self.list())
        return FreezeReport("froze the queue (exim -Mf); new mail flows", len(msgs), sum(m.size for m in msgs))

    def _files(self, qid: str) -> tuple[Path, Path] | None:
        for base in (self.spool / "input", *(self.spool / "input").glob("?")):
            h, d = base / f"{qid}-H", base / f"{qid}-D"
            if h.is_file() and d.is_file():
                return h, d
        return None

    def _message(self, qid: str) -> QueuedMessage | None:
        files = self._files(qid) if _ID.match(qid) else None
        if files is None:
            return None
        data, env, defects = _read_pair(files[0].read_bytes(), files[1].read_bytes(), qid)
        return QueuedMessage(qid, qid, env, sha256_hex(data), len(data), source=files[0], defects=defects)

    def list(self) -> Iterator[QueuedMessage]:
        for qid, frozen in self._queue():
            if frozen and (qm := self._message(qid)) is not None:
                yield qm

    def locate(self, name: str, queue_id: str | None) -> QueuedMessage | None:
        return self._message(queue_id or name.rsplit("/", 1)[-1])

    def content(self, qm: QueuedMessage) -> bytes:
        files = self._files(qm.name)
        if files is None:
            raise MtaError(f"{qm.name} is gone from the spool")
        return _read_pair(files[0].read_bytes(), files[1].read_bytes(), qm.name)[0]

    def remove(self, qm: QueuedMessage) -> None:
        if self._files(qm.name) is not None:
            self._run("-Mrm", qm.name)

    def release(self, qm: QueuedMessage, commit: Commit, resumed: Phase | None) -> None:
        if qm.source is not None and self._files(qm.name) is not None:
            self._run("-Mt", qm.name, done=("is not frozen",))  # thawed before a crash: go on
            commit()
            # an exim of ours from before a crash may still hold the message (thawing or delivering it): exim -M then
            # says it is locked and does nothing, so wait for it and ask again until the message is delivered or
            # deferred (its spool files gone, or not locked)
            end = time.monotonic() + 300
            while b"locked" in self._run("-M", qm.name, done=("locked",)) and self._files(qm.name) is not None:
                if time.monotonic() > end:
                    raise MtaError(f"{qm.name} stayed locked by another exim process for 300 s")
                time.sleep(0.1)
