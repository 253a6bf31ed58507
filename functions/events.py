"""S3 notifications carried by SQS: read them whatever the sender (AWS, LocalStack, moto).

adapters/runtime.py writes them, as S3 and Lambda's SQS poller would, for the local runtime.

AWS, LocalStack and moto differ: moto percent-encodes '/' in keys and leaves out userIdentity,
requestParameters, responseElements and sequencer; all three send an s3:TestEvent first. So the
reading side uses Powertools' lenient data classes (dict wrappers), never a strict model, and
decodes keys with unquote_plus as AWS documents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import unquote_plus

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
