"""What every handler shares: Powertools' logger, metrics and tracer, and the SQS batch loop around one step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from functions.errors import PoisonEvent
from functions.events import ObjectRef, objects_in
from functions.names import MAX_RECEIVES
from pipeline.errors import SpoolsweepError

NAMESPACE = "spoolsweep"

StepFn = Callable[[ObjectRef, SQSRecord], str | None]


class Powertools:
    """Logger, metrics and tracer of one function, and its SQS handler built around a step."""

    def __init__(self, step: str) -> None:
        self.step = step
        self.logger = Logger(service=f"spoolsweep-{step}")
        self.metrics = Metrics(namespace=NAMESPACE, service=step)
        self.tracer = Tracer(service=f"spoolsweep-{step}")

    def handler(self, on_object: StepFn) -> Callable[[dict, Any], dict]:
        """A Lambda handler that runs on_object for every S3 object named in an SQS batch.

        Each failing record is reported alone (partial batch response), so SQS retries only it and
        its redrive policy moves it to the dead-letter queue after MAX_RECEIVES attempts; the reason
        is logged every time, with whether it can ever succeed.
        """
        processor = BatchProcessor(event_type=EventType.SQS)
        logger, metrics, tracer = self.logger, self.metrics, self.tracer
        traced = tracer.capture_method(on_object)

        def record_handler(record: SQSRecord) -> None:
            try:
                refs = objects_in(record)
                if not refs:
                    logger.info("skipped: S3 test event or nothing created", message_id=record.message_id)
                for ref in refs:
                    result = traced(ref, record)
                    logger.info("done", key=ref.key, result=result)
                    metrics.add_metric(name="ObjectsDone", unit=MetricUnit.Count, value=1)
            except PoisonEvent as e:
                logger.error("poison event: goes to the dead-letter queue", reason=str(e),
                             message_id=record.message_id, receive_count=_receives(record),
                             max_receives=MAX_RECEIVES)
                metrics.add_metric(name="PoisonEvents", unit=MetricUnit.Count, value=1)
                raise
            except SpoolsweepError as e:
                logger.warning("failed: will be retried", reason=str(e), message_id=record.message_id,
                               receive_count=_receives(record))
                metrics.add_metric(name="Retries", unit=MetricUnit.Count, value=1)
                raise
            except Exception:
                logger.exception("failed: will be retried", message_id=record.message_id,
                                 receive_count=_receives(record))
                metrics.add_metric(name="Retries", unit=MetricUnit.Count, value=1)
                raise

        @logger.inject_lambda_context(clear_state=True)
        @metrics.log_metrics
        @tracer.capture_lambda_handler(capture_response=False)
        def handler(event: dict, context: Any) -> dict:
            return dict(process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                                 context=context))

        handler.processor = processor  # type: ignore[attr-defined]  # runners read why records failed
        return handler


def _receives(record: SQSRecord) -> int:
    try:
        return int(record.attributes.approximate_receive_count)
    except (TypeError, ValueError):
        return 1


def key_parts(ref: ObjectRef, queue: str, n: int) -> list[str]:
    """The n parts after the queue prefix of an event's key; a key of another shape is a poison event."""
    from pipeline.queues import split_key

    try:
        q, parts = split_key(ref.key)
    except ValueError as e:
        raise PoisonEvent(str(e)) from None
    if q != queue or len(parts) != n or not all(parts):
        raise PoisonEvent(f"key {ref.key!r} is not {queue}/" + "/".join(["…"] * n))
    return parts
