"""triage_incident: when the last shard of an incident is parsed -> manifests/<incident>/manifest.json.

Every parsed shard's event asks "is the set complete?"; the first one that finds it so claims a
write-once marker, so a late or duplicated event cannot run triage twice. The claim names the SQS
message that made it: when that same message is retried after a crash, it may finish the work.
"""

from __future__ import annotations

import json
import os
from functools import cache

import zstandard
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from functions.common import Powertools, key_parts
from functions.events import ObjectRef
from functions.parse_snapshot import shard_meta_key
from functions.root import build_store, load_site_policy
from functions.settings import TriageSettings, load
from functions.shards import missing, parse_shard
from pipeline import queues
from pipeline.errors import StoreError
from pipeline.manifest_io import manifest_bytes
from pipeline.models import ParsedRecord, SnapshotInfo
from pipeline.policy import SitePolicy
from pipeline.sitepolicy import effective_policy
from pipeline.store import Store
from pipeline.triage import decide, prepare

pt = Powertools("triage")
_SUFFIX = ".jsonl.zst"


def claim_key(incident: str) -> str:
    return f"{queues.STATE}/{queues.check_name('incident', incident)}/triage.claim"


def parsed_shards(store: Store, incident: str) -> list[str]:
    prefix = f"{queues.PARSED}/{incident}/"
    return [k[len(prefix):-len(_SUFFIX)] for k in store.list(prefix) if k.endswith(_SUFFIX)]


def _order(shard: str) -> tuple[str, int]:
    n = parse_shard(shard)
    return n.group, n.part


def load_records(store: Store, incident: str, shards: list[str]) -> list[ParsedRecord]:
    out: list[ParsedRecord] = []
    for shard in shards:
        data = zstandard.ZstdDecompressor().decompressobj().decompress(store.get(queues.parsed_key(incident, shard)))
        out.extend(ParsedRecord.model_validate_json(line) for line in data.splitlines() if line.strip())
    return out


def triage_incident(store: Store, incident: str, policy: SitePolicy, claimant: str,
                    policy_source: str | None = None) -> str:
    """Decide over all shards of an incident once they are all parsed; idempotent and safe to race."""
    out = queues.manifest_key(incident)
    if store.exists(out):
        return f"already triaged: {out}"
    shards = sorted(parsed_shards(store, incident), key=_order)
    todo = missing(shards)
    if todo:
        return f"waiting for {len(todo)} shard(s), e.g. {todo[0]}"
    if not store.put_if_absent(claim_key(incident), claimant.encode()):
        try:
            holder = store.get(claim_key(incident)).decode()
        except StoreError:
            holder = ""
        if holder != claimant:
            return f"skipped: triage already claimed by {holder or 'another event'}"
    metas = [json.loads(store.get(shard_meta_key(incident, s))) for s in shards]
    records = load_records(store, incident, shards)
    prepare(records)
    hosts = sorted({m["host"] for m in metas})
    info = SnapshotInfo(
        source=", ".join(sorted({m["source"].rsplit("/", 1)[-1] for m in metas}))[:500],
        format=", ".join(sorted({m["format"] for m in metas})),
        sha256=metas[0]["sha256"] if len(metas) == 1 else None,
        host=", ".join(hosts),
        members_read=sum(m["members_read"] for m in metas),
        skipped=[s for m in metas for s in m["skipped"]])
    defects = [d for m in metas for d in m["defects"]]
    sites = [m["site"] for m in metas if m.get("site")]
    if len({json.dumps(x, sort_keys=True) for x in sites}) > 1:
        defects.append(f"{len(sites)} shards recorded different MTA configurations; the first one's is used")
    used, pinfo = effective_policy(policy, policy_source, sites[0] if sites else None, records)
    manifest = decide(records, used, incident, info, defects, policy_info=pinfo, consume=True)
    store.put(out, manifest_bytes(manifest))
    pt.metrics.add_metric(name="MessagesTriaged", unit="Count", value=len(records))
    return f"{len(records)} messages from {len(shards)} shard(s) -> {out}"


@cache
def deps() -> tuple[TriageSettings, Store]:
    s = load(TriageSettings)
    return s, build_store(s)


def on_object(ref: ObjectRef, record: SQSRecord) -> str:
    s, store = deps()
    incident, _ = key_parts(ref, queues.PARSED, 2)
    source = s.policy_key if store.exists(s.policy_key) else None
    return triage_incident(store, incident, load_site_policy(store, s), record.message_id, source)


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    deps()  # cold start: fail fast on bad settings
handler = pt.handler(on_object)
