"""Local runtimes that feed the Lambda handlers the event JSON Lambda would: from a store directory, or SQS.

Like Lambda itself, a runtime finds a step's handler by the module name adapters/names.py gives it
(the template names the same), and hands it settings as values: `LocalRunner(root, settings={...})`.

LocalRunner is the embedded default's engine: it watches the store's trigger prefixes, turns every
new object into the S3-notification-in-an-SQS-record that AWS would deliver, and calls the step's
handler with a batch. What it has handled is journaled under <store>/.runner/, so a restart
resumes; a record that fails MAX_RECEIVES times is moved to <store>/.runner/dlq/ with its reason,
as SQS's redrive policy would. SqsRunner does the same from real (or moto) SQS queues.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from adapters import names
from pipeline.manifest_io import atomic_write

Handler = Callable[[dict, Any], dict]
# what a runtime on a terminal wants unless told otherwise: each step's result is shown by the runner, and
# there is no CloudWatch to read metrics (EMF lines on stdout) from
QUIET: dict[str, object] = {"log_level": "WARNING", "metrics": False}


def s3_notification(bucket: str, key: str, size: int, etag: str, region: str = "local",
                    when: datetime | None = None) -> dict:
    """The notification S3 would send for a new object (AWS's full shape, key encoded as AWS does)."""
    when = when or datetime.now(UTC)
    seq = hashlib.sha256(f"{key}\n{etag}".encode()).hexdigest()[:16].upper()
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": region,
        "eventTime": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "spoolsweep-local"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": seq, "x-amz-id-2": seq},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "spoolsweep-local",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "spoolsweep-local"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag, "sequencer": seq}},
    }]}


def sqs_record(body: str, queue: str, message_id: str | None = None, receive_count: int = 1,
               region: str = "local") -> dict:
    """One record of the event Lambda's SQS poller hands a function."""
    now = str(int(datetime.now(UTC).timestamp() * 1000))
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": message_id or str(uuid.uuid4()),
        "body": body,
        "attributes": {"ApproximateReceiveCount": str(receive_count), "SentTimestamp": now,
                       "SenderId": "spoolsweep-local", "ApproximateFirstReceiveTimestamp": now},
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{region}:000000000000:{queue}",
        "awsRegion": region,
    }


@dataclass
class LocalContext:
    """The parts of Lambda's context object that Powertools reads."""

    function_name: str
    memory_limit_in_mb: int = 1024
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    invoked_function_arn: str = ""
    deadline: float = field(default_factory=lambda: time.monotonic() + 900)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def handler_for(step: str, settings: Mapping[str, object] | None = None) -> Handler:
    """A step's handler: the module's own (settings from the environment, as in Lambda), or one built with
    these settings (values win over the environment; nothing is written to it)."""
    entry = importlib.import_module(names.STEPS[step][1]).handler
    return entry.configured(**settings) if settings else entry


def reset_handlers() -> None:
    """Forget every handler's cold-start state (settings, clients), as a new Lambda container would."""
    for _, mod in names.STEPS.values():
        importlib.import_module(mod).handler.reset()


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def invoke(step: str, records: list[dict], handler: Handler | None = None) -> Outcome:
    """Call a step's handler with one SQS batch; which message ids succeeded and why the others failed."""
    handler = handler or handler_for(step)
    ctx = LocalContext(function_name=names.function_name(step))
    try:
        resp = handler({"Records": records}, ctx)
        failed_ids = [f["itemIdentifier"] for f in resp.get("batchItemFailures", [])]
    except BatchProcessingError:
        failed_ids = [r["messageId"] for r in records]
    built = getattr(handler, "built", None)  # a module's handler, built at its cold start
    proc = getattr(built() if callable(built) else handler, "processor", None)
    reasons: dict[str, str] = {}
    if proc is not None:
        for rec, exc in zip(proc.fail_messages, proc.exceptions, strict=False):
            reasons[rec.message_id] = f"{exc[0].__name__ if exc[0] else 'Error'}: {exc[1]}"
    out = Outcome()
    for r in records:
        mid = r["messageId"]
        if mid in failed_ids:
            out.failed[mid] = reasons.get(mid, "failed")
        else:
            out.done.append(mid)
    return out


