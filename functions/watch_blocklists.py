"""watch_blocklists: on a schedule, re-check the site's addresses and domains; publish changes to SNS.

state/blocklists/latest.json keeps the last report, so each run compares with the one before.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import cache
from typing import Any

from pydantic import Field

from functions.root import build_store, load_site_policy
from functions.settings import Common, load
from pipeline import queues
from pipeline.blocklist import BlocklistReport, check_policy
from pipeline.blocklist.watch import changes
from pipeline.policy import SitePolicy
from pipeline.store import Store

STATE_KEY = f"{queues.STATE}/blocklists/latest.json"
Publish = Callable[[str, str], None]


class WatchSettings(Common):
    nameserver: str | None = Field(None, description="resolver IP[:port]; None means the system's")
    topic_arn: str | None = Field(None, description="SNS topic for changes; None: only the state is kept")


def watch(store: Store, policy: SitePolicy, publish: Publish | None, nameserver: str | None = None) -> list[dict]:
    """Check, compare with the last report, publish what moved, keep this report for next time."""
    previous = BlocklistReport.model_validate_json(store.get(STATE_KEY)) if store.exists(STATE_KEY) else None
    report = check_policy(policy, nameserver=nameserver)
    moved = changes(previous, report)
    if moved and publish is not None:
        listed = sum(1 for c in moved if c["now"] == "listed")
        publish(f"spoolsweep: {len(moved)} blocklist change(s), {listed} new listing(s)",
                json.dumps({"blocklist_changes": moved}, indent=1))
    store.put(STATE_KEY, report.model_dump_json().encode())
    return moved


def sns_publisher(topic_arn: str, client: Any = None) -> Publish:
    import boto3

    sns = client or boto3.client("sns")

    def publish(subject: str, message: str) -> None:
        sns.publish(TopicArn=topic_arn, Subject=subject[:100], Message=message)

    return publish


@cache
def deps() -> tuple[WatchSettings, Store]:
    s = load(WatchSettings)
    return s, build_store(s)


def handler(event: dict, context: object) -> dict:
    """EventBridge schedule entry point."""
    s, store = deps()
    moved = watch(store, load_site_policy(store, s), sns_publisher(s.topic_arn) if s.topic_arn else None,
                  s.nameserver)
    return {"changes": len(moved)}


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    deps()
