"""Carry out verified instructions: plan, journal, replay and purge, write the receipt; resume after a crash."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agent.errors import AgentError, JournalError
from agent.journal import FINAL, ActionRow, Journal, Phase
from agent.mta.base import Deliverer, Queue, QueuedMessage
from agent.verify import Item, Lean, body_digest, check, parse_payload, signed_names
from pipeline import queues
from pipeline.errors import InstructionRefused, SpoolsweepError
from pipeline.instructions import Outcome, Receipt, ReceiptItem, SignedInstruction, public_key_problem
from pipeline.manifest_io import atomic_write
from pipeline.models import Envelope
from pipeline.queues import receipt_key
from pipeline.store import Channel, Store
from pipeline.text import neutral

log = logging.getLogger("spoolsweep.agent")
UNVERIFIED = "unverified"  # receipts/unverified/<host>/: refusals of bodies whose names cannot be trusted


class RateLimit:
    """At most `per_second` actions a second (0 = unlimited), so a replay does not flood the MTA."""

    def __init__(self, per_second: float = 0) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.next = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if now < self.next:
            time.sleep(self.next - now)
        self.next = max(now, self.next) + self.interval


@dataclass
class Agent:
    host: str
    queue: Queue
    journal: Journal
    store: Store
    public_key_pem: bytes
    deliverer: Deliverer | None = None
    quarantine: Path | None = None
    rate: RateLimit = field(default_factory=RateLimit)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    known_incident: Callable[[str], bool] | None = None
    batch: int = 100  # native releases per MTA command
    dead_letters: Path | None = None  # refused bodies; default: dead-letter/ beside the journal
    # `done` marks wait here and ride along with the next write: one fsync per message, not three
    _deferred: list[tuple[str, int, Phase, str]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if why := public_key_problem(self.public_key_pem):
            raise AgentError(f"the instruction key: {why}")

    def _set(self, row: ActionRow, phase: Phase, detail: str = "", defer: bool = False) -> None:
        """Record a phase. A deferred one may be lost in a crash only where its predecessor already on disk
        (`intent` or `commit`) leads the resumed run to the same end."""
        if defer:
            self._deferred.append((row.instruction_id, row.seq, phase, detail))
            return
        with self.journal.batch():
            self._flush()
            self.journal.set_phase(row.instruction_id, row.seq, phase, detail)

    def _flush(self) -> None:
        with self.journal.batch():
            for d in self._deferred:
                self.journal.set_phase(*d)
            self._deferred.clear()

    def _known(self, incident: str) -> bool:
        if self.known_incident is not None:
            return self.known_incident(incident)
        if self.journal.known_incident(incident):
            return True
        try:
            prefix = queues.incoming_prefix(incident, self.host)
        except ValueError:
            return False  # not a name any snapshot could have been uploaded under
        return next(iter(self.store.list(prefix)), None) is not None

    # one instruction ----------------------------------------------------------------------
    def handle(self, body: str) -> Receipt:
        """Verify and carry out one instruction body (as it came off the channel); always returns a receipt.

        Until the plan is in the journal nothing has been touched, so whatever goes wrong before then, foreseen
        (InstructionRefused) or not (a parser's RecursionError, a bug), refuses this one message: poison on the
        channel never stops the agent. Once planned, a failure is the host's and the journal resumes it."""
        started = self.clock()
        try:
            ins, state = check(body, self.public_key_pem, self.host, started, self.journal, self._known)
            if state is None:
                self._plan(ins, body)
        except InstructionRefused as e:
            return self._refuse(body, started, e.detail)
        except JournalError:
            raise
        except Exception as e:  # see the docstring
            return self._refuse(body, started, f"unreadable: {type(e).__name__}: {_first_line(e)}")
        return self._execute(ins)

    def _refuse(self, body: str, started: datetime, reason: str) -> Receipt:
        """A refusal receipt, named from what the agent can trust: a good signature's names, else the body's
        digest under receipts/unverified/; the body itself goes to the dead-letter folder."""
        reason = neutral(reason)[:2000]
        digest = body_digest(body)
        names = signed_names(body, self.public_key_pem)
        incident, iid = names or (UNVERIFIED, UNVERIFIED)
        log.warning("instruction refused: %s (instruction %s, incident %s, body sha256 %s)",
                    reason, iid, incident, digest[:16])
        self.journal.record_refusal(digest, names[1] if names else None, reason)
        self._dead_letter(body, digest, reason)
        receipt = Receipt(instruction_id=iid, incident=incident, host=self.host, started_at=started,
                          finished_at=self.clock(), refused=reason)
        # a refusal never overwrites the receipt of an instruction that was carried out
        key = receipt_key(incident, self.host, f"{iid}.refused-{digest[:12]}")
        self.store.put_if_absent(key, receipt.model_dump_json(indent=1).encode())
        return receipt

    def _dead_letter(self, body: str, digest: str, reason: str) -> None:
        """Keep the refused body for a human, once, in a folder only the agent can read."""
        folder = self.dead_letters or self.journal.path.parent / "dead-letter"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / f"{digest}.msg"
        if not path.exists():
            atomic_write(path, body.encode("utf-8", "surrogateescape"))
            atomic_write(path.with_suffix(".reason"), (reason + "\n").encode())

    def _plan(self, ins: Lean, body: str) -> None:
        """Check every message against the frozen queue before touching any; record the plan in one go."""
        plan: list[tuple[str, str, str, str | None, str, Phase, str]] = []
        for action, items in (("replay", ins.replay), ("purge", ins.purge)):
            for m in items:
                phase, detail = Phase.pending, ""
                other = self.journal.done_elsewhere(m.path, m.sha256, action, ins.instruction_id)
                try:
                    qm = self.queue.locate(m.path, m.queue_id)
                    unsafe = ""
                except SpoolsweepError as e:  # a link or a device where the message was: never touched
                    qm, unsafe = None, str(e)
                if other is not None:
                    phase, detail = Phase.refused, f"already {action}ed by instruction {other}"
                elif unsafe:
                    phase, detail = Phase.refused, unsafe
                elif qm is None:
                    phase, detail = Phase.missing, f"not in the frozen queue ({m.queue_id or m.path})"
                elif qm.sha256 != m.sha256:
                    phase, detail = Phase.refused, (f"digest mismatch: reviewed {m.sha256[:16]}…, "
                                                    f"on disk {qm.sha256[:16]}…; left untouched")
                elif action == "replay" and not (m.rcpt_to if m.rcpt_to is not None
                                                 else self.queue.full_envelope(qm).rcpt_to):
                    phase, detail = Phase.refused, "no recipients in the envelope"
                if phase != Phase.pending:
                    log.warning("%s %s: %s", action, m.id, detail)
                plan.append((m.id, action, m.path, m.queue_id, m.sha256, phase, detail))
        self.journal.begin(ins.instruction_id, ins.incident, body, plan)
        log.info("instruction %s verified: %d to replay, %d to purge, %d refused or missing", ins.instruction_id,
                 len(ins.replay), len(ins.purge), sum(1 for p in plan if p[5] is not Phase.pending))

    def _execute(self, ins: Lean) -> Receipt:
        envelopes = {m.id: m for m in ins.replay}
        batch: list[ActionRow] = []
        rows = [r for r in self.journal.actions(ins.instruction_id) if r.phase not in FINAL]
        for i, row in enumerate(rows):
            if self._batchable(row):
                batch.append(row)
                nxt = rows[i + 1] if i + 1 < len(rows) else None
                if len(batch) < self.batch and nxt is not None and self._batchable(nxt):
                    continue
                self._release_batch(batch)
                batch = []
                continue
            try:
                if row.action == "replay":
                    self._replay(row, envelopes.get(row.msg_id))
                else:
                    self._purge(row, ins.quarantine)
            except SpoolsweepError as e:
                log.error("%s %s failed: %s", row.action, row.msg_id, e)
                self._set(row, Phase.failed, str(e))
            except OSError as e:
                log.error("%s %s failed: %s", row.action, row.msg_id, e)
                self._set(row, Phase.failed, f"{type(e).__name__}: {e}")
        if self.deliverer is not None:
            self.deliverer.close()
        self.queue.flush()
        with self.journal.batch():
            self._flush()
            self.journal.finish(ins.instruction_id)
        return self._receipt(ins.instruction_id, ins.incident)

    def _batchable(self, row: ActionRow) -> bool:
        return (row.action == "replay" and row.phase == Phase.pending and self.deliverer is None
                and hasattr(self.queue, "release_many"))

    def _release_batch(self, rows: list[ActionRow]) -> None:
        """Many native releases with one journal write and one MTA command (postsuper -H -)."""
        ready: list[tuple[ActionRow, QueuedMessage]] = []
        for row in rows:
            qm = self._current(row)
            if qm is None:
                self._set(row, Phase.missing, "gone from the queue before replay")
                continue
            self.rate.wait()
            ready.append((row, qm))
        if not ready:
            return
        with self.journal.batch():
            self._flush()
            for row, _ in ready:
                self.journal.set_phase(row.instruction_id, row.seq, Phase.intent)
        try:
            self.queue.release_many([qm for _, qm in ready])  # type: ignore[attr-defined]
        except (SpoolsweepError, OSError) as e:
            # some may have been released: go one by one (release is idempotent) to say which
            log.error("releasing %d messages at once failed (%s); one by one", len(ready), e)
            for row, qm in ready:
                try:
                    self.queue.release(qm, lambda: None, Phase.intent)
                    self._set(row, Phase.done, "released to the MTA", defer=True)
                except (SpoolsweepError, OSError) as e1:
                    self._set(row, Phase.failed, f"release failed: {e1}")
            return
        for row, _ in ready:
            self._set(row, Phase.done, "released to the MTA", defer=True)
        log.info("released %d messages", len(ready))

    def _current(self, row: ActionRow) -> QueuedMessage | None:
        qm = self.queue.locate(row.path, row.queue_id)
        if qm is not None and qm.sha256 != row.sha256:
            return None  # the name now holds another message (queue ids are reused): ours is gone
        return qm

    def _replay(self, row: ActionRow, item: Item | None) -> None:
        qm = self._current(row)
        if row.phase == Phase.pending:
            if qm is None:
                self._set(row, Phase.missing, "gone from the queue before replay")
                return
            self.rate.wait()
            if self.deliverer is None:
                # a native release leaves no trace in the queue to tell "released by us" from "gone": say so first
                self._set(row, Phase.intent)
        resumed = None if row.phase is Phase.pending else row.phase

        def commit() -> None:
            self._set(row, Phase.commit)

        if self.deliverer is None:
            stub = qm or QueuedMessage(row.path, row.queue_id, Envelope(), row.sha256, 0)
            self.queue.release(stub, commit, resumed)
            detail = "released to the MTA"
        else:
            key = f"{row.instruction_id}/{row.seq}"
            status, detail = ("unsent", "") if resumed is not Phase.commit else self.deliverer.resolve(key)
            if status == "unsent":
                if qm is None:
                    self._set(row, Phase.missing, "gone from the queue before replay")
                    return
                if item is not None and item.rcpt_to:
                    env = Envelope(mail_from=item.mail_from, rcpt_to=list(item.rcpt_to))
                else:
                    env = self.queue.full_envelope(qm)
                answer = self.deliverer.send(self.queue.content(qm), env, commit, key)
                detail = f"re-injected: {answer.strip()[:120]}"
            elif status != "delivered":
                log.error("replay %s %s: %s", row.msg_id, status, detail)
                self._set(row, Phase.failed, f"{status}: {detail}")
                return
            if qm is not None:
                self.queue.after_reinjection(qm)
        self._set(row, Phase.done, detail, defer=True)
        log.info("replayed %s (%s)", row.msg_id, detail)

    def _purge(self, row: ActionRow, quarantine: bool) -> None:
        qm = self._current(row)
        if row.phase == Phase.pending:
            if qm is None:
                self._set(row, Phase.missing, "gone from the queue before purge")
                return
            self._set(row, Phase.intent)
        detail = "purged"
        if qm is not None:
            if quarantine and self.quarantine is not None:
                dest = self.queue.quarantine(qm, self.quarantine)
                detail = f"purged (quarantined as {dest.name})"
            self.queue.remove(qm)
        self._set(row, Phase.done, detail, defer=True)
        log.info("purged %s", row.msg_id)

    # receipts -----------------------------------------------------------------------------
    def _receipt(self, instruction_id: str, incident: str) -> Receipt:
        started, finished = self.journal.times(instruction_id)
        items = []
        for a in self.journal.actions(instruction_id):
            outcome = {Phase.done: Outcome.replayed if a.action == "replay" else Outcome.purged,
                       Phase.missing: Outcome.missing, Phase.refused: Outcome.refused}.get(a.phase, Outcome.failed)
            items.append(ReceiptItem(id=a.msg_id, sha256=a.sha256, outcome=outcome, detail=a.detail))
        receipt = Receipt(instruction_id=instruction_id, incident=incident, host=self.host,
                          started_at=datetime.fromisoformat(started),
                          finished_at=datetime.fromisoformat(finished) if finished else None, items=items)
        self.store.put(receipt_key(incident, self.host, instruction_id), receipt.model_dump_json(indent=1).encode())
        self.journal.receipt_written(instruction_id)
        c = receipt.counts()
        log.info("instruction %s finished: %s", instruction_id, ", ".join(f"{k} {v}" for k, v in c.items() if v))
        return receipt

    # the daemon ---------------------------------------------------------------------------
    def resume(self) -> list[Receipt]:
        """Finish what a crash interrupted, before reading anything new."""
        out = []
        for iid, body in self.journal.unfinished():
            log.info("resuming instruction %s", iid)
            ins = parse_payload(SignedInstruction.model_validate_json(body).payload)
            out.append(self._execute(ins))
        return out

    def run(self, channel: Channel, wait_seconds: float = 20, once: bool = False,
            stop: threading.Event | None = None) -> list[Receipt]:
        """Long-poll the channel; with `once`, stop when it is empty."""
        receipts = self.resume()
        stop = stop or threading.Event()
        transient = _channel_errors()
        pause = 1.0
        while not stop.is_set():
            try:
                msgs = channel.receive(self.host, max_messages=1, wait_seconds=0 if once else wait_seconds)
            except transient as e:
                # a network blip or a throttled queue ended the daemon; with --once it is the command's error.
                # One that waiting does not mend (no credentials, access denied) is the command's error too:
                # retried, it was a warning a minute for ever while no instruction could come
                if once or _lasting(e):
                    raise
                log.warning("the instruction channel failed (%s); trying again in %.0f s", _first_line(e), pause)
                stop.wait(pause)
                pause = min(pause * 2, 60.0)
                continue
            pause = 1.0
            if not msgs:
                if once:
                    break
                continue
            for m in msgs:
                receipts.append(self.handle(m.body))
                # deleted only once its receipt is written: a crash before this means it comes back
                try:
                    channel.delete(self.host, m.receipt)
                except transient as e:
                    log.warning("instruction message not deleted from the channel (%s): it comes back, and the "
                                "journal keeps it from running twice", _first_line(e))
        return receipts


def _channel_errors() -> tuple[type[BaseException], ...]:
    """What a channel raises when the way to it fails for a while: OSError, and botocore's errors for SQS (an
    agent that only uses a local channel has no botocore)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError, ClientError)


# What AWS answers when the agent's credentials, permissions or settings are wrong: waiting mends none of them
LASTING_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "AuthFailure", "IncompleteSignature", "InvalidAccessKeyId",
    "InvalidClientTokenId", "InvalidSecurity", "MissingAuthenticationToken", "NotAuthorized", "OptInRequired",
    "SignatureDoesNotMatch", "UnrecognizedClientException", "ExpiredToken", "ExpiredTokenException",
    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "InvalidAddress", "KMS.AccessDeniedException",
    "KMS.DisabledException", "KMS.NotFoundException"})


def _lasting(e: BaseException) -> bool:
    """Whether a channel error is one that waiting does not mend (`LASTING_CODES`; no credentials, no region, a
    profile or parameter botocore refuses), rather than a network blip or a throttled queue."""
    try:
        from botocore.exceptions import (
            ClientError,
            NoCredentialsError,
            NoRegionError,
            ParamValidationError,
            PartialCredentialsError,
            ProfileNotFound,
            UnknownServiceError,
        )
    except ImportError:
        return False
    if isinstance(e, ClientError):
        return e.response.get("Error", {}).get("Code", "") in LASTING_CODES
    return isinstance(e, (NoCredentialsError, NoRegionError, ParamValidationError, PartialCredentialsError,
                          ProfileNotFound, UnknownServiceError))


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0][:300]
