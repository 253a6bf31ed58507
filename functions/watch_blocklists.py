"""watch_blocklists: on a schedule, re-check the site's addresses and domains; publish changes to SNS.

The use case is pipeline.service.blocklists.watch (state/blocklists/latest.json keeps the last report).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from adapters.bootstrap import build_store, secret_reader
from functions.common import ColdStart, Handler
from functions.settings import Common
from pipeline.service.blocklists import Publish, watch
from pipeline.service.incidents import load_site_policy


class WatchSettings(Common):
    nameserver: str | None = Field(None, description="resolver IP[:port]; None means the system's")
    topic_arn: str | None = Field(None, description="SNS topic for changes; None: only the state is kept")


def sns_publisher(topic_arn: str, client: Any = None) -> Publish:
    import boto3

    sns = client or boto3.client("sns")

    def publish(subject: str, message: str) -> None:
        sns.publish(TopicArn=topic_arn, Subject=subject[:100], Message=message)

    return publish


def build(s: WatchSettings) -> Handler:
    store = build_store(s.store, s.cloud)
    publish = sns_publisher(s.topic_arn) if s.topic_arn else None
    read_secret = secret_reader(s.cloud)

    def on_schedule(event: dict, context: Any) -> dict:
        """EventBridge schedule entry point."""
        moved = watch(store, load_site_policy(store, s.policy_key), publish, s.nameserver, read_secret)
        return {"changes": len(moved)}

    return on_schedule


handler = ColdStart(build, WatchSettings)
