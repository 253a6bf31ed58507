"""The one bootstrap: store and channel URLs, and where S3/SQS are, turned into the adapters every entry point uses.

    a store:    DIR (a local directory, the embedded default) | s3://BUCKET
    a channel:  DIR | sqs | sqs:// | sqs://PREFIX (per-host queues named by adapters/names.py under PREFIX);
                empty: DIR/channel beside a directory store, the stack's queues beside a bucket

Settings come in as values (a Lambda's settings model read once at cold start, a CLI's options); nothing
here writes the environment, and only `endpoint_from_env` and `cloud_from_env` read it, for the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adapters.names import PREFIX
from pipeline.errors import SpoolsweepError, StoreError
from pipeline.instructions import key_id_of
from pipeline.store import Channel, LocalChannel, LocalStore, Store

ENDPOINT_VARIABLE = "SPOOLSWEEP_ENDPOINT_URL"


class SigningKeyMissing(SpoolsweepError):
    """No signing key: set SPOOLSWEEP_SIGNING_KEY_FILE or SPOOLSWEEP_SIGNING_KEY_SECRET"""


class NoSecretsStore(SpoolsweepError):
    """Reading a secret needs boto3 (pip install 'spoolsweep[aws]')"""


@dataclass(frozen=True)
class Cloud:
    """Where S3, SQS and Secrets Manager are: endpoint None and region None mean AWS as boto3 finds it."""

    endpoint_url: str | None = None
    region: str | None = None
    name_prefix: str = PREFIX


@dataclass(frozen=True)
class StoreUrl:
    bucket: str | None  # s3://BUCKET
    path: Path | None  # a directory


@dataclass(frozen=True)
class ChannelUrl:
    queue_prefix: str | None  # sqs://PREFIX: the per-host queues are PREFIX-instructions-<host>.fifo
    path: Path | None  # a directory


def endpoint_from_env() -> str | None:
    """The S3/SQS endpoint (moto, LocalStack) a CLI was pointed at; None means AWS."""
    return os.environ.get(ENDPOINT_VARIABLE) or None


def cloud_from_env(region: str | None = None) -> Cloud:
    """Where a command's S3/SQS are, from the variables the functions read too: SPOOLSWEEP_ENDPOINT_URL,
    SPOOLSWEEP_NAME_PREFIX and AWS_REGION (else `region`, else boto3's own choice)."""
    return Cloud(endpoint_url=endpoint_from_env(), region=os.environ.get("AWS_REGION") or region,
                 name_prefix=os.environ.get("SPOOLSWEEP_NAME_PREFIX") or PREFIX)


def parse_store(url: str) -> StoreUrl:
    if url.startswith("s3://"):
        bucket = url.removeprefix("s3://").strip("/")
        if not bucket or "/" in bucket:
            raise StoreError(f"store {url!r}: give s3://BUCKET (a bucket name, no folder in it)")
        return StoreUrl(bucket=bucket, path=None)
    if not url:
        raise StoreError("no store: give a directory or s3://BUCKET")
    return StoreUrl(bucket=None, path=Path(url))


def parse_channel(url: str, store: str, cloud: Cloud = Cloud()) -> ChannelUrl:
    """The channel a URL names; an empty one is the store's own (DIR/channel, or the stack's queues)."""
    if url == "sqs" or url.startswith("sqs://"):
        return ChannelUrl(queue_prefix=url.removeprefix("sqs").removeprefix("://").strip("/") or cloud.name_prefix,
                          path=None)
    if url:
        return ChannelUrl(queue_prefix=None, path=Path(url))
    where = parse_store(store)
    if where.path is None:
        return ChannelUrl(queue_prefix=cloud.name_prefix, path=None)
    return ChannelUrl(queue_prefix=None, path=where.path / "channel")


def build_store(url: str, cloud: Cloud = Cloud()) -> Store:
    """A directory store, or an S3 bucket (boto3 is imported only then)."""
    where = parse_store(url)
    if where.bucket is not None:
        from adapters.aws import S3Store, client

        return S3Store(where.bucket, client("s3", cloud.endpoint_url, cloud.region))
    assert where.path is not None
    return LocalStore(where.path)


def build_channel(url: str, store: str, cloud: Cloud = Cloud(), visibility: float = 60.0) -> Channel:
    """A directory channel (received instructions hidden for `visibility` seconds), or the per-host SQS queues."""
    where = parse_channel(url, store, cloud)
    if where.queue_prefix is not None:
        from adapters.aws import SqsChannel, client

        return SqsChannel(client("sqs", cloud.endpoint_url, cloud.region), prefix=where.queue_prefix)
    assert where.path is not None
    return LocalChannel(where.path, visibility_timeout=visibility)


def embedded_settings(root: Path, workers: int | None = None) -> dict[str, object]:
    """The handlers' settings for the embedded default: the store folder, its channel and signing key.

        <root>/incoming/ parsed/ manifests/ ...   the store (pipeline/queues.py), durable on disk
        <root>/channel/<host>/                    the local instruction channel (pipeline.store.LocalChannel)
        <root>/keys/signing.pem, signing.pub.pem  the Ed25519 key dispatch signs with; agents verify with .pub
        <root>/.runner/                           what the local runtime has handled, and its dead letters
    """
    from pipeline.service.incidents import key_paths

    return {"store": str(root), "channel": str(root / "channel"), "signing_key_file": str(key_paths(root)[0]),
            "workers": workers or os.cpu_count() or 1}


def secret_reader(cloud: Cloud = Cloud()) -> Callable[[str], str]:
    """A secret's value by id, from Secrets Manager; boto3 is imported only when a secret is read."""

    def read(secret_id: str) -> str:
        try:
            from adapters.aws import secret_string
        except ImportError:
            raise NoSecretsStore() from None
        return secret_string(secret_id, cloud.endpoint_url, cloud.region).decode()

    return read


def signing_key(key_file: str | None, secret_id: str | None, key_id: str | None = None,
                cloud: Cloud = Cloud()) -> tuple[bytes, str]:
    """(private PEM, key id) from Secrets Manager or a file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if secret_id:
        from adapters.aws import secret_string

        pem = secret_string(secret_id, cloud.endpoint_url, cloud.region)
    elif key_file:
        pem = Path(key_file).read_bytes()
    else:
        raise SigningKeyMissing()
    pub = load_pem_private_key(pem, password=None).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pem, key_id or key_id_of(pub)
