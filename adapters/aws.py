"""The S3 and SQS adapters of pipeline/store.py's ports; every S3, SQS and Secrets Manager client is made here."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from adapters import names
from pipeline.errors import StoreError
from pipeline.store import ChannelMessage

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


@cache
def client(service: str, endpoint_url: str | None = None, region: str | None = None) -> Any:
    """One client per service and endpoint, kept across warm invocations."""
    return boto3.client(service, endpoint_url=endpoint_url, region_name=region, config=_CONFIG)


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def said(e: BaseException) -> str | None:
    """What AWS, or the way to it, said in a botocore error, as one line ("NoSuchBucket: The specified bucket
    does not exist", "Unable to locate credentials", "Could not connect to the endpoint URL: ..."); None for
    any other error."""
    from botocore.exceptions import BotoCoreError

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"{err.get('Code') or 'error'}: {err.get('Message') or e}"
    if isinstance(e, BotoCoreError):
        return str(e)
    return None


class S3Store:
    """Objects in one bucket; put_if_absent is S3's conditional write (If-None-Match: *)."""

    def __init__(self, bucket: str, s3: Any = None) -> None:
        self.bucket = bucket
        self.s3 = s3 or client("s3")

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as e:
            # 409 ConditionalRequestConflict: a concurrent writer is mid-flight; it wins
            if _code(e) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            raise
        return True

    def get(self, key: str) -> bytes:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404"):
                raise StoreError(f"no object {key!r} in s3://{self.bucket}") from None
            raise

    def download(self, key: str, path: Path) -> None:
        """Stream an object to a file (multipart, in parallel), never holding it all in memory."""
        try:
            self.s3.download_file(self.bucket, key, str(path))
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404"):
                raise StoreError(f"no object {key!r} in s3://{self.bucket}") from None
            raise

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _code(e) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _code(e) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def version(self, key: str) -> str | None:
        h = self.head(key)
        return None if h is None else f"{h.get('ETag', '')}-{h.get('ContentLength', '')}"

    def size(self, key: str) -> int | None:
        h = self.head(key)
        return None if h is None else int(h.get("ContentLength", 0))

    def list(self, prefix: str) -> Iterator[str]:
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"]


class SqsChannel:
    """One FIFO queue per host (adapters/names.py names it); the dedup id makes a resend a no-op for 5 minutes."""

    def __init__(self, sqs: Any = None, prefix: str = names.PREFIX) -> None:
        self.sqs = sqs or client("sqs")
        self.prefix = prefix
        self._urls: dict[str, str] = {}

    def url(self, host: str) -> str:
        if host not in self._urls:
            name = names.instruction_queue(host, self.prefix)
            try:
                self._urls[host] = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
            except ClientError as e:
                raise StoreError(f"no instruction queue {name!r} for host {host!r} ({_code(e)})") from None
        return self._urls[host]

    def send(self, host: str, body: str, dedup_id: str) -> None:
        self.sqs.send_message(QueueUrl=self.url(host), MessageBody=body, MessageGroupId=host,
                              MessageDeduplicationId=dedup_id)

    def receive(self, host: str, max_messages: int = 10, wait_seconds: float = 0) -> list[ChannelMessage]:
        r = self.sqs.receive_message(QueueUrl=self.url(host), MaxNumberOfMessages=min(max_messages, 10),
                                     WaitTimeSeconds=int(wait_seconds))
        return [ChannelMessage(m["Body"], m["ReceiptHandle"]) for m in r.get("Messages", [])]

    def delete(self, host: str, receipt: str) -> None:
        self.sqs.delete_message(QueueUrl=self.url(host), ReceiptHandle=receipt)


def secret_string(secret_id: str, endpoint_url: str | None = None, region: str | None = None) -> bytes:
    """A Secrets Manager secret's value (the dispatch function's signing key)."""
    return client("secretsmanager", endpoint_url, region).get_secret_value(SecretId=secret_id)["SecretString"].encode()
