"""The agent stays inside its frozen queue: links, hard links, FIFOs and strangers' files planted there are refused."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from agent import safefs
from agent.journal import Journal
from agent.mta.pickup import PickupQueue
from agent.runner import Agent
from pipeline.instructions import ApprovedMessage, Receipt
from pipeline.models import Envelope
from pipeline.store import LocalStore
from tests.support import agent as support
from tests.support.agent import instruction, signed_body

keys = support.keys
INC, HOST = "inc-confine", "mx1"


def _msg(i: int) -> bytes:
    return (f"From: a{i}@example.net\r\nTo: b@example.org\r\nSubject: m{i}\r\nMessage-ID: <m{i}@x>\r\n\r\n"
            f"body {i}\r\n").encode()


def _file(i: int) -> bytes:
    return f"x-sender: a{i}@example.net\r\nx-receiver: b@example.org\r\n".encode() + _msg(i)


@pytest.fixture
def queue(tmp_path):
    """A pickup folder with one top-level message and one in sub/, frozen aside; a victim folder next to it."""
    out = tmp_path / "Out"
    (out / "sub").mkdir(parents=True)
    (out / "NTFS_1.EML").write_bytes(_file(1))
    (out / "sub" / "NTFS_2.EML").write_bytes(_file(2))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "NTFS_2.EML").write_bytes(_file(2))  # the same bytes as a reviewed message: its digest matches
    (victim / "secret.txt").write_bytes(_file(9))
    pickup = tmp_path / "Pickup"
    pickup.mkdir()
    q = PickupQueue(out, pickup=pickup)
    q.freeze()
    return q, victim, pickup


def _agent(q, tmp_path, keys) -> Agent:
    return Agent(host=HOST, queue=q, journal=Journal(tmp_path / "j.sqlite"), store=LocalStore(tmp_path / "store"),
                 public_key_pem=keys.public, known_incident=lambda _: True)


def _item(rel: str, data: bytes, i: int = 0) -> ApprovedMessage:
    from pipeline.readers.eml import split_iis_envelope

    env, body = split_iis_envelope(data)
    return ApprovedMessage(id=f"m{i}", path=f"messages/{rel}", sha256=hashlib.sha256(body).hexdigest(),
                           queue_id=rel, envelope=env)


def _run(agent: Agent, replay, purge, keys) -> Receipt:
    return agent.handle(signed_body(instruction(INC, HOST, replay, purge), keys.private))


def test_frozen_folder_is_the_agents_alone(queue):
    q, _, _ = queue
    st = os.stat(q.aside)
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
    assert sorted(m.queue_id for m in q.list()) == ["NTFS_1.EML", "sub/NTFS_2.EML"]


def test_purge_through_a_linked_folder_deletes_nothing_outside(queue, tmp_path, keys):
    q, victim, _ = queue
    os.symlink(victim, q.aside / "linkdir")
    r = _run(_agent(q, tmp_path, keys), [], [_item("linkdir/secret.txt", _file(9))], keys)
    assert (victim / "secret.txt").exists(), "a purge followed a link out of the queue"
    assert r.counts()["purged"] == 0


def test_replay_through_a_swapped_subfolder_copies_and_deletes_nothing(queue, tmp_path, keys):
    q, victim, pickup = queue
    item = _item("sub/NTFS_2.EML", _file(2))
    (q.aside / "sub" / "NTFS_2.EML").unlink()
    (q.aside / "sub").rmdir()
    os.symlink(victim, q.aside / "sub")  # the writer swaps the reviewed subfolder for a link
    r = _run(_agent(q, tmp_path, keys), [item], [], keys)
    assert (victim / "NTFS_2.EML").exists(), "a replay deleted a file outside the queue"
    assert not list(pickup.iterdir()), "a replay copied bytes from outside the queue"
    assert r.counts()["replayed"] == 0


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo"])
def test_planted_file_is_refused(plant, queue, tmp_path, keys):
    q, victim, pickup = queue
    target = q.aside / "NTFS_3.EML"
    if plant == "symlink":
        os.symlink(victim / "secret.txt", target)
    elif plant == "hardlink":
        os.link(victim / "secret.txt", target)
    else:
        os.mkfifo(target)
    assert "NTFS_3.EML" not in {m.queue_id for m in q.list()}, "listing must skip it (and not hang on a FIFO)"
    with pytest.raises(safefs.UnsafePath):
        q.locate("messages/NTFS_3.EML", "NTFS_3.EML")
    r = _run(_agent(q, tmp_path, keys), [_item("NTFS_3.EML", _file(9), 3)], [], keys)
    assert r.counts()["replayed"] == 0 and not list(pickup.iterdir())
    assert (victim / "secret.txt").read_bytes() == _file(9)


def test_safefs_refuses_a_stranger_and_escapes(tmp_path):
    (tmp_path / "a").write_bytes(b"x")
    with safefs.folder(tmp_path) as fd:
        assert safefs.read_file(fd, "a") == b"x"
        with pytest.raises(safefs.UnsafePath, match="owned by uid"):
            safefs.read_file(fd, "a", owners=frozenset({os.geteuid() + 12345}))
        for bad in ("../a", "/etc/passwd", "", "a/../a", "./a"):
            with pytest.raises(safefs.UnsafePath):
                safefs.read_file(fd, bad)


def test_release_never_writes_through_a_link_in_the_staging_folder(queue, tmp_path, keys):
    q, victim, pickup = queue
    item = _item("NTFS_1.EML", _file(1))
    q.staging.mkdir(mode=0o700)
    name = f"NTFS_1-{item.sha256[:16]}.eml"
    os.symlink(victim / "secret.txt", q.staging / name)
    _run(_agent(q, tmp_path, keys), [item], [], keys)
    assert (victim / "secret.txt").read_bytes() == _file(9), "staging wrote through a link"


def test_a_non_owner_cannot_freeze_someone_elses_folder(tmp_path, monkeypatch):
    out = tmp_path / "Out"
    out.mkdir()
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(out).st_uid + 1)
    with pytest.raises(Exception, match="run the agent as root"):
        PickupQueue(out).freeze()
    assert out.is_dir() and not Path(str(out) + ".old").exists()


def test_postfix_hold_queue_link_is_not_read(tmp_path):
    """The native reader path: a symlink in hold/ to a file elsewhere never reaches the snapshot."""
    from agent.mta.postfix import PostfixQueue

    hold = tmp_path / "spool" / "hold"
    (hold / "A").mkdir(parents=True)
    (hold / "A" / "ABCDE12345").write_bytes(b"queue file")
    secret = tmp_path / "secret"
    secret.write_bytes(b"root's secret")
    os.symlink(secret, hold / "FGHIJ67890")
    got: list[bytes] = []

    class Parsed:
        def __init__(self, data: bytes) -> None:
            got.append(data)
            self.content, self.envelope, self.defects = data, Envelope(), []

    q = PostfixQueue.__new__(PostfixQueue)
    q.queue_dir, q._parse = tmp_path / "spool", lambda data, queue: Parsed(data)
    assert [m.queue_id for m in q.list()] == ["ABCDE12345"]
    assert got == [b"queue file"]
    with pytest.raises(safefs.UnsafePath):
        q.locate("FGHIJ67890", "FGHIJ67890")
