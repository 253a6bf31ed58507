"""parse_snapshot: incoming/<incident>/<host>/<file> (snapshot or shard) -> parsed/<incident>/<shard>.jsonl.zst.

The use case is pipeline.service.parse (a whole snapshot over SPOOLSWEEP_SPLIT_BYTES is cut into parts there).
"""

from __future__ import annotations

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from adapters.bootstrap import build_store
from functions.common import BatchHandler, ColdStart, Powertools
from functions.events import ObjectRef
from functions.settings import ParseSettings
from pipeline.service import StepResult
from pipeline.service.incidents import load_site_policy
from pipeline.service.parse import Incoming, ParseOptions, parse_object

pt = Powertools("parse", counted="MessagesParsed")


def build(s: ParseSettings) -> BatchHandler:
    store = build_store(s.store, s.cloud)
    options = ParseOptions(workers=s.workers, split_bytes=s.split_bytes, shard_size=s.shard_size)

    def on_object(ref: ObjectRef, record: SQSRecord) -> StepResult:
        return parse_object(store, Incoming(ref.key, ref.size), load_site_policy(store, s.policy_key), options)

    return pt.handler(on_object, s)


handler = ColdStart(build, ParseSettings)
