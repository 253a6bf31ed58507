"""dispatch_approval: approvals/<incident>/<id>.json -> signed instructions on the host's channel.

The use case is pipeline.service.dispatch; the signing key comes from a file or Secrets Manager.
"""

from __future__ import annotations

from datetime import timedelta

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from adapters.bootstrap import build_channel, build_store, signing_key
from functions.common import BatchHandler, ColdStart, Powertools
from functions.events import ObjectRef
from functions.settings import DispatchSettings
from pipeline.service import StepResult
from pipeline.service.dispatch import dispatch

pt = Powertools("dispatch", counted="InstructionsSent")


def build(s: DispatchSettings) -> BatchHandler:
    pem, kid = signing_key(s.signing_key_file, s.signing_key_secret, s.key_id, s.cloud)
    store, channel = build_store(s.store, s.cloud), build_channel(s.channel, s.store, s.cloud)

    def on_object(ref: ObjectRef, record: SQSRecord) -> StepResult:
        return dispatch(store, channel, ref.key, pem, kid, timedelta(hours=s.ttl_hours))

    return pt.handler(on_object, s)


handler = ColdStart(build, DispatchSettings)
