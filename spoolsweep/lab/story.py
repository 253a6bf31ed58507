"""The whole incident on one machine: flood a private Postfix (or a pickup folder), snapshot, triage, approve,
replay into a sink, purge, and check every message against the generator's ground truth."""

from __future__ import annotations

import json
import os
import re
import shlex
import smtplib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.generator import GenMessage, Incident
from pipeline.models import Manifest
from spoolsweep.lab.sink import Sink, body_of

INCIDENT, HOST = "demo", "mx1"
_MSGID = re.compile(rb"(?im)^message-id:[ \t]*(<[^>\r\n]*>)")
Say = Callable[[str], None]


def message_id(data: bytes) -> str:
    m = _MSGID.search(data.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0])
    return m.group(1).decode() if m else ""


def xtext(v: str) -> str:
    """RFC 1891 xtext, as XCLIENT wants its values."""
    return "".join(c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}" for c in v)


def password_of(user: str) -> str:
    return f"demo-{user}"  # the stolen password, as the spammer knows it


@dataclass
class Story:
    """Where one run of the story keeps its things (all under workdir)."""

    workdir: Path
    say: Say
    python: str = sys.executable
    commands: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # settings for the `spoolsweep` commands run (their environment)

    @property
    def store(self) -> Path:
        return self.workdir / "store"

    @property
    def state(self) -> Path:
        return self.workdir / "agent-state"

    def spoolsweep(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one `spoolsweep` command as an admin would, showing the command and what it printed."""
        shown = "spoolsweep " + " ".join(args)
        self.commands.append(shown)
        with (self.workdir / "commands.txt").open("a") as fh:  # what a test compares with the README's walkthroughs
            fh.write(shlex.join(["spoolsweep", *args]) + "\n")
        self.say(f"   [dim]$ {shown}[/]")
        env = {**os.environ, "COLUMNS": "120", "POWERTOOLS_LOG_LEVEL": "WARNING", **self.env}
        cp = subprocess.run([self.python, "-m", "spoolsweep", *args], capture_output=True, text=True, env=env,
                            timeout=900, check=False)
        for line in (cp.stdout + cp.stderr).splitlines():
            if line.strip():
                self.say(f"   │ {line}")
        if check and cp.returncode != 0:
            raise RuntimeError(f"`{shown}` failed with exit status {cp.returncode}")
        return cp

    def manifest(self) -> Manifest:
        """The incident's manifest, summary and parts, whole: the lab's incidents are small."""
        from pipeline.manifest_io import read_manifest
        from pipeline.store import LocalStore

        return read_manifest(LocalStore(self.store), INCIDENT)


def push_smtp(pf, messages: list[GenMessage], progress: Callable[[int], None] | None = None,
              threads: int = 8) -> Counter:
    """Send each message into Postfix over SMTP as its client did: XCLIENT for the client address, name and HELO,
    a real SMTP AUTH login for the authenticated ones. Returns how many went in by which way."""
    ways: Counter = Counter()

    def one(m: GenMessage) -> str:
        e = m.envelope
        # SMTP lines end in CRLF; smtplib sends bare LFs as they are and then adds a CRLF of its own at the end,
        # which would append an empty line to every LF-only message
        data = m.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        xc = {"ADDR": e.client_address or "127.0.0.1", "NAME": e.client_name or "[UNAVAILABLE]",
              "HELO": e.helo or "localhost"}
        login = None
        if e.sasl_username:
            login = (e.sasl_username, password_of(e.sasl_username))
        try:
            pf.send(e.mail_from or "", e.rcpt_to, data, xclient={k: xtext(v) for k, v in xc.items()}, login=login)
            return "auth" if login else "xclient"
        except (smtplib.SMTPException, RuntimeError):
            if not login:
                raise
            # no SASL here: XCLIENT LOGIN records the same sasl_username in the queue file
            xc["LOGIN"] = e.sasl_username or ""
            pf.send(e.mail_from or "", e.rcpt_to, data, xclient={k: xtext(v) for k, v in xc.items()})
            return "xclient-login"

    with ThreadPoolExecutor(threads) as ex:
        for i, way in enumerate(ex.map(one, messages), 1):
            ways[way] += 1
            if progress:
                progress(i)
    return ways


def wait_sink(sink: Sink, n: int, flush: Callable[[], None] | None, timeout: float = 120) -> None:
    """Wait until the sink has n messages (asking the MTA to flush meanwhile), then a little longer for stragglers
    (a duplicate would arrive now)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and len(sink.received) < n:
        if flush:
            flush()
        time.sleep(0.5)
    time.sleep(1.5)


def save_sink(sink: Sink, folder: Path) -> None:
    """What reached the sink, one file each, so a test can compare bytes on its own."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "envelopes.jsonl", "w", encoding="utf-8") as fh:
        for i, r in enumerate(sink.received):
            (folder / f"{i:06d}.eml").write_bytes(r.data)
            fh.write(json.dumps({"file": f"{i:06d}.eml", "mail_from": r.mail_from, "rcpt_to": r.rcpt_tos,
                                 "message_id": r.message_id}) + "\n")


def tally(inc: Incident, manifest: Manifest, sink: Sink, left: set[str], purged: int) -> dict:
    """Every generated message against what happened to it. `left`: Message-IDs still in the queue."""
    truth = {message_id(m.data): m for m in inc.messages}
    verdict = {m.message_id: m.verdict.value for m in manifest.messages}
    got = sink.message_ids()
    by_id = {r.message_id: r for r in sink.received}
    t: dict = {"messages": len(inc.messages), "purged_receipt": purged, "queue_left": len(left)}
    valid = {k for k, m in truth.items() if m.label == "valid"}
    spam = set(truth) - valid
    delivered = set(got) & set(truth)
    t["valid"] = len(valid)
    t["spam"] = len(spam)
    t["valid_delivered"] = len(valid & delivered)
    t["valid_held_for_review"] = len(valid & left)
    t["valid_lost"] = sorted(valid - delivered - left)
    t["spam_delivered"] = sorted(spam & delivered)
    t["spam_held_for_review"] = len(spam & left)
    t["spam_purged"] = len(spam - delivered - left)
    t["delivered_twice"] = sorted(k for k, c in got.items() if c > 1)
    t["delivered_unknown"] = sorted(set(got) - set(truth), key=str)
    t["engine_valid_not_delivered"] = sorted(k for k, v in verdict.items() if v == "valid" and k not in delivered)
    t["left_not_review"] = sorted(k for k in left if verdict.get(k) != "review")
    t["bytes_differ"] = sorted(k for k in delivered if body_of(by_id[k].data) != body_of(truth[k].data))
    t["envelope_differs"] = sorted(k for k in delivered
                                   if sorted(by_id[k].rcpt_tos) != sorted(truth[k].envelope.rcpt_to))
    t["engine_spam"] = sum(1 for v in verdict.values() if v == "spam")
    t["nothing_lost"] = len(valid & delivered) + len(left) + t["spam_purged"] == len(truth) and not t["valid_lost"]
    t["ok"] = not any(t[k] for k in ("valid_lost", "spam_delivered", "delivered_twice", "delivered_unknown",
                                     "engine_valid_not_delivered", "left_not_review", "bytes_differ",
                                     "envelope_differs")) and t["nothing_lost"] and purged == t["engine_spam"]
    return t
