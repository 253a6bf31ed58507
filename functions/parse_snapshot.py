"""parse_snapshot: incoming/<incident>/<host>/<file> (snapshot or shard) -> parsed/<incident>/<shard>.jsonl.zst."""

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
from functions.shards import shard_of
from pipeline import queues
from pipeline.archive import ArchiveReport
from pipeline.errors import SnapshotError
from pipeline.policy import SitePolicy
from pipeline.readers import read_snapshot
from pipeline.store import Store
from pipeline.triage import parse_all

pt = Powertools("parse")


def shard_meta_key(incident: str, shard: str) -> str:
    """What triage needs besides the records: format, digests, defects (written before the records)."""
    return f"{queues.STATE}/{queues.check_name('incident', incident)}/shards/{queues.check_name('shard', shard)}.json"


def parse_object(store: Store, key: str, policy: SitePolicy, workers: int = 1) -> str:
    """Parse one snapshot object into its shard of ParsedRecord lines; a second run finds it done."""
    incident, host, filename = key.split("/")[1:]
    if filename.startswith("."):
        return "skipped: hidden file"
    try:
        name = shard_of(host, filename)
    except ValueError as e:
        raise PoisonEvent(str(e)) from None
    out = queues.parsed_key(incident, name.shard)
    if store.exists(out):
        return f"already parsed: {out}"
    meta = {"incident": incident, "host": host, "source": key, "shard": name.shard, "part": name.part,
            "parts": name.parts}
    report = ArchiveReport()
    lines: list[bytes] = []
    with tempfile.TemporaryDirectory(prefix="spoolsweep-parse-") as tmp:
        path = Path(tmp) / filename
        path.write_bytes(store.get(key))
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
             "skipped": report.skipped, "defects": report.defects}
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
    return parse_object(store, ref.key, load_site_policy(store, s), s.workers)


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    deps()  # cold start: fail fast on bad settings
handler = pt.handler(on_object)
