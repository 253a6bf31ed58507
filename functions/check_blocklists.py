"""check_blocklists: manifests/<incident>/manifest.json -> blocklists/<incident>/report.json.

The use case is pipeline.service.blocklists.check_incident.
"""

from __future__ import annotations

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from adapters.bootstrap import build_store, secret_reader
from functions.common import BatchHandler, ColdStart, Powertools, key_parts
from functions.events import ObjectRef
from functions.settings import BlocklistSettings
from pipeline import queues
from pipeline.service import StepResult
from pipeline.service.blocklists import check_incident
from pipeline.service.incidents import load_site_policy

pt = Powertools("blocklist")


def build(s: BlocklistSettings) -> BatchHandler:
    store, read_secret = build_store(s.store, s.cloud), secret_reader(s.cloud)

    def on_object(ref: ObjectRef, record: SQSRecord) -> StepResult:
        incident, name = key_parts(ref, queues.MANIFESTS, 2)
        if name != "manifest.json":
            return StepResult(f"skipped: {ref.key} is not a manifest", done=False)
        return check_incident(store, incident, load_site_policy(store, s.policy_key), s.nameserver, read_secret)

    return pt.handler(on_object, s)


handler = ColdStart(build, BlocklistSettings)
