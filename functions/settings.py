"""One settings model per function, read from SPOOLSWEEP_* environment variables and validated at cold start."""

from __future__ import annotations

import os
from typing import Any, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from adapters.bootstrap import Cloud
from adapters.names import PREFIX
from functions.errors import SettingsError
from pipeline import queues

T = TypeVar("T", bound="Common")


class Common(BaseSettings):
    """Where the store and the instruction channel are: a directory (the embedded default) or S3 and SQS."""

    model_config = SettingsConfigDict(env_prefix="SPOOLSWEEP_", extra="ignore", frozen=True)

    store: str = Field(description="a directory, or s3://bucket")
    channel: str = Field("", description="a directory, or sqs://[prefix] (per-host queues named by adapters/names.py); "
                         "empty: <store>/channel, or the stack's queues beside a bucket")
    name_prefix: str = PREFIX
    endpoint_url: str | None = Field(None, description="S3/SQS endpoint (moto, LocalStack); None means AWS")
    region: str = Field(default_factory=lambda: os.environ.get("AWS_REGION", "us-east-1"))
    policy_key: str = Field(queues.POLICY_KEY, description="the site policy's key in the store")
    log_level: str | None = Field(None, description="the handlers' log level; None: Powertools' own "
                                  "(POWERTOOLS_LOG_LEVEL, else INFO)")
    metrics: bool = Field(True, description="write CloudWatch metrics (EMF lines on stdout); the local runtime "
                          "turns them off")

    @property
    def cloud(self) -> Cloud:
        return Cloud(endpoint_url=self.endpoint_url, region=self.region, name_prefix=self.name_prefix)


class ParseSettings(Common):
    workers: int = Field(1, ge=1, le=64, description="parser processes; 1 in Lambda (no /dev/shm)")
    split_bytes: int = Field(64 * 2**20, ge=0, description="split a whole snapshot bigger than this; 0 never")
    shard_size: int = Field(20000, ge=100, description="messages per part when splitting")


class TriageSettings(Common):
    state_machine_arn: str | None = Field(None, description="the triage workflow's state machine: the last parsed "
                                          "shard starts it; None runs the workflow here (adapters/workflow.py)")
    workers: int = Field(1, ge=1, le=64, description="processes the workflow's steps run on, when run here")


class TriageStepSettings(Common):
    pass


class BlocklistSettings(Common):
    nameserver: str | None = Field(None, description="resolver IP[:port]; None means the system's")


class DispatchSettings(Common):
    signing_key_file: str | None = Field(None, description="Ed25519 private key, PEM (embedded default)")
    signing_key_secret: str | None = Field(None, description="Secrets Manager secret id holding the PEM (AWS)")
    key_id: str | None = None
    ttl_hours: float = Field(48, gt=0, le=24 * 14)


class ConsoleSettings(Common):
    console_token: SecretStr = Field(min_length=24, description="the console's access token (the stack's "
                                     "ConsoleToken parameter); function-URL IAM auth comes first, this second")
    raw_limit_bytes: int = Field(256 * 2**20, ge=0, description="biggest snapshot downloaded for a drill-down")


def load(model: type[T], **values: Any) -> T:
    """The settings from the environment (values given here win), or one clear error naming every bad variable."""
    try:
        return model(**values)
    except ValidationError as e:
        bad = ", ".join(f"SPOOLSWEEP_{'_'.join(str(x) for x in err['loc']).upper()}: {err['msg']}"
                        for err in e.errors())
        raise SettingsError(f"{model.__name__}: {bad}") from None
