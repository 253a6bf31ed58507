"""The names of every cloud resource, in one place: infra/template.yaml and localstack/ are checked against it."""

from __future__ import annotations

from pipeline import queues

PREFIX = "spoolsweep"

# step -> (input prefix the step is triggered by, handler module)
STEPS: dict[str, tuple[str, str]] = {
    "parse": (queues.INCOMING, "functions.parse_snapshot"),
    "triage": (queues.PARSED, "functions.triage_incident"),
    "blocklist": (queues.MANIFESTS, "functions.check_blocklists"),
    "dispatch": (queues.APPROVALS, "functions.dispatch_approval"),
}

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
