"""`agent snapshot` as steps journalled one by one: freeze, pack, upload, confirm; resumable, never twice."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import FreezeError, SnapshotExists, UploadError
from agent.journal import Journal
from agent.mta.base import FreezeReport, Queue
from agent.snapshot import Progress, file_sha256, pack
from agent.upload import Destination, existing, to_dir, to_s3

NAME = "snapshot.tar.zst"
ORDER = ("freezing", "frozen", "packed", "uploaded")


@dataclass
class Summary:
    incident: str
    host: str
    mta: str
    froze: str
    messages: int = 0
    bytes: int = 0
    archive: str | None = None
    archive_sha256: str | None = None
    destination: str | None = None
    resumed_from: str | None = None
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)


def _reached(row: dict | None, state: str) -> bool:
    return row is not None and ORDER.index(row["state"]) >= ORDER.index(state)


def take(queue: Queue, mta: str, dest: Destination, journal: Journal, state_dir: Path, dry_run: bool = False,
         keep_local: bool = False, progress: Progress | None = None,
         say: Callable[[str], None] = lambda s: None, s3_client: Any = None, site: dict | None = None) -> Summary:
    inc, host = dest.incident, dest.host
    row = journal.snapshot(inc, host)
    if row is not None and row["state"] == "uploaded":
        raise SnapshotExists(f"incident {inc} already has this host's snapshot ({row['destination']}, "
                             f"sha256 {row['archive_sha256']}, taken {row['updated_at']})")
    if row is None:
        there = existing(dest, s3_client)
        if there:
            raise SnapshotExists(f"{dest} already holds {', '.join(there[:3])}")
    summary = Summary(inc, host, mta, froze="", resumed_from=row["state"] if row else None, dry_run=dry_run)

    if dry_run:
        would = queue.freeze(dry_run=True, resume=row is not None)
        summary.froze, summary.messages, summary.bytes = would.what, would.messages, would.bytes
        summary.destination = str(dest)
        return summary

    # 1. freeze (only once: freezing again later would also stop mail that arrived since)
    if not _reached(row, "frozen"):
        journal.set_snapshot(inc, host, state="freezing", mta=mta, destination=str(dest))
        try:
            fr: FreezeReport = queue.freeze(resume=row is not None)  # a row: this snapshot's freeze was begun
        except FreezeError:
            if row is None:  # refused (nothing moved): run again, it is a new freeze, not one cut short
                journal.forget_snapshot(inc, host)
            raise
        journal.set_snapshot(inc, host, state="frozen", messages=fr.messages, bytes=fr.bytes)
        summary.froze = fr.what
        summary.notes += fr.notes
        say(f"froze {fr.messages:,} messages: {fr.what}")
    else:
        summary.froze = f"already frozen ({mta})"
    row = journal.snapshot(inc, host)

    # 2. pack (the local copy is kept until the upload's checksum is confirmed)
    archive = state_dir / "snapshots" / inc / f"{host}-{NAME}"
    if row is not None and _reached(row, "packed") and archive.exists() and \
            file_sha256(archive) == row["archive_sha256"]:
        sha, n, size = row["archive_sha256"], row["messages"], row["bytes"]
    else:
        frozen = int(row["messages"] or 0) if row is not None else 0
        packed = pack(queue, archive, host, inc, mta, progress, site=site)
        sha, n, size = packed.sha256, packed.messages, packed.bytes
        journal.set_snapshot(inc, host, state="packed", archive=str(archive), archive_sha256=sha,
                             messages=n, bytes=size)
        say(f"packed {n:,} messages into {archive} (sha256 {sha})")
        if packed.damaged:
            summary.notes.append(f"{packed.damaged:,} of the {n:,} messages packed come from queue files the reader "
                                 "found damaged: their defects go with them, and triage holds them for review")
        if n < frozen:
            # a message released or deleted since the freeze, or a file the queue's reader refused (a link
            # planted in the queue: the log names it), is not in the snapshot: said here, where it is read
            summary.notes.append(f"{frozen - n:,} of the {frozen:,} messages frozen are not in the snapshot: "
                                 "released or deleted since, or refused by the queue's reader (the log names "
                                 "those); triage never sees them")
    summary.messages, summary.bytes, summary.archive, summary.archive_sha256 = n, size, str(archive), sha

    # 3. upload and confirm
    if dest.kind == "dir":
        try:
            where = to_dir(archive, dest, NAME, sha)
        except OSError as e:  # a --to that cannot be made or written: said, the snapshot and journal kept
            raise UploadError(f"{e.filename or dest.root}: {e.strerror or e}; the queue stays frozen, the copy is "
                              f"{archive}: run the same command with a --to that can be written to go on") from None
    else:
        state = json.loads((journal.snapshot(inc, host) or {}).get("upload_state") or "{}")
        where = to_s3(archive, dest, NAME, sha, state,
                      lambda st: journal.set_snapshot(inc, host, upload_state=json.dumps(st)), progress, s3_client)
    journal.set_snapshot(inc, host, state="uploaded", destination=where)
    summary.destination = where
    if not keep_local:
        archive.unlink(missing_ok=True)
        summary.archive = None
    return summary
