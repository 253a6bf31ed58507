"""Blocklist use cases: a manifest -> blocklists/<incident>/report.json, and the scheduled re-check.

The check itself is pipeline.blocklist.check_policy (listed | not listed | unknown, per zone); without
the blocklist extra (dnspython) the report says so instead of failing, so the pipeline still completes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pipeline import queues
from pipeline.policy import SitePolicy
from pipeline.service import StepResult
from pipeline.store import Store

ReadSecret = Callable[[str], str]  # a blocklist key's secret by id (pipeline.blocklist.check.resolve_key)
Publish = Callable[[str, str], None]  # (subject, message): where changes are announced (SNS in AWS)


def _checker() -> Any:
    try:
        from pipeline.blocklist import check_policy
    except ImportError:
        return None
    return check_policy


def check_incident(store: Store, incident: str, policy: SitePolicy, nameserver: str | None = None,
                   read_secret: ReadSecret | None = None) -> StepResult:
    """Check the site's addresses and domains once per incident."""
    out = queues.blocklist_key(incident)
    if store.exists(out):
        return StepResult(f"already checked: {out}", done=False)  # a duplicate event must not query every zone
    from pipeline.blocklist.models import BlocklistReport

    check = _checker()
    why = "the blocklist extra (dnspython) is not installed" if check is None else ""
    report: Any = None
    if check is not None:
        from pipeline.blocklist.catalogue import UnknownZones
        from pipeline.blocklist.check import BadNameserver, KeyUnavailable

        try:
            report = check(policy, nameserver=nameserver, read_secret=read_secret)
        except (UnknownZones, BadNameserver, KeyUnavailable) as e:
            why = str(e)  # the configuration is wrong: no retry will fix it, the admin must (an unreachable
            # resolver is not caught here: it may come back, so the event is retried)
    if why:  # still a BlocklistReport, the one shape the console and the watcher read
        report = BlocklistReport(checked_at=datetime.now(UTC), targets=[], results=[], why=why)
    store.put(out, report.model_dump_json(indent=1).encode())
    return StepResult(f"-> {out}")


def watch(store: Store, policy: SitePolicy, publish: Publish | None, nameserver: str | None = None,
          read_secret: ReadSecret | None = None) -> list[dict[str, Any]]:
    """Check, compare with the last report, publish what moved, keep this report for next time."""
    from pipeline.blocklist import BlocklistReport, check_policy
    from pipeline.blocklist.watch import changes

    key = queues.BLOCKLIST_STATE_KEY
    previous = BlocklistReport.model_validate_json(store.get(key)) if store.exists(key) else None
    report = check_policy(policy, nameserver=nameserver, read_secret=read_secret)
    moved = changes(previous, report)
    if moved and publish is not None:
        listed = sum(1 for c in moved if c["now"] == "listed")
        publish(f"spoolsweep: {len(moved)} blocklist change(s), {listed} new listing(s)",
                json.dumps({"blocklist_changes": moved}, indent=1))
    store.put(key, report.model_dump_json().encode())
    return moved
