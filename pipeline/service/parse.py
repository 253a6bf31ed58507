"""Parse a snapshot or shard under incoming/<incident>/<host>/ into parsed/<incident>/<shard>.parquet.

A whole snapshot larger than the split size is not parsed here: it is cut into part files beside it
(incoming/.../<stem>.part-0001-of-0050.tar.zst), whose own events parse them in parallel. The whole
file stays as evidence and never becomes a parsed shard itself.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline import queues
from pipeline.archive import ArchiveReport
from pipeline.columnar import shard_bytes
from pipeline.errors import PoisonEvent, SnapshotError
from pipeline.models import ParsedRecord
from pipeline.policy import SitePolicy
from pipeline.readers import read_snapshot
from pipeline.service import StepResult
from pipeline.shards import ShardMeta, shard_of, split_snapshot
from pipeline.sitepolicy import site_of
from pipeline.store import Store
from pipeline.triage import parse_all


@dataclass(frozen=True)
class ParseOptions:
    workers: int = 1  # parser processes; 1 in Lambda (no /dev/shm)
    split_bytes: int = 0  # split a whole snapshot bigger than this; 0 never
    shard_size: int = 20000  # messages per part when splitting


@dataclass(frozen=True)
class Incoming:
    """An object under incoming/: incoming/<incident>/<host>/<filename>."""

    key: str
    size: int | None = None  # as the event said, if it did

    @property
    def parts(self) -> tuple[str, str, str]:
        try:
            incident, host, filename = queues.parts_of(self.key, queues.INCOMING, 3)
        except ValueError as e:
            raise PoisonEvent(str(e)) from None
        return incident, host, filename


def local_copy(store: Store, key: str, tmp: Path) -> Path:
    """The object as a local file: the store's own file, a streamed download, or a copy."""
    root = getattr(store, "root", None)
    if isinstance(root, Path) and (root / key).is_file():
        return root / key
    path = tmp / key.rsplit("/", 1)[-1]
    download = getattr(store, "download", None)
    if download is not None:
        download(key, path)  # S3: multipart, streamed to /tmp, never all in memory
    else:
        path.write_bytes(store.get(key))
    return path


def split_object(store: Store, obj: Incoming, policy: SitePolicy, shard_size: int) -> StepResult:
    """Cut a whole snapshot into part files under incoming/; re-running rewrites nothing."""
    incident, host, filename = obj.parts
    with tempfile.TemporaryDirectory(prefix="spoolsweep-split-") as tmp:
        parts = split_snapshot(local_copy(store, obj.key, Path(tmp)), Path(tmp) / "parts", host, shard_size,
                               policy.limits)
        written = 0
        for p in parts:
            pkey = queues.incoming_key(incident, host, p.name)
            if not store.exists(pkey):
                store.put(pkey, p.read_bytes())
                written += 1
    return StepResult(f"split into {len(parts)} part(s) ({written} new) beside {filename}")


def parse_object(store: Store, obj: Incoming, policy: SitePolicy, options: ParseOptions = ParseOptions()) -> StepResult:
    """Parse one snapshot object into its shard of records, as columns (or split it); a second run finds it done."""
    incident, host, filename = obj.parts
    if filename.startswith("."):
        return StepResult("skipped: hidden file", done=False)
    try:
        name = shard_of(host, filename)
    except ValueError as e:
        raise PoisonEvent(str(e)) from None
    if options.split_bytes and name.parts == 1 and obj.size is not None and obj.size > options.split_bytes:
        return split_object(store, obj, policy, options.shard_size)
    out = queues.parsed_key(incident, name.shard)
    for done in (out, queues.legacy_parsed_key(incident, name.shard)):
        if store.exists(done):
            return StepResult(f"already parsed: {done}", done=False)
    where = {"incident": incident, "host": host, "source": obj.key, "shard": name.shard, "part": name.part,
             "parts": name.parts}
    report = ArchiveReport()
    records: list[ParsedRecord]
    with tempfile.TemporaryDirectory(prefix="spoolsweep-parse-") as tmp:
        path = local_copy(store, obj.key, Path(tmp))
        try:
            fmt, found, report = read_snapshot(path, policy.limits, report=report)
            records = parse_all(found, policy, workers=options.workers)
        except SnapshotError as e:
            # the snapshot stays in incoming/ as evidence; triage goes on and names the loss
            fmt, records = "unreadable", []
            report.defects.append(f"{obj.key}: {e}")
            store.put(queues.corrupt_key(incident, name.shard), json.dumps({**where, "error": str(e)}).encode())
    meta = ShardMeta(incident=incident, host=host, source=obj.key, shard=name.shard, part=name.part,
                     parts=name.parts, format=fmt, sha256=report.sha256, members_read=report.members,
                     messages=len(records), skipped=report.skipped, defects=report.defects,
                     # the MTA's own configuration the agent recorded: triage derives the policy from it
                     site=site_of(report.meta))
    store.put(queues.shard_meta_key(incident, name.shard), meta.model_dump_json().encode())
    # written last: its presence (and its S3 event) means the shard is complete
    store.put(out, shard_bytes(records))
    return StepResult(f"{len(records)} messages -> {out}", len(records))