def _key_of(record: dict) -> str:
    try:
        return str(json.loads(record["body"])["Records"][0]["s3"]["object"]["key"])
    except (ValueError, KeyError, IndexError, TypeError):
        return f"message {record.get('messageId')}"


class LocalRunner:
    """Watches a store directory and drives new objects through the handlers, durably."""

    def __init__(self, root: Path, bucket: str = "spoolsweep-local", settle: float = 0.5, batch_size: int = 10,
                 max_receives: int = names.MAX_RECEIVES, on_result: Callable[[str, str, str], None] | None = None,
                 settings: Mapping[str, object] | None = None):
        self.root = Path(root)
        self.settings = {**QUIET, **(settings or {})}
        self._handlers: dict[str, Handler] = {}
        self.bucket = bucket
        self.settle = settle
        self.batch_size = batch_size
        self.max_receives = max_receives
        self.on_result = on_result or (lambda step, key, result: None)
        self.state = self.root / ".runner"
        self.state.mkdir(parents=True, exist_ok=True)
        self.journal = self.state / "done.jsonl"
        self.done: set[str] = set()
        if self.journal.exists():
            self.done = {json.loads(line)["id"] for line in self.journal.read_text().splitlines() if line.strip()}
        self.attempts: dict[str, int] = {}
        self.timings: dict[str, float] = {}

    def handler(self, step: str) -> Handler:
        if step not in self._handlers:
            self._handlers[step] = handler_for(step, self.settings)
        return self._handlers[step]

    def dead(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.state / "dlq").glob("*/*.json"))]

    def _event_id(self, key: str, etag: str) -> str:
        return hashlib.sha256(f"{key}\n{etag}".encode()).hexdigest()[:32]

    def pending(self) -> list[tuple[str, str, int, str]]:
        """(step, key, size, etag) of every object that has not triggered its step yet."""
        out = []
        now = time.time()
        for step, (prefix, _) in names.STEPS.items():
            base = self.root / prefix
            if not base.is_dir():
                continue
            for p in sorted(base.rglob("*")):
                if not p.is_file() or any(part.startswith(".") for part in p.relative_to(self.root).parts):
                    continue
                st = p.stat()
                if now - st.st_mtime < self.settle:
                    continue  # a file still being copied in by hand
                key = p.relative_to(self.root).as_posix()
                etag = f"{st.st_size:x}-{st.st_mtime_ns:x}"
                eid = self._event_id(key, etag)
                if eid not in self.done and not (self.state / "dlq" / step / f"{eid}.json").exists():
                    out.append((step, key, st.st_size, etag))
        return out

    def record(self, step: str, key: str, size: int, etag: str, message_id: str | None = None) -> dict:
        body = json.dumps(s3_notification(self.bucket, key, size, etag))
        eid = message_id or self._event_id(key, etag)
        return sqs_record(body, names.event_queue(step), message_id=eid,
                          receive_count=self.attempts.get(eid, 0) + 1)

    def deliver(self, step: str, records: list[dict]) -> Outcome:
        """Hand one batch to a step; journal the successes, count the failures, dead-letter the hopeless."""
        t0 = time.perf_counter()
        out = invoke(step, records, self.handler(step))
        self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - t0
        with open(self.journal, "a", encoding="utf-8") as fh:
            for mid in out.done:
                fh.write(json.dumps({"id": mid, "step": step}) + "\n")
                self.done.add(mid)
        by_id = {r["messageId"]: r for r in records}
        for mid, why in out.failed.items():
            self.attempts[mid] = self.attempts.get(mid, 0) + 1
            if self.attempts[mid] >= self.max_receives:
                atomic_write(self.state / "dlq" / step / f"{mid}.json",
                             json.dumps({"step": step, "reason": why, "record": by_id[mid]}, indent=1).encode())
        for r in records:
            self.on_result(step, _key_of(r), "ok" if r["messageId"] in out.done else out.failed[r["messageId"]])
        return out

    def run_once(self) -> int:
        """Deliver everything pending, earliest step first; how many events were delivered."""
        n = 0
        todo = self.pending()
        for step in names.STEPS:
            mine = [self.record(s, k, size, etag) for s, k, size, etag in todo if s == step]
            for i in range(0, len(mine), self.batch_size):
                self.deliver(step, mine[i:i + self.batch_size])
                n += len(mine[i:i + self.batch_size])
        return n

    def run_until_idle(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while self.run_once():
            if time.monotonic() > deadline:
                raise TimeoutError("the pipeline did not settle")

    def serve(self, stop: Callable[[], bool], interval: float = 0.5) -> None:
        while not stop():
            if not self.run_once():
                time.sleep(interval)


class SqsRunner:
    """Polls each step's SQS queue and hands the messages to the handler, as Lambda's event source mapping does."""

    def __init__(self, sqs: Any, prefix: str = names.PREFIX, region: str = "us-east-1",
                 steps: Iterable[str] = (), settings: Mapping[str, object] | None = None) -> None:
        self.sqs = sqs
        self.settings = {**QUIET, **(settings or {})}
        self._handlers: dict[str, Handler] = {}
        self.prefix = prefix
        self.region = region
        self.steps = [s for s in names.STEPS if s in set(steps)] if steps else list(names.STEPS)
        self.urls = {s: sqs.get_queue_url(QueueName=names.event_queue(s, prefix))["QueueUrl"] for s in self.steps}

    def handler(self, step: str) -> Handler:
        if step not in self._handlers:
            self._handlers[step] = handler_for(step, self.settings)
        return self._handlers[step]

    def _lambda_record(self, step: str, m: dict) -> dict:
        rec = sqs_record(m["Body"], names.event_queue(step, self.prefix), message_id=m["MessageId"],
                         region=self.region)
        rec["receiptHandle"] = m["ReceiptHandle"]
        rec["attributes"].update(m.get("Attributes", {}))
        return rec

    def poll(self, step: str, wait: int = 0) -> list[dict]:
        r = self.sqs.receive_message(QueueUrl=self.urls[step], MaxNumberOfMessages=10, WaitTimeSeconds=wait,
                                     AttributeNames=["All"], MessageAttributeNames=["All"])
        return [self._lambda_record(step, m) for m in r.get("Messages", [])]

    def deliver(self, step: str, records: Iterable[dict]) -> Outcome:
        records = list(records)
        out = invoke(step, records, self.handler(step))
        handles = {r["messageId"]: r["receiptHandle"] for r in records}
        for mid in out.done:
            self.sqs.delete_message(QueueUrl=self.urls[step], ReceiptHandle=handles[mid])
        for mid in out.failed:
            # back on the queue at once; the queue's redrive policy dead-letters it after MAX_RECEIVES
            self.sqs.change_message_visibility(QueueUrl=self.urls[step], ReceiptHandle=handles[mid],
                                               VisibilityTimeout=0)
        return out

    def run_once(self) -> int:
        n = 0
        for step in self.steps:
            while batch := self.poll(step):
                self.deliver(step, batch)
                n += len(batch)
        return n

    def run_until_idle(self, timeout: float = 300.0, quiet_rounds: int = 3) -> None:
        deadline, quiet = time.monotonic() + timeout, 0
        while quiet < quiet_rounds:
            if time.monotonic() > deadline:
                raise TimeoutError("the queues did not drain")
            quiet = 0 if self.run_once() else quiet + 1
            if quiet:
                time.sleep(0.2)
