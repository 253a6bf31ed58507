"""triage_incident: when the last shard of an incident is parsed -> the triage workflow is started, once.

On AWS it starts the state machine (SPOOLSWEEP_STATE_MACHINE_ARN) under one execution name per incident,
so a duplicated or retried event cannot start a second run: Step Functions answers a start with the same
name and input as an open execution with that execution, and one of a closed execution with
ExecutionAlreadyExists. Without a state machine (the embedded default, the queues runner) it runs the
same workflow here, its steps on a process pool, journaled so a retried event resumes (adapters/workflow.py).
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from adapters import names
from adapters.bootstrap import build_store
from functions.common import BatchHandler, ColdStart, Powertools, key_parts
from functions.events import ObjectRef
from functions.settings import TriageSettings
from pipeline import queues
from pipeline.service import StepResult
from pipeline.service.triage import parsed_shards
from pipeline.shards import missing

pt = Powertools("triage", counted="MessagesTriaged")


def build(s: TriageSettings) -> BatchHandler:
    store = build_store(s.store, s.cloud)
    sfn: Any = None
    if s.state_machine_arn:
        from adapters.aws import client

        sfn = client("stepfunctions", s.endpoint_url, s.region)

    def on_object(ref: ObjectRef, record: SQSRecord) -> StepResult:
        incident, _ = key_parts(ref, queues.PARSED, 2)
        if store.exists(queues.manifest_key(incident)):
            return StepResult(f"already triaged: {queues.manifest_key(incident)}", done=False)
        todo = missing(parsed_shards(store, incident))
        if todo:
            return StepResult(f"waiting for {len(todo)} shard(s), e.g. {todo[0]}", done=False)
        if sfn is not None:
            return start(sfn, s.state_machine_arn or "", incident)
        from adapters.workflow import run_locally

        run = run_locally(store, incident, s.model_dump(exclude={"state_machine_arn"}), workers=s.workers)
        done = [r for r in run.steps if not r.resumed]
        return StepResult(f"{run.summary()} ({len(done)} step(s) run, {len(run.steps) - len(done)} resumed)",
                          int(run.output.get("summary", {}).get("count", 0)))

    return pt.handler(on_object, s)


def start(sfn: Any, arn: str, incident: str) -> StepResult:
    """Start the incident's one execution; a second start of it is a no-op that says so."""
    name = names.execution_name(incident)
    try:
        r = sfn.start_execution(stateMachineArn=arn, name=name, input=json.dumps({"incident": incident}))
    except sfn.exceptions.ExecutionAlreadyExists:
        return StepResult(f"already started: execution {name}", done=False)
    return StepResult(f"started {r['executionArn']}")


handler = ColdStart(build, TriageSettings)
