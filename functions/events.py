"""S3 notifications carried by SQS: read them whatever the sender (AWS, LocalStack, moto), and write them.

AWS, LocalStack and moto differ: moto percent-encodes '/' in keys and leaves out userIdentity,
requestParameters, responseElements and sequencer; all three send an s3:TestEvent first. So the
reading side uses Powertools' lenient data classes (dict wrappers), never a strict model, and
decodes keys with unquote_plus as AWS documents.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote_plus, unquote_plus

from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from functions.errors import PoisonEvent


@dataclass(frozen=True)
class ObjectRef:
    """An object an S3 notification is about."""

    bucket: str
    key: str
    size: int | None = None
    etag: str | None = None


def objects_in(record: SQSRecord) -> list[ObjectRef]:
    """The objects an SQS record's S3 notification names; [] for a test event or a removal."""
    try:
        body = json.loads(record.body)
    except (TypeError, ValueError):
        raise PoisonEvent(f"SQS message {record.message_id} is not JSON") from None
    if not isinstance(body, dict):
        raise PoisonEvent(f"SQS message {record.message_id} is not an S3 notification")
    if body.get("Event") == "s3:TestEvent":
        return []
    if "Records" not in body or not isinstance(body["Records"], list):
        raise PoisonEvent(f"SQS message {record.message_id} has no Records")
    out = []
    for r in S3Event(body).records:
        if not r.event_name.startswith("ObjectCreated"):
            continue
        try:
            obj = r.s3.get_object
            out.append(ObjectRef(bucket=r.s3.bucket.name, key=unquote_plus(obj.key),
                                 size=obj.raw_event.get("size"), etag=obj.raw_event.get("eTag")))
        except (KeyError, TypeError):
            raise PoisonEvent(f"SQS message {record.message_id}: S3 record without bucket or key") from None
    return out


def s3_notification(bucket: str, key: str, size: int, etag: str, region: str = "local",
                    when: datetime | None = None) -> dict:
    """The notification S3 would send for a new object (AWS's full shape, key encoded as AWS does)."""
    when = when or datetime.now(UTC)
    seq = hashlib.sha256(f"{key}\n{etag}".encode()).hexdigest()[:16].upper()
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": region,
        "eventTime": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "spoolsweep-local"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": seq, "x-amz-id-2": seq},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "spoolsweep-local",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "spoolsweep-local"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag, "sequencer": seq}},
    }]}


def sqs_record(body: str, queue: str, message_id: str | None = None, receive_count: int = 1,
               region: str = "local") -> dict:
    """One record of the event Lambda's SQS poller hands a function."""
    now = str(int(datetime.now(UTC).timestamp() * 1000))
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": message_id or str(uuid.uuid4()),
        "body": body,
        "attributes": {"ApproximateReceiveCount": str(receive_count), "SentTimestamp": now,
                       "SenderId": "spoolsweep-local", "ApproximateFirstReceiveTimestamp": now},
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{region}:000000000000:{queue}",
        "awsRegion": region,
    }
