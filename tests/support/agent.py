"""Helpers for the agent's tests: an aiosmtpd sink on 127.0.0.1, pickup folders of real mail, signed instructions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.instructions import ApprovedMessage, Instruction, generate_keypair, sign
from spoolsweep.lab.sink import Received, Sink  # noqa: F401 - Received is re-exported for the tests


@pytest.fixture(scope="session")
def mail_corpus() -> tuple[list[bytes], list[bytes]]:
    """The SpamAssassin corpus sample the package ships (the same the `corpus` fixture gives)."""
    from pipeline.generator import find_corpus, load_corpus

    return load_corpus(find_corpus())


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    s.controller.start()
    try:
        yield s
    finally:
        s.controller.stop()


def with_message_id(data: bytes, mid: str) -> bytes:
    """The message with its Message-ID replaced by `mid` (so a sink can count it)."""
    sep = b"\r\n\r\n" if b"\r\n\r\n" in data[:65536] else b"\n\n"
    head, _, body = data.partition(sep)
    eol = sep[: len(sep) // 2]
    lines = [ln for ln in head.split(eol) if not ln.lower().startswith(b"message-id:")]
    return eol.join([f"Message-ID: {mid}".encode(), *lines]) + sep + body


def write_pickup(folder: Path, messages: list[tuple[str, list[str], bytes]]) -> list[str]:
    """IIS-style .eml files with x-sender/x-receiver lines; returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (sender, rcpts, data) in enumerate(messages, 1):
        name = f"NTFS_{i:08X}.EML"
        head = f"x-sender: {sender}\r\n".encode() + b"".join(f"x-receiver: {r}\r\n".encode() for r in rcpts)
        (folder / name).write_bytes(head + data)
        names.append(name)
    return names


def real_messages(corpus, n: int, tag: str = "t") -> list[tuple[str, list[str], bytes]]:
    ham, spam = corpus
    pool = ham + spam
    out = []
    for i in range(n):
        data = with_message_id(pool[i % len(pool)], f"<{tag}-{i}@spoolsweep.test>")
        out.append((f"sender{i}@example.net", [f"rcpt{i}@example.org", f"cc{i}@example.com"][: 1 + i % 2], data))
    return out


@dataclass
class Keys:
    private: bytes
    public: bytes
    public_file: Path


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> Keys:
    priv, pub = generate_keypair()
    f = tmp_path_factory.mktemp("keys") / "agent.pub.pem"
    f.write_bytes(pub)
    return Keys(priv, pub, f)


def approved(qms, with_envelope: bool = True) -> list[ApprovedMessage]:
    from agent.snapshot import member_name

    return [ApprovedMessage(id=f"m{i}-{qm.sha256[:8]}", path=member_name(qm), sha256=qm.sha256,
                            queue_id=qm.queue_id,
                            envelope=(qm.envelope if with_envelope else None)) for i, qm in enumerate(qms)]


def instruction(incident: str, host: str, replay, purge, iid: str = "ins1", ttl: float = 3600,
                issued: datetime | None = None) -> Instruction:
    issued = issued or datetime.now(UTC)
    return Instruction(instruction_id=iid, incident=incident, host=host, approval_id="a1", issued_at=issued,
                       expires_at=issued + timedelta(seconds=ttl), replay=replay, purge=purge)


def signed_body(ins: Instruction, private: bytes) -> str:
    return sign(ins, private, "test-key").model_dump_json()


def forged_body(ins: Instruction) -> str:
    other, _ = generate_keypair()
    return sign(ins, other, "test-key").model_dump_json()


__all__ = ["Sink", "sink", "keys", "mail_corpus"]
