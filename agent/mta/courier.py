"""The SMTP courier: a small process of its own that carries one message at a time to the MTA and writes down
how each hand-over ended, so a SIGKILL of the agent never leaves a message half-known.

Over SMTP the point of no return is the final dot, and whether the MTA kept the message is known only
from its reply. The agent journals `commit` before it hands a message to the courier; the courier, in
its own session, writes `dot` before the final dot and the MTA's answer after it (fsync'd) to
courier.jsonl. When the agent is killed the courier finishes the message in hand, records it and exits
at the end of its input. The restarted agent waits for it (the lock), then reads what happened:
nothing recorded -> never handed over, send it; `ok` -> delivered, do not send again; `dot` with no
answer (the courier itself died) -> uncertain: reported, left frozen, never sent twice.

    python -m agent.mta.courier HOST PORT RESULTS LOCK    (reads JSON lines on stdin)
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from agent.errors import MtaError
from agent.mta.base import Commit, Deliverer
from pipeline.models import Envelope


class CourierDeliverer(Deliverer):
    """The agent's side: starts the courier, hands it messages, and asks it what happened after a crash."""

    def __init__(self, host: str, port: int, state_dir: Path, timeout: float = 300) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        state_dir.mkdir(parents=True, exist_ok=True)
        self.results = state_dir / "courier.jsonl"
        self.lock = state_dir / "courier.lock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._known: dict[str, dict] | None = None

    def _wait_for_old_courier(self) -> None:
        with open(self.lock, "a+b") as fh:
            end = time.monotonic() + self.timeout
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(fh, fcntl.LOCK_UN)
                    return
                except BlockingIOError:
                    if time.monotonic() > end:
                        raise MtaError(f"an earlier courier still holds {self.lock}") from None
                    time.sleep(0.05)

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None  # it died (its last record says how far it got); start another
        if self._proc is None:
            self._wait_for_old_courier()
            # a session of its own: a signal to the agent (or its process group) does not reach it
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "agent.mta.courier", self.host, str(self.port), str(self.results),
                 str(self.lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
                cwd=Path(__file__).resolve().parents[2])
        return self._proc

    def send(self, data: bytes, envelope: Envelope, commit: Commit, key: str = "") -> str:
        commit()
        p = self._start()
        assert p.stdin is not None and p.stdout is not None
        req = {"key": key, "envelope": envelope.model_dump(mode="json"), "data": base64.b64encode(data).decode()}
        try:
            p.stdin.write(json.dumps(req).encode() + b"\n")
            p.stdin.flush()
            line = p.stdout.readline()
        except OSError as e:
            raise MtaError(f"the courier stopped: {e}") from None
        if not line:
            raise MtaError(f"the courier stopped (exit {p.poll()})")
        rec = json.loads(line)
        if rec["state"] != "ok":
            raise MtaError(rec.get("detail", "refused"))
        return str(rec.get("reply", ""))

    def resolve(self, key: str) -> tuple[str, str]:
        """What became of a message handed over before a crash: unsent | delivered | failed | uncertain."""
        if self._known is None:
            if self._proc is None:
                self._wait_for_old_courier()
            self._known = {}
            if self.results.exists():
                for line in self.results.read_bytes().splitlines():
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by a crash
                    self._known[rec["key"]] = rec
        rec = self._known.get(key)
        if rec is None:
            return "unsent", "never handed to the MTA"
        if rec["state"] == "ok":
            return "delivered", f"re-injected (confirmed by the courier after a restart): {rec.get('reply', '')}"
        if rec["state"] == "error" and not rec.get("after_dot"):
            return "failed", rec.get("detail", "refused")
        return "uncertain", ("the MTA may or may not have kept it (the connection ended after the final dot); "
                             "left frozen and not sent again")

    def close(self) -> None:
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            self._proc.wait(timeout=self.timeout)
            self._proc = None


def _record(log: IO[bytes], rec: dict, sync: bool) -> None:
    log.write(json.dumps(rec).encode() + b"\n")
    log.flush()
    if sync:
        os.fsync(log.fileno())


def serve(host: str, port: int, results: Path, lock: Path) -> None:
    from agent.mta.smtp import SmtpDeliverer

    lock_fh = open(lock, "a+b")  # held for the life of the process
    fcntl.flock(lock_fh, fcntl.LOCK_EX)
    smtp = SmtpDeliverer(host, port)
    with open(results, "ab") as log:
        for line in sys.stdin.buffer:
            if not line.endswith(b"\n"):
                break  # the agent died while writing: this message was never handed over
            req = json.loads(line)
            key = req["key"]
            sent_dot = False

            def dot(key: str = key) -> None:
                nonlocal sent_dot
                _record(log, {"key": key, "state": "dot"}, sync=False)
                sent_dot = True

            try:
                reply = smtp.send(base64.b64decode(req["data"]), Envelope.model_validate(req["envelope"]), dot)
                rec = {"key": key, "state": "ok", "reply": reply.strip()[:200]}
            except MtaError as e:
                rec = {"key": key, "state": "error", "detail": str(e), "after_dot": sent_dot}
            _record(log, rec, sync=True)
            try:
                sys.stdout.write(json.dumps(rec) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                sys.stdout = open(os.devnull, "w")  # the agent is gone; it will read the record
    smtp.close()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
