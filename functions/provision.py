"""Create the stack's bucket and queues on an S3/SQS endpoint (moto, LocalStack) as infra/template.yaml does."""

from __future__ import annotations

import json
from typing import Any

from adapters import names

RETENTION = str(14 * 24 * 3600)


def _queue(sqs: Any, name: str, attrs: dict[str, str]) -> tuple[str, str]:
    url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def provision(s3: Any, sqs: Any, bucket: str, hosts: list[str], prefix: str = names.PREFIX,
              visibility: int = 900) -> dict[str, str]:
    """Bucket, one event queue (+ DLQ with redrive) per step, S3 -> SQS notifications per prefix, host queues."""
    region = s3.meta.region_name
    if region and region != "us-east-1":
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    else:
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    urls: dict[str, str] = {}
    configs = []
    for step, (pfx, _) in names.STEPS.items():
        _, dlq_arn = _queue(sqs, names.dead_letter_queue(step, prefix), {"MessageRetentionPeriod": RETENTION})
        url, arn = _queue(sqs, names.event_queue(step, prefix), {
            "VisibilityTimeout": str(visibility), "MessageRetentionPeriod": RETENTION,
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": names.MAX_RECEIVES})})
        urls[step] = url
        configs.append({"Id": f"{step}-on-{pfx}", "QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": f"{pfx}/"}]}}})
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": configs})
    for host in hosts:
        _, dlq_arn = _queue(sqs, names.instruction_dlq(host, prefix), {"FifoQueue": "true"})
        urls[f"host:{host}"], _ = _queue(sqs, names.instruction_queue(host, prefix), {
            "FifoQueue": "true", "VisibilityTimeout": "300",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5})})
    return urls
