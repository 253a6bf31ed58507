"""The names of every cloud resource, in one place: infra/template.yaml and localstack/ are checked against it."""

from __future__ import annotations

import hashlib

from pipeline import queues

PREFIX = "spoolsweep"

# step -> (input prefix the step is triggered by, handler module)
STEPS: dict[str, tuple[str, str]] = {
    "parse": (queues.INCOMING, "functions.parse_snapshot"),
    "triage": (queues.PARSED, "functions.triage_incident"),
    "blocklist": (queues.MANIFESTS, "functions.check_blocklists"),
    "dispatch": (queues.APPROVALS, "functions.dispatch_approval"),
}

# the triage workflow's steps (pipeline.service.triage.run_step), each a function of its own that the state
# machine invokes (infra/template.yaml, adapters/workflow.py): step -> handler module
TRIAGE_STEPS: dict[str, str] = {
    "plan": "functions.triage_plan",
    "facts": "functions.triage_facts",
    "decide": "functions.triage_decide",
    "verdicts": "functions.triage_verdicts",
    "summary": "functions.triage_summary",
}
TRIAGE_MAP_STEPS = ("facts", "verdicts")  # run once per shard (the state machine's Distributed Maps)

# how many times SQS hands a message out before the redrive moves it to the dead-letter queue
MAX_RECEIVES = 3


def event_queue(step: str, prefix: str = PREFIX) -> str:
    """The SQS queue that S3 notifications for a step's input prefix land in."""
    return f"{prefix}-{step}-events"


def dead_letter_queue(step: str, prefix: str = PREFIX) -> str:
    return f"{prefix}-{step}-dlq"


def instruction_queue(host: str, prefix: str = PREFIX) -> str:
    """A host's FIFO queue of signed instructions (FIFO: deduplicated by instruction id)."""
    return f"{prefix}-instructions-{queues.check_name('host', host)}.fifo"


def instruction_dlq(host: str, prefix: str = PREFIX) -> str:
    return f"{prefix}-instructions-{queues.check_name('host', host)}-dlq.fifo"


def function_name(step: str, prefix: str = PREFIX) -> str:
    return f"{prefix}-{step}"


def step_for_key(key: str) -> str | None:
    """Which step an object key triggers, or None."""
    top = key.split("/", 1)[0]
    for step, (prefix, _) in STEPS.items():
        if prefix == top:
            return step
    return None


def state_machine(prefix: str = PREFIX) -> str:
    """The triage workflow's Step Functions state machine, started by the last parsed shard."""
    return f"{prefix}-triage"


def triage_step_function(step: str, prefix: str = PREFIX) -> str:
    return f"{prefix}-triage-{step}"


def triage_step_resource(step: str) -> str:
    """The template's logical id of a triage step's function (and its ${...} in the state machine's definition)."""
    return f"Triage{step.capitalize()}Function"


def execution_name(incident: str) -> str:
    """One execution name per incident: a duplicated or retried start is refused by Step Functions, never run twice.

    Names are at most 80 characters; a longer incident name keeps a digest of the whole so two never meet.
    """
    name = f"triage-{queues.check_name('incident', incident)}"
    if len(name) <= 80:
        return name
    return f"{name[:63]}-{hashlib.sha256(incident.encode()).hexdigest()[:16]}"
