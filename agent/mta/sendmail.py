"""Sendmail: freeze by quarantining what is queued (`sendmail -Q<reason> -qI<id>`: qf becomes hf, queue runs skip
it), read the hf/df pairs, release with `sendmail -qQ -Q -qI<id>` + a foreground run `sendmail -qf -qI<id>`, purge by
removing the pair.

Quarantine (Sendmail 8.13 and later) keeps the message in Sendmail's own queue with its own locking, so a
queue runner that is still running never delivers a frozen message, and a release is Sendmail's own delivery
(its qf records each recipient done: a run repeated after a crash does not deliver twice). `-qI` matches
queue-id substrings: an id that is part of another queued id is refused rather than risk touching both.
Every queue file is listed, opened and unlinked through agent.safefs, relative to its queue directory's
descriptor: whoever can write the queue (Sendmail's user, a compromised submission program) may plant a symlink,
a hard link to another file, a FIFO or a stranger's file there; none is read, released or followed, and a
message whose qf/hf or df is such a thing is left out of the snapshot (said in the log) or refused by the agent.
Sendmail itself may hard-link one df for the envelopes it splits (across queue groups, or past a group's r=
limit): such messages are left out the same way, untouched, for the admin to release by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from agent import safefs
from agent.errors import FreezeError, MtaError
from agent.journal import Phase
from agent.mta.base import Commit, FreezeReport, Queue, QueuedMessage, said, sha256_hex
from pipeline.models import Envelope
from pipeline.readers.sendmail import parse_qf

log = logging.getLogger("spoolsweep.agent")
REASON = "spoolsweep: frozen for incident review"
_ID = re.compile(r"^[0-9A-Za-z]{8,32}$")
_CONTROL = re.compile(r"^(qf|hf)([0-9A-Za-z]{8,32})$")
# `sendmail -bp` names each queue directory: "\t\t/var/spool/mqueue (3 requests)" or "/var/spool/mqueue is empty"
_QDIR = re.compile(r"^\s*(/\S+)(?: is empty| \(\d+ requests?\))")
# What an SMTP mailer (esmtp, relay: F=mDFMuXa8, no P) sends of the headers in a control file: a conditional header
# `H?flags?Name: value` only when it shares a flag with the mailer, and never Return-Path: or Content-Length:, whose
# flags Sendmail checks always (H_ACHECK in its conf.c) against its own `H?P?Return-Path:` (Content-Length has
# none). The sender's Return-Path (a trace field) and Sendmail's `<$g>` are not part of the message as delivered,
# reviewed or replayed.
_SMTP_MAILER_FLAGS = frozenset(b"mDFMuXa8")
_HEADER = re.compile(rb"^H(?:\?([^?\n]*)\?)?([^:\n]*)[^\n]*\n(?:[ \t][^\n]*\n)*", re.M)
_ALWAYS_CHECKED = (b"return-path", b"content-length")


def _smtp_headers(control: bytes) -> bytes:
    """The control file without the header lines an SMTP mailer does not send."""
    def keep(m: re.Match[bytes]) -> bytes:
        flags, name = m.group(1), m.group(2).strip().lower()
        if name in _ALWAYS_CHECKED or (flags and not _SMTP_MAILER_FLAGS & set(flags)):
            return b""
        return m.group(0)

    return _HEADER.sub(keep, control)


@contextlib.contextmanager
def _queue_folder(dir_path: Path) -> Iterator[int | None]:
    """A handle on a queue (sub)directory, not followed if it is a link; None if it is not there."""
    if not dir_path.exists() and not dir_path.is_symlink():
        yield None
        return
    with safefs.folder(dir_path) as fd:
        yield fd


def _open_at(dir_path: Path, name: str) -> bytes | None:
    """A queue file's bytes (a regular file of one link, owned by the queue's owner, no link followed on the way);
    None if it is not there, safefs.UnsafePath if it is anything else."""
    with _queue_folder(dir_path) as fd:
        if fd is None:
            return None
        try:
            return safefs.read_file(fd, name)
        except FileNotFoundError:
            return None


def _unlink_at(dir_path: Path, name: str) -> None:
    # unlink never follows a link: a link planted in a queue file's place is what goes, not its target
    with _queue_folder(dir_path) as fd:
        if fd is not None:
            safefs.unlink(fd, name)


def _wait_unlocked(dir_path: Path, name: str, timeout: float = 300) -> None:
    """Wait until no Sendmail process holds the control file's lock (Sendmail flock()s it while it works on the
    message). A run of ours started before a crash may still be delivering it; a second run now would find it
    locked, skip it and report success, leaving it queued."""
    with _queue_folder(dir_path) as dfd:
        if dfd is None:
            return
        try:
            fd, _ = safefs.open_file(dfd, name)
        except FileNotFoundError:
            return
    try:
        end = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return  # unlocked when closed below
            except BlockingIOError:
                if time.monotonic() > end:
                    raise MtaError(f"{dir_path / name} stayed locked by another sendmail for {timeout:.0f} s") from None
                time.sleep(0.05)
    finally:
        os.close(fd)


def _read_pair(control: bytes, data: bytes, qid: str) -> tuple[bytes, Envelope, list[str]]:
    """RFC 822 bytes, envelope and defects of a control/data pair, read by the pipeline's Sendmail reader so
    digests agree."""
    env, head, defects = parse_qf(_smtp_headers(control))
    env.queue_id, env.queue_name = qid, "mqueue"
    return head + b"\n" + data, env, defects


class SendmailQueue(Queue):
    name = "sendmail"
    releases_natively = True

    def __init__(self, sendmail: str = "sendmail", config: Path | None = None, command: list[str] | None = None,
                 queue_dirs: list[Path] | None = None) -> None:
        # `command` replaces `sendmail [-C config]` (e.g. a wrapper that runs it in a namespace)
        self.command = command or [sendmail, *(["-C", str(config)] if config else [])]
        self.queue_dirs = queue_dirs or self._queue_dirs()
        if not self.queue_dirs:
            raise MtaError(f"{self.command[0]} -bp named no queue directory")
        self._held: set[str] | None = None

    def _run(self, *args: str) -> bytes:
        try:
            cp = subprocess.run([*self.command, *args], capture_output=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise MtaError(f"{self.command[0]}: {e}") from None
        if cp.returncode != 0:
            raise MtaError(f"sendmail {' '.join(args[:3])}: {said(cp.stderr)}")
        return cp.stdout

    def _queue_dirs(self) -> list[Path]:
        """Every queue directory of the running configuration (one per queue group), as `sendmail -bp` lists them."""
        dirs: list[Path] = []
        for flag in ((), ("-qQ",)):
            for line in self._run(*flag, "-bp").decode("utf-8", "replace").splitlines():
                if (m := _QDIR.match(line)) and Path(m.group(1)) not in dirs:
                    dirs.append(Path(m.group(1)))
        return dirs

    @staticmethod
    def _sub(qdir: Path, kind: str) -> Path:
        # a queue directory may keep control and data files in qf/ and df/ subdirectories
        sub = qdir / ("qf" if kind in ("qf", "hf") else "df")
        return sub if sub.is_dir() and not sub.is_symlink() else qdir

    def _controls(self, kind: str) -> Iterator[tuple[Path, str]]:
        """(queue directory, id) of every control file of this kind (qf live, hf quarantined), in id order."""
        for qdir in self.queue_dirs:
            with _queue_folder(self._sub(qdir, kind)) as fd:
                if fd is None:
                    continue
                names = os.listdir(fd)
            for n in sorted(names):
                if (m := _CONTROL.match(n)) and m.group(1) == kind:
                    yield qdir, m.group(2)

    def _all_ids(self) -> set[str]:
        return {qid for kind in ("qf", "hf") for _, qid in self._controls(kind)}

    def _quarantined(self) -> set[str]:
        """The quarantined ids, read once (a release only ever shrinks the set)."""
        if self._held is None:
            self._held = {qid for _, qid in self._controls("hf")}
        return self._held

    @staticmethod
    def _unique(ids: list[str], among: set[str]) -> list[str]:
        """`-qI` matches substrings: refuse ids that are part of another id it would reach (ids of one length
        cannot be; a longer pid makes a longer id)."""
        lengths = {len(i) for i in ids}
        longer = [o for o in among if len(o) > min(lengths, default=0)]
        clash = [i for i in ids if any(len(o) > len(i) and i in o for o in longer)]
        if clash:
            raise MtaError(f"queue id {clash[0]} is part of another queued id; `sendmail -qI` would match both")
        return ids

    def freeze(self, dry_run: bool = False, resume: bool = False) -> FreezeReport:
        live = [qid for _, qid in self._controls("qf")]
        if dry_run:
            return FreezeReport(f"would quarantine {len(live)} messages (sendmail -Q -qI)", len(live), 0)
        every = self._all_ids()
        for i in range(0, len(live), 100):
            chunk = self._unique(live[i:i + 100], every)
            self._run(f"-Q{REASON}", *(f"-qI{qid}" for qid in chunk))
        notes = []
        still = [qid for _, qid in self._controls("qf") if qid in set(live)]
        if still:
            notes.append(f"{len(still)} messages were not quarantined (being delivered just now)")
        msgs = list(self.list())
        if live and not msgs:
            raise FreezeError("sendmail -Q left nothing quarantined")
        return FreezeReport("quarantined the queue (sendmail -Q); new mail flows", len(msgs),
                            sum(m.size for m in msgs), notes)

    def _pair(self, qid: str, kinds: tuple[str, ...] = ("hf", "qf")) -> tuple[Path, str, bytes, bytes] | None:
        """(queue directory, control kind, control bytes, data bytes) of a message, or None if it is not whole."""
        if not _ID.match(qid):
            return None
        for qdir in self.queue_dirs:
            for kind in kinds:
                control = _open_at(self._sub(qdir, kind), f"{kind}{qid}")
                if control is None:
                    continue
                data = _open_at(self._sub(qdir, "df"), f"df{qid}")
                if data is None:
                    return None
                return qdir, kind, control, data
        return None

    def _message(self, qid: str, kinds: tuple[str, ...] = ("hf", "qf")) -> QueuedMessage | None:
        pair = self._pair(qid, kinds)
        if pair is None:
            return None
        qdir, kind, control, data = pair
        body, env, defects = _read_pair(control, data, qid)
        return QueuedMessage(qid, qid, env, sha256_hex(body), len(body), source=self._sub(qdir, kind) / f"{kind}{qid}",
                             defects=defects)

    def list(self) -> Iterator[QueuedMessage]:
        for _, qid in self._controls("hf"):
            try:
                qm = self._message(qid, ("hf",))
            except safefs.UnsafePath as e:
                log.warning("skipped in the Sendmail queue: %s", e.detail)
                continue
            if qm is not None:
                yield qm

    def locate(self, name: str, queue_id: str | None) -> QueuedMessage | None:
        return self._message(queue_id or name.rsplit("/", 1)[-1])

    @staticmethod
    def _qid(qm: QueuedMessage) -> str:
        """The queue id of a message; a resumed action's stand-in (the message already gone) is named by its path
        in the snapshot. MtaError for anything that is not a queue id (it would name another file)."""
        qid = qm.queue_id or qm.name.rsplit("/", 1)[-1]
        if not _ID.match(qid):
            raise MtaError(f"{qid!r} is not a Sendmail queue id")
        return qid

    def content(self, qm: QueuedMessage) -> bytes:
        qid = self._qid(qm)
        pair = self._pair(qid)
        if pair is None:
            raise MtaError(f"{qid} is gone from the queue")
        return _read_pair(pair[2], pair[3], qid)[0]

    def remove(self, qm: QueuedMessage) -> None:
        # the control file first: without it Sendmail no longer sees the message; then its data file
        qid = self._qid(qm)
        for qdir in self.queue_dirs:
            for kind in ("hf", "qf", "xf"):
                _unlink_at(self._sub(qdir, kind), f"{kind}{qid}")
            _unlink_at(self._sub(qdir, "df"), f"df{qid}")

    def _settled(self, qid: str, kind: str) -> bool:
        """Whether the message has a control file of this kind, once no Sendmail process is working on it."""
        for qdir in self.queue_dirs:
            _wait_unlocked(self._sub(qdir, kind), f"{kind}{qid}")
        return self._pair(qid, (kind,)) is not None

    def release(self, qm: QueuedMessage, commit: Commit, resumed: Phase | None) -> None:
        qid = self._qid(qm)
        if self._settled(qid, "hf"):
            self._run("-qQ", "-Q", *(f"-qI{i}" for i in self._unique([qid], self._quarantined())))
        commit()
        # a foreground queue run for this id: Sendmail delivers it (or defers it, then its own runner retries);
        # MinQueueAge=0, or a run of ours cut short before a crash (an attempt, to Sendmail) would make it wait
        for _ in range(3):
            if not self._settled(qid, "qf"):
                return  # delivered (or bounced): gone from the queue
            started = int(time.time())
            # no quarantined message is reached by this run; a live one whose id holds ours is delivered as its
            # own queue runner would
            self._run("-qf", "-OMinQueueAge=0", f"-qI{qid}")
            if self._last_attempt(qid) >= started:
                return  # tried now and deferred: Sendmail's own queue runner retries it
            time.sleep(0.2)  # not tried at all (locked by a process of Sendmail's own): ask again
        raise MtaError(f"sendmail -qf -qI{qid} did not try to deliver it; it stays in the queue, released")

    def _last_attempt(self, qid: str) -> int:
        """The control file's K line (time of the last delivery attempt), 0 if none or gone."""
        pair = self._pair(qid, ("qf",))
        if pair is None:
            return 1 << 62  # gone: delivered
        for line in pair[2].split(b"\n"):
            if line.startswith(b"K") and line[1:].strip().isdigit():
                return int(line[1:])
        return 0
