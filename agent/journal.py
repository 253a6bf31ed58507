"""The agent's journal (SQLite, WAL, synchronous=FULL): every action is written before and after it happens.

A restart after SIGKILL reads it to resume: an action recorded as `intent` may or may not have
happened, one recorded as `commit` passed its point of no return, one recorded as `done` is over.
Adapters make the step between `intent` and `done` safe to repeat (see agent/mta/base.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from agent.errors import JournalError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instructions (
    instruction_id TEXT PRIMARY KEY,
    incident TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,             -- verified | done
    received_at TEXT NOT NULL,
    finished_at TEXT,
    receipt_written INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS actions (
    instruction_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    msg_id TEXT NOT NULL,
    action TEXT NOT NULL,            -- replay | purge
    path TEXT NOT NULL,
    queue_id TEXT,
    sha256 TEXT NOT NULL,
    phase TEXT NOT NULL,             -- pending | intent | commit | done | missing | refused | failed
    detail TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL,
    PRIMARY KEY (instruction_id, seq)
);
CREATE INDEX IF NOT EXISTS actions_by_sha ON actions (sha256, action, phase);
CREATE TABLE IF NOT EXISTS refusals (
    body_sha256 TEXT PRIMARY KEY,
    instruction_id TEXT,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    incident TEXT NOT NULL,
    host TEXT NOT NULL,
    state TEXT NOT NULL,             -- freezing | frozen | packed | uploading | uploaded
    mta TEXT NOT NULL,
    archive TEXT,
    archive_sha256 TEXT,
    messages INTEGER,
    bytes INTEGER,
    destination TEXT,
    upload_state TEXT,               -- JSON: multipart upload id and finished parts
    updated_at TEXT NOT NULL,
    PRIMARY KEY (incident, host)
);
"""


class Phase(StrEnum):
    """Where one action stands (the `phase` column of `actions`)."""

    pending = "pending"  # planned; nothing done yet
    intent = "intent"  # about to act: it may or may not have happened
    commit = "commit"  # past its point of no return
    done = "done"
    missing = "missing"  # not in the queue
    refused = "refused"  # never attempted: unsafe, done by another instruction, or not the message reviewed
    failed = "failed"


FINAL = frozenset({Phase.done, Phase.missing, Phase.refused, Phase.failed})
STARTED = (Phase.intent, Phase.commit, Phase.done)  # the action may have happened


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class ActionRow:
    instruction_id: str
    seq: int
    msg_id: str
    action: str
    path: str
    queue_id: str | None
    sha256: str
    phase: Phase
    detail: str


class Journal:
    """One SQLite file; each write is its own fsync'd transaction unless grouped with `batch()`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before we act on it; that is the whole point of the journal
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise JournalError(f"{self.path}: {e}") from None
        self._depth = 0

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group writes into one transaction (one fsync)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0
        self.db.execute("COMMIT")

    # instructions -------------------------------------------------------------------------
    def instruction_state(self, instruction_id: str) -> tuple[str, str | None] | None:
        row = self.db.execute("SELECT state, finished_at FROM instructions WHERE instruction_id=?",
                              (instruction_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def begin(self, instruction_id: str, incident: str, body: str,
              plan: list[tuple[str, str, str, str | None, str, Phase, str]]) -> None:
        """Record a verified instruction and its plan (msg_id, action, path, queue_id, sha256, phase, detail)."""
        now = _now()
        with self.batch():
            self.db.execute("INSERT INTO instructions (instruction_id, incident, body, state, received_at) "
                            "VALUES (?,?,?,?,?)", (instruction_id, incident, body, "verified", now))
            self.db.executemany(
                "INSERT INTO actions (instruction_id, seq, msg_id, action, path, queue_id, sha256, phase, detail, "
                "updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(instruction_id, i, *p, now) for i, p in enumerate(plan)])

    def set_phase(self, instruction_id: str, seq: int, phase: Phase, detail: str = "") -> None:
        self.db.execute("UPDATE actions SET phase=?, detail=?, updated_at=? WHERE instruction_id=? AND seq=?",
                        (phase, detail, _now(), instruction_id, seq))

    def finish(self, instruction_id: str) -> None:
        self.db.execute("UPDATE instructions SET state='done', finished_at=? WHERE instruction_id=?",
                        (_now(), instruction_id))

    def receipt_written(self, instruction_id: str) -> None:
        self.db.execute("UPDATE instructions SET receipt_written=1 WHERE instruction_id=?", (instruction_id,))

    def unfinished(self) -> list[tuple[str, str]]:
        """(instruction_id, body) of instructions verified but not finished, or finished without a receipt."""
        return [(r[0], r[1]) for r in self.db.execute(
            "SELECT instruction_id, body FROM instructions WHERE state!='done' OR receipt_written=0 "
            "ORDER BY received_at")]

    def actions(self, instruction_id: str) -> list[ActionRow]:
        return [ActionRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], self._phase(r[7]), r[8]) for r in self.db.execute(
            "SELECT instruction_id, seq, msg_id, action, path, queue_id, sha256, phase, detail FROM actions "
            "WHERE instruction_id=? ORDER BY seq", (instruction_id,))]

    def _phase(self, value: str) -> Phase:
        try:
            return Phase(value)
        except ValueError:
            raise JournalError(f"{self.path}: unknown phase {value!r} (a journal of another version?)") from None

    def times(self, instruction_id: str) -> tuple[str, str | None]:
        r = self.db.execute("SELECT received_at, finished_at FROM instructions WHERE instruction_id=?",
                            (instruction_id,)).fetchone()
        return r[0], r[1]

    def done_elsewhere(self, path: str, sha256: str, action: str, instruction_id: str) -> str | None:
        """The instruction that already did this action to this message (same place, same digest), if any."""
        r = self.db.execute("SELECT instruction_id FROM actions WHERE sha256=? AND path=? AND action=? AND phase "
                            "IN (?,?,?) AND instruction_id!=? LIMIT 1",
                            (sha256, path, action, *STARTED, instruction_id)).fetchone()
        return None if r is None else r[0]

    def record_refusal(self, body_sha256: str, instruction_id: str | None, reason: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO refusals VALUES (?,?,?,?)",
                        (body_sha256, instruction_id, reason, _now()))

    # snapshots ----------------------------------------------------------------------------
    def snapshot(self, incident: str, host: str) -> dict | None:
        cur = self.db.execute("SELECT * FROM snapshots WHERE incident=? AND host=?", (incident, host))
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row, strict=True))

    def set_snapshot(self, incident: str, host: str, **fields: object) -> None:
        fields["updated_at"] = _now()
        if self.snapshot(incident, host) is None:
            cols = ["incident", "host", *fields]
            self.db.execute(f"INSERT INTO snapshots ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",  # noqa: S608 - column names are ours
                            (incident, host, *fields.values()))
        else:
            sets = ",".join(f"{k}=?" for k in fields)
            self.db.execute(f"UPDATE snapshots SET {sets} WHERE incident=? AND host=?",  # noqa: S608
                            (*fields.values(), incident, host))

    def forget_snapshot(self, incident: str, host: str) -> None:
        """No snapshot begun for this incident and host (its freeze was refused before anything moved)."""
        self.db.execute("DELETE FROM snapshots WHERE incident=? AND host=?", (incident, host))

    def known_incident(self, incident: str) -> bool:
        return self.db.execute("SELECT 1 FROM snapshots WHERE incident=? AND state='uploaded'",
                               (incident,)).fetchone() is not None
