"""parse_snapshot: incoming/<incident>/<host>/<file> (snapshot or shard) -> parsed/<incident>/<shard>.jsonl.zst.

A whole snapshot larger than SPOOLSWEEP_SPLIT_BYTES is not parsed here: it is cut into part files
beside it (incoming/.../<stem>.part-0001-of-0050.tar.zst), whose own events parse them in parallel
Lambda invocations. The whole file stays as evidence and never becomes a parsed shard itself.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import cache
from pathlib import Path

import zstandard
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from functions.common import Powertools, key_parts
from functions.errors import PoisonEvent
from functions.events import ObjectRef
from functions.root import build_store, load_site_policy
from functions.settings import ParseSettings, load
from functions.shards import shard_of, split_snapshot
from pipeline import queues
from pipeline.archive import ArchiveReport
from pipeline.errors import SnapshotError
from pipeline.policy import SitePolicy
from pipeline.readers import read_snapshot
from pipeline.sitepolicy import site_of
from pipeline.store import Store
from pipeline.triage import parse_all

pt = Powertools("parse")


def shard_meta_key(incident: str, shard: str) -> str:
    """What triage needs besides the records: format, digests, defects (written before the records)."""
    return f"{queues.STATE}/{queues.check_name('incident', incident)}/shards/{queues.check_name('shard', shard)}.json"


def _local(store: Store, key: str, tmp: Path) -> Path:
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


def split_object(store: Store, key: str, policy: SitePolicy, shard_size: int) -> str:
    """Cut a whole snapshot into part files under incoming/; re-running rewrites nothing."""
    incident, host, filename = key.split("/")[1:]
    with tempfile.TemporaryDirectory(prefix="spoolsweep-split-") as tmp:
        parts = split_snapshot(_local(store, key, Path(tmp)), Path(tmp) / "parts", host, shard_size, policy.limits)
        written = 0
        for p in parts:
            pkey = queues.incoming_key(incident, host, p.name)
            if not store.exists(pkey):
                store.put(pkey, p.read_bytes())
                written += 1
    return f"split into {len(parts)} part(s) ({written} new) beside {filename}"


def parse_object(store: Store, key: str, policy: SitePolicy, workers: int = 1, split_bytes: int = 0,
                 shard_size: int = 20000, size: int | None = None) -> str:
    """Parse one snapshot object into its shard of ParsedRecord lines (or split it); a second run finds it done."""
    incident, host, filename = key.split("/")[1:]
    if filename.startswith("."):
        return "skipped: hidden file"
    try:
        name = shard_of(host, filename)
    except ValueError as e:
        raise PoisonEvent(str(e)) from None
    if split_bytes and name.parts == 1 and size is not None and size > split_bytes:
        return split_object(store, key, policy, shard_size)
    out = queues.parsed_key(incident, name.shard)
    if store.exists(out):
        return f"already parsed: {out}"
    meta = {"incident": incident, "host": host, "source": key, "shard": name.shard, "part": name.part,
            "parts": name.parts}
    report = ArchiveReport()
    lines: list[bytes] = []
    with tempfile.TemporaryDirectory(prefix="spoolsweep-parse-") as tmp:
        path = _local(store, key, Path(tmp))
        try:
            fmt, found, report = read_snapshot(path, policy.limits, report=report)
            records = parse_all(found, policy, workers=workers)
        except SnapshotError as e:
            # the snapshot stays in incoming/ as evidence; triage goes on and names the loss
            fmt, records = "unreadable", []
            report.defects.append(f"{key}: {e}")
            store.put(f"{queues.CORRUPT}/{incident}/{name.shard}.json", json.dumps({**meta, "error": str(e)}).encode())
    for r in records:
        lines.append(r.model_dump_json().encode() + b"\n")
    meta |= {"format": fmt, "sha256": report.sha256, "members_read": report.members, "messages": len(records),
             "skipped": report.skipped, "defects": report.defects,
             # the MTA's own configuration the agent recorded: triage derives the policy from it
             "site": site_of(report.meta)}
    store.put(shard_meta_key(incident, name.shard), json.dumps(meta, sort_keys=True).encode())
    # written last: its presence (and its S3 event) means the shard is complete
    store.put(out, zstandard.ZstdCompressor(level=3).compress(b"".join(lines)))
    pt.metrics.add_metric(name="MessagesParsed", unit="Count", value=len(records))
    return f"{len(records)} messages -> {out}"


@cache
def deps() -> tuple[ParseSettings, Store]:
    s = load(ParseSettings)
    return s, build_store(s)


def on_object(ref: ObjectRef, record: SQSRecord) -> str:
    s, store = deps()
    key_parts(ref, queues.INCOMING, 3)
    return parse_object(store, ref.key, load_site_policy(store, s), s.workers, s.split_bytes, s.shard_size,
                        ref.size)


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    deps()  # cold start: fail fast on bad settings
handler = pt.handler(on_object)
