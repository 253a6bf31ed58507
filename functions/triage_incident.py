"""triage_incident: when the last shard of an incident is parsed -> manifests/<incident>/manifest.json.

The use case is pipeline.service.triage; the SQS message id is the claim that lets a retried event finish.
"""

from __future__ import annotations

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from adapters.bootstrap import build_store
from functions.common import BatchHandler, ColdStart, Powertools, key_parts
from functions.events import ObjectRef
from functions.settings import TriageSettings
from pipeline import queues
from pipeline.service import StepResult
from pipeline.service.incidents import load_site_policy
from pipeline.service.triage import triage_incident

pt = Powertools("triage", counted="MessagesTriaged")


def build(s: TriageSettings) -> BatchHandler:
    store = build_store(s.store, s.cloud)

    def on_object(ref: ObjectRef, record: SQSRecord) -> StepResult:
        incident, _ = key_parts(ref, queues.PARSED, 2)
        source = s.policy_key if store.exists(s.policy_key) else None
        return triage_incident(store, incident, load_site_policy(store, s.policy_key), record.message_id, source)

    return pt.handler(on_object, s)


handler = ColdStart(build, TriageSettings)
