"""What every handler shares: Powertools' logger, metrics and tracer, and the SQS batch loop around one step."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from adapters.names import MAX_RECEIVES
from functions.errors import PoisonEvent
from functions.events import ObjectRef, objects_in
from functions.settings import Common, load
from pipeline.errors import SpoolsweepError
from pipeline.service import StepResult

NAMESPACE = "spoolsweep"

StepFn = Callable[[ObjectRef, SQSRecord], StepResult]
Handler = Callable[[dict, Any], dict]
S = TypeVar("S", bound=Common)


class BatchHandler:
    """A Lambda handler for an SQS batch, with the processor that says why records failed (runners read it)."""

    def __init__(self, handler: Handler, processor: BatchProcessor) -> None:
        self._handler = handler
        self.processor = processor

    def __call__(self, event: dict, context: Any) -> dict:
        return self._handler(event, context)


class ColdStart(Generic[S]):
    """A module's Lambda handler, built from its settings model on first use and kept while the container is warm.

    In Lambda it is built at import, so bad settings fail the cold start with one clear error. A local
    runtime asks for `configured(store=..., ...)`: its settings as values, never through the environment.
    """

    def __init__(self, build: Callable[[S], Handler], model: type[S]) -> None:
        self._build = build
        self._model = model
        self._built: Handler | None = None
        if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
            self.built()

    def built(self) -> Handler:
        if self._built is None:
            self._built = self._build(load(self._model))
        return self._built

    def configured(self, **values: Any) -> Handler:
        """A handler of its own with these settings (the environment supplies only what they leave out)."""
        return self._build(load(self._model, **values))

    def reset(self) -> None:
        """Forget the settings and clients, as a new container would."""
        self._built = None

    def __call__(self, event: dict, context: Any) -> dict:
        return self.built()(event, context)


class Powertools:
    """Logger, metrics and tracer of one function, and its SQS handler built around a step."""

    def __init__(self, step: str, counted: str | None = None) -> None:
        self.step = step
        self.counted = counted  # the metric a step's result count is added to (MessagesParsed, ...)
        self.logger = Logger(service=f"spoolsweep-{step}")
        self.metrics = Metrics(namespace=NAMESPACE, service=step)
        self.tracer = Tracer(service=f"spoolsweep-{step}")

    def handler(self, on_object: StepFn, s: Common) -> BatchHandler:
        """A Lambda handler that runs on_object for every S3 object named in an SQS batch.

        Each failing record is reported alone (partial batch response), so SQS retries only it and
        its redrive policy moves it to the dead-letter queue after MAX_RECEIVES attempts; the reason
        is logged every time, with whether it can ever succeed. Settings say how loud: the log level,
        and whether CloudWatch metrics (EMF lines on stdout) are written at all.
        """
        processor = BatchProcessor(event_type=EventType.SQS)
        logger, tracer = self.logger, self.tracer
        if s.log_level:
            logger.setLevel(s.log_level.upper())
        traced = tracer.capture_method(on_object)
        counted = self.counted

        def count(name: str, value: int) -> None:
            if s.metrics:
                self.metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)

        def record_handler(record: SQSRecord) -> None:
            try:
                refs = objects_in(record)
                if not refs:
                    logger.info("skipped: S3 test event or nothing created", message_id=record.message_id)
                for ref in refs:
                    result = traced(ref, record)
                    logger.info("done", key=ref.key, result=str(result))
                    count("ObjectsDone", 1)
                    if counted:
                        count(counted, result.count)
            except PoisonEvent as e:
                logger.error("poison event: goes to the dead-letter queue", reason=str(e),
                             message_id=record.message_id, receive_count=_receives(record),
                             max_receives=MAX_RECEIVES)
                count("PoisonEvents", 1)
                raise
            except SpoolsweepError as e:
                logger.warning("failed: will be retried", reason=str(e), message_id=record.message_id,
                               receive_count=_receives(record))
                count("Retries", 1)
                raise
            except Exception:
                logger.exception("failed: will be retried", message_id=record.message_id,
                                 receive_count=_receives(record))
                count("Retries", 1)
                raise

        @tracer.capture_lambda_handler(capture_response=False)
        def handler(event: dict, context: Any) -> dict:
            return dict(process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                                 context=context))

        if s.metrics:
            handler = self.metrics.log_metrics(handler)
        return BatchHandler(logger.inject_lambda_context(clear_state=True)(handler), processor)


class StepHandler:
    """A Lambda handler a Step Functions Task invokes directly: the state's payload in, the step's output out."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    def __call__(self, event: dict, context: Any) -> dict:
        return self._handler(event, context)


def step_handler(pt: Powertools, run: Callable[[dict], dict], s: Common) -> StepHandler:
    """A handler for one workflow step: logs what it did; an error fails the Task (Step Functions says which).

    Not retried here: the state machine retries Lambda's own transient errors, and a step's own error
    (a missing shard, a bad policy) would fail again the same way.
    """
    logger, tracer = pt.logger, pt.tracer
    if s.log_level:
        logger.setLevel(s.log_level.upper())
    traced = tracer.capture_method(run)

    @tracer.capture_lambda_handler(capture_response=False)
    def handler(event: dict, context: Any) -> dict:
        try:
            out = traced(event)
        except SpoolsweepError as e:
            logger.error("step failed", reason=str(e), payload=event)
            raise
        logger.info("done", payload=event, result=out.get("message", ""))
        if s.metrics and pt.counted and out.get("count"):
            pt.metrics.add_metric(name=pt.counted, unit=MetricUnit.Count, value=int(out["count"]))
        return out

    if s.metrics:
        handler = pt.metrics.log_metrics(handler)
    return StepHandler(logger.inject_lambda_context(clear_state=True)(handler))


def _receives(record: SQSRecord) -> int:
    try:
        return int(record.attributes.approximate_receive_count)
    except (TypeError, ValueError):
        return 1


def key_parts(ref: ObjectRef, queue: str, n: int) -> list[str]:
    """The n parts after the queue prefix of an event's key; a key of another shape is a poison event."""
    from pipeline.queues import parts_of

    try:
        return parts_of(ref.key, queue, n)
    except ValueError as e:
        raise PoisonEvent(str(e)) from None
