"""Corrupt and hostile queue files: each reader names the defect (review) and never crashes, hangs or drops a file.

Seeds in tests/data/queues/ are real files written by Debian's Postfix 3.7 and Exim 4.96 (see
test_postfix_real.py / test_exim_real.py for how such queues are made).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.archive import ArchiveReport, Member
from pipeline.manifest_io import manifest_bytes, read_manifest
from pipeline.readers import READERS
from pipeline.readers.postfix import parse_queue_file

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "queues"
PF = {p.name: p.read_bytes() for p in sorted((DATA / "postfix").iterdir())}
EX = {p.name: p.read_bytes() for p in sorted((DATA / "exim").iterdir())}
QF = (b"V8\nT1700000000\nMDeferred: refused\n$_spam.example.com [203.0.113.9]\n$rESMTP\nSa@example.org\n"
      b"RPFD:b@victim.example\nH??Subject: x\n.\n")
SEEDS: dict[str, list[tuple[str, bytes]]] = {
    "postfix": [(f"var/spool/postfix/deferred/F/{n}", d) for n, d in PF.items()],
    "exim": [(f"var/spool/exim4/input/{n}", d) for n, d in EX.items()],
    "sendmail": [("var/spool/mqueue/qfAB12345678", QF), ("var/spool/mqueue/dfAB12345678", b"body\n")],
    "mbox": [("mbox", b"From a@example.org Tue Nov 14 22:13:20 2023\nSubject: a\n\n>From x\n\n"
                      b"From b@example.org Tue Nov 14 22:13:21 2023\nSubject: b\n\nbody\n")],
    "maildir": [("Maildir/new/1700000000.M1P1.host", b"Return-Path: <a@example.org>\nSubject: a\n\nbody\n")],
}


def rec(t: str, payload: bytes) -> bytes:
    """One Postfix record: type, base-128 length (low bits first), payload."""
    n, out = len(payload), bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            break
    return t.encode() + bytes(out) + payload


def queue_file(*records: bytes) -> bytes:
    return b"".join(records)


GOOD = [rec("C", b"%15d %15d %15d %15d %15d %15d" % (20, 0, 1, 0, 20, 0)), rec("T", b"1700000000 0"),
        rec("S", b"a@example.org"), rec("A", b"client_address=203.0.113.9"), rec("R", b"b@victim.example"),
        rec("M", b""), rec("N", b"Subject: x"), rec("N", b""), rec("N", b"body"), rec("X", b""), rec("E", b"")]


def read_members(fmt: str, members: list[tuple[str, bytes]]):
    report = ArchiveReport()
    ms = iter([Member(p, d, len(d)) for p, d in members])
    found = list(READERS[fmt].read(ms, report))
    return found, report


def test_well_formed_synthetic_file_is_clean() -> None:
    qf = parse_queue_file(queue_file(*GOOD), "deferred")
    assert qf.defects == []
    assert qf.content == b"Subject: x\n\nbody\n"
    assert qf.envelope.client_address == "203.0.113.9"


@pytest.mark.parametrize(("name", "data", "expect"), [
    ("truncated", queue_file(*GOOD)[:-9], "truncated"),
    ("wrong length", queue_file(*GOOD[:2], b"S\x7fa@example.org", *GOOD[3:]), "bad record length"),
    ("out of order", queue_file(*GOOD[:5], rec("N", b"early content"), *GOOD[5:]), "out of order"),
    ("garbage", queue_file(*GOOD[:4], b"\x00\xff\xfe garbage " * 4, *GOOD[4:]), "garbage"),
    ("2 GB length", queue_file(*GOOD[:6], b"N\x80\x80\x80\x80\x08" + b"x" * 64, *GOOD[7:]), "claims 2147483648"),
    ("overlong length", queue_file(*GOOD[:6], b"N" + b"\xff" * 12, *GOOD[7:]), "more than 5 length bytes"),
    ("pointer loop", queue_file(*GOOD[:6], rec("p", b"%15d" % 0)), ""),
    ("no sender", queue_file(*GOOD[:2], *GOOD[3:]), "no sender"),
    ("empty", b"", "truncated"),
])
def test_postfix_defects_are_named(name: str, data: bytes, expect: str) -> None:
    if name == "pointer loop":
        start = len(queue_file(*GOOD[:6]))
        data = queue_file(*GOOD[:6], rec("p", b"%15d" % start))  # points at itself
        expect = "loop"
    (f,), _ = read_members("postfix", [("deferred/A/ABCDEF12345", data)])
    assert any(expect in d for d in f.raw.defects), f.raw.defects


@pytest.mark.slow
def test_hostile_postfix_spool_is_all_review(tmp_path: Path, policy_file: Path) -> None:
    bad = {
        "truncated": queue_file(*GOOD)[:-9],
        "length": queue_file(*GOOD[:2], b"S\x7fa@example.org", *GOOD[3:]),
        "order": queue_file(*GOOD[:5], rec("N", b"early"), *GOOD[5:]),
        "garbage": b"\x00\xff\xfe garbage" * 40,
        "twogig": queue_file(*GOOD[:6], b"N\x80\x80\x80\x80\x08xx"),
    }
    out = tmp_path / "hostile.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        for i, data in enumerate(bad.values()):
            ti = tarfile.TarInfo(f"var/spool/postfix/deferred/A/A{i:05d}BCDEF")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    cp = subprocess.run([sys.executable, "-m", "spoolsweep", "triage", str(out), "--policy", str(policy_file),
                         "--out", str(tmp_path / "o"), "-q", "--format", "postfix"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    msgs = json.loads(manifest_bytes(read_manifest(tmp_path / "o")))["messages"]
    assert len(msgs) == len(bad)
    assert all(m["verdict"] == "review" and m["defects"] for m in msgs)


# -- property: mutate real files, every reader survives and accounts for every file --------------
mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=64))),
    st.tuples(st.just("delete"), st.tuples(st.floats(0, 1), st.integers(1, 200))),
    st.tuples(st.just("huge"), st.floats(0, 1)),
)


def mutate(data: bytes, m: tuple) -> bytes:
    kind, arg = m
    at = lambda f: int(f * len(data))  # noqa: E731
    if kind == "truncate":
        return data[: at(arg)]
    if kind == "flip":
        b = bytearray(data)
        for f, v in arg:
            if b:
                b[min(at(f), len(b) - 1)] = v
        return bytes(b)
    if kind == "insert":
        f, blob = arg
        return data[: at(f)] + blob + data[at(f):]
    if kind == "delete":
        f, n = arg
        return data[: at(f)] + data[at(f) + n:]
    # a 2 GB length field (or line count) dropped in at a random place
    return data[: at(arg)] + b"\x80\x80\x80\x80\x08" + b"2147483648" + data[at(arg):]


@pytest.mark.parametrize("fmt", sorted(SEEDS))
@settings(max_examples=150, deadline=timedelta(seconds=3), suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.slow
def test_mutated_queue_files_never_crash_or_hang(fmt: str, data: st.DataObject) -> None:
    members = list(SEEDS[fmt])
    i = data.draw(st.integers(0, len(members) - 1))
    muts = data.draw(st.lists(mutation, min_size=1, max_size=4))
    path, raw = members[i]
    for m in muts:
        raw = mutate(raw, m)
    members[i] = (path, raw)
    found, report = read_members(fmt, members)
    paths = {f.raw.path.split("#")[0] for f in found} | set(report.skipped)
    if fmt in ("exim", "sendmail"):
        # pairs: the control/-H file names the message; its -D/df mate is inside it
        assert len(found) >= 1
    else:
        assert {p for p, _ in members} <= paths
    for f in found:
        assert f.raw.format == fmt
        assert isinstance(f.sha256, str)
