"""check_blocklists: manifests/<incident>/manifest.json -> blocklists/<incident>/report.json.

The check itself is pipeline.blocklist.check_policy (listed | not listed | unknown, per zone); until
that module is installed the report says so instead of failing, so the pipeline still completes.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from functions.common import Powertools, key_parts
from functions.events import ObjectRef
from functions.root import build_store, load_site_policy
from functions.settings import BlocklistSettings, load
from pipeline import queues
from pipeline.policy import SitePolicy
from pipeline.store import Store

pt = Powertools("blocklist")


def _checker() -> Any:
    try:
        from pipeline.blocklist import check_policy
    except ImportError:
        return None
    return check_policy


def _as_json(result: Any) -> bytes:
    if hasattr(result, "model_dump_json"):
        return result.model_dump_json(indent=1).encode()
    return json.dumps(result, indent=1, default=str, sort_keys=True).encode()


def check_incident(store: Store, incident: str, policy: SitePolicy, nameserver: str | None = None) -> str:
    out = queues.blocklist_key(incident)
    if store.exists(out):
        return f"already checked: {out}"  # a duplicate event must not query every zone again
    from pipeline.blocklist.models import BlocklistReport

    check = _checker()
    why = "the blocklist extra (dnspython) is not installed" if check is None else ""
    if check is not None:
        from pipeline.blocklist.catalogue import UnknownZones
        from pipeline.blocklist.check import BadNameserver, KeyUnavailable

        try:
            report: Any = check(policy, nameserver=nameserver)
        except (UnknownZones, BadNameserver, KeyUnavailable) as e:
            why = str(e)  # the configuration is wrong: no retry will fix it, the admin must (an unreachable
            # resolver is not caught here: it may come back, so the event is retried)
    if why:  # still a BlocklistReport, the one shape the console and the watcher read
        report = BlocklistReport(checked_at=datetime.now(UTC), targets=[], results=[], why=why)
    store.put(out, _as_json(report))
    return f"-> {out}"


@cache
def deps() -> tuple[BlocklistSettings, Store]:
    s = load(BlocklistSettings)
    return s, build_store(s)


def on_object(ref: ObjectRef, record: SQSRecord) -> str:
    s, store = deps()
    incident, name = key_parts(ref, queues.MANIFESTS, 2)
    if name != "manifest.json":
        return f"skipped: {ref.key} is not a manifest"
    return check_incident(store, incident, load_site_policy(store, s), s.nameserver)


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    deps()  # cold start: fail fast on bad settings
handler = pt.handler(on_object)
