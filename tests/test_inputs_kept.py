"""Every input kept, every error clear (issue 13): bad input gives a one-line error naming it, or a message held
for review with its defect; never a traceback, a silent drop or a hang."""

from __future__ import annotations

import io
import os
import random
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.archive import ArchiveReport, iter_members
from pipeline.models import Verdict
from pipeline.policy import Limits, SitePolicy
from pipeline.triage import triage
from spoolsweep.cli import app

POLICY = SitePolicy(local_domains=["example.org"], server_names=["mx1.example.org"])
MSG = (b"Received: from c.far.example (c.far.example [203.0.113.5]) by mx1.example.org with ESMTP id Q%d\n"
       b"From: <a%d@far.example>\nTo: <bob@example.org>\nSubject: hello %d\nMessage-ID: <%d@far.example>\n\n"
       b"From here on the body has a line that an mbox reader would cut at.\nbye\n")


def msg(i: int) -> bytes:
    return MSG % (i, i, i, i)


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    out = r.output
    assert "Traceback" not in out, out
    return r.exit_code, out


def tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


# -- format detection never drops a file ---------------------------------------------------------------

def test_eml_files_that_begin_with_a_from_line_are_one_message_each(tmp_path: Path) -> None:
    q = tmp_path / "q"
    q.mkdir()
    for i in range(6):
        (q / f"{i}.eml").write_bytes(b"From a@far.example Sat Jan  3 01:05:34 1996\n" + msg(i))
    m = triage(q, POLICY, workers=1)
    assert m.snapshot.format == "eml" and m.totals.messages == 6 and not m.snapshot.skipped


def test_a_member_the_mbox_reader_cannot_read_is_held_not_skipped(tmp_path: Path) -> None:
    q = tmp_path / "q"
    q.mkdir()
    for i in range(4):
        (q / f"box{i}").write_bytes(b"From a@far.example Sat Jan  3 01:05:34 1996\n" + msg(i).replace(b"\nFrom here",
                                                                                                   b"\n>From here"))
    (q / "stray").write_bytes(msg(9))  # no From_ line: not mbox, still a message
    m = triage(q, POLICY, workers=1)
    assert m.snapshot.format == "mbox" and m.totals.messages == 5 and not m.snapshot.skipped
    stray = next(x for x in m.messages if x.path == "stray")
    assert stray.verdict is Verdict.review and any("not an mbox file" in d for d in stray.defects)


def test_txt_files_that_are_messages_are_read(tmp_path: Path) -> None:
    q = tmp_path / "q"
    q.mkdir()
    (q / "a.eml").write_bytes(msg(1))
    (q / "saved.txt").write_bytes(msg(2))
    (q / "smtpsvc.log").write_bytes(b"2026-12-01 10:00:00 started\nTo do: nothing\n")
    m = triage(q, POLICY, workers=1)
    assert sorted(x.path for x in m.messages) == ["a.eml", "saved.txt"]
    assert m.snapshot.skipped == ["smtpsvc.log"]


def test_a_wrong_format_is_an_error_not_an_empty_manifest(tmp_path: Path) -> None:
    q = tmp_path / "q"
    q.mkdir()
    (q / "a.eml").write_bytes(msg(1))
    code, out = run("triage", str(q), "--format", "maildir", "--out", str(tmp_path / "out"), "-q")
    assert code == 1 and "not in the format named: --format maildir found no message in 1 member" in out
    assert len(out.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_an_unreadable_subfolder_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q = tmp_path / "q"
    (q / "sub").mkdir(parents=True)
    (q / "a.eml").write_bytes(msg(1))
    (q / "sub" / "b.eml").write_bytes(msg(2))
    real = os.scandir

    def scandir(path=".", *a, **k):  # root reads any folder: refuse this one as a permission would
        if str(path).endswith("/sub"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "scandir", scandir)
    report = ArchiveReport()
    names = [m.path for m in iter_members(q, Limits(), report)]
    assert names == ["a.eml"]
    assert report.defects == ["sub/: folder cannot be read (Permission denied); its messages are not in this triage"]
    code, out = run("triage", str(q), "--out", str(tmp_path / "out"), "-q")
    assert code == 2  # the manifest is written, and the exit status says the snapshot was damaged


# -- names ----------------------------------------------------------------------------------------------

def test_both_copies_of_a_duplicate_name_are_flagged(tmp_path: Path) -> None:
    t = tar(tmp_path / "d.tar", [("q/a.eml", msg(1)), ("q/b.eml", msg(2)), ("q/a.eml", msg(3))])
    m = triage(t, POLICY, workers=1)
    dup = [x for x in m.messages if x.path == "q/a.eml"]
    assert len(dup) == 2 and len({x.id for x in dup}) == 2
    for x in dup:
        assert x.verdict is Verdict.review and any("duplicate member name" in d for d in x.defects), x.defects
    assert next(x for x in m.messages if x.path == "q/b.eml").verdict is not Verdict.review


@pytest.mark.parametrize("name", ["..\\..\\x.eml", "q\\..\\..\\x.eml", "\\\\server\\share\\x.eml", "\\x.eml",
                                  "C:\\x.eml"])
def test_windows_style_unsafe_names_are_flagged(tmp_path: Path, name: str) -> None:
    t = tar(tmp_path / "w.tar", [("q/ok.eml", msg(1)), (name, msg(2))])
    m = triage(t, POLICY, workers=1)
    x = next(x for x in m.messages if x.path == name)
    assert x.verdict is Verdict.review and any(d.startswith("unsafe member name") for d in x.defects)


@pytest.mark.slow
def test_verdicts_do_not_depend_on_member_order(tmp_path: Path, corpus) -> None:
    from pipeline.generator import generate

    ham, spam = corpus
    members = [(f"q/{i:05d}.eml", m.data) for i, m in enumerate(generate(ham, spam, n=300, seed=3).messages)]
    shuffled = members[:]
    random.Random(1).shuffle(shuffled)
    a = triage(tar(tmp_path / "a.tar", members), POLICY, workers=1)
    b = triage(tar(tmp_path / "b.tar", shuffled), POLICY, workers=1)
    assert {x.path: x.verdict for x in a.messages} == {x.path: x.verdict for x in b.messages}
    assert [x.id for x in a.messages] == [x.id for x in b.messages]


# -- a message too heavy to parse -----------------------------------------------------------------------

@pytest.mark.parametrize(("n", "why"), [(100_000, "header block over 1024 KiB"),
                                        (20_000, "20,000 encoded words in the header")])
def test_a_header_of_many_encoded_words_takes_the_careful_path_and_is_held(tmp_path: Path, n: int, why: str) -> None:
    # one message of 100,000 encoded words held fast-mail-parser for 30 s (300,000: 190 s), uninterruptibly
    q = tmp_path / "q"
    q.mkdir()
    words = b" ".join(b"=?utf-8?q?w=C3=A9rd?=" for _ in range(n))
    (q / "heavy.eml").write_bytes(b"From: <a@far.example>\nTo: <bob@example.org>\nSubject: " + words + b"\n\nhi\n")
    (q / "ok.eml").write_bytes(msg(1))
    m = triage(q, POLICY, workers=1)
    heavy = next(x for x in m.messages if x.path == "heavy.eml")
    assert heavy.verdict is Verdict.review
    [d] = heavy.defects
    assert d.startswith(f"over the parse budget: {why}") and "; read by the careful parser in " in d, d
    assert heavy.subject.startswith("wérdwérd")  # RFC 2047: the space between encoded words goes


# -- the command line: one line per error, checked before the work ---------------------------------------

def test_dev_zero_as_snapshot_is_an_error(tmp_path: Path) -> None:
    code, out = run("triage", "/dev/zero", "--out", str(tmp_path / "out"), "-q")
    assert code == 1 and "/dev/zero: not a regular file or a folder" in out and len(out.strip().splitlines()) == 1


def test_policy_errors_are_one_line(tmp_path: Path) -> None:
    q = tmp_path / "q"
    q.mkdir()
    (q / "a.eml").write_bytes(msg(1))
    latin = tmp_path / "latin.toml"
    latin.write_bytes('local_domains = ["exämple.org"]\n'.encode("latin-1"))
    for pol, want in ((tmp_path, "is a folder, not a TOML file"), (latin, "not UTF-8 text")):
        code, out = run("triage", str(q), "--policy", str(pol), "--out", str(tmp_path / "out"), "-q")
        assert code == 1 and want in out and str(pol) in out and len(out.strip().splitlines()) == 1, out
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b'\xef\xbb\xbflocal_domains = ["example.org"]\n')
    code, out = run("triage", str(q), "--policy", str(bom), "--out", str(tmp_path / "out"), "-q")
    assert code == 0, out


def test_out_is_checked_before_triage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.triage

    def no(*a, **k):
        raise AssertionError("triage ran before --out was checked")

    monkeypatch.setattr(pipeline.triage, "triage", no)
    q = tmp_path / "q"
    q.mkdir()
    (q / "a.eml").write_bytes(msg(1))
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out_arg, want in ((afile, "exists and is not a folder"), (afile / "sub", "Not a directory")):
        code, out = run("triage", str(q), "--out", str(out_arg), "-q")
        assert code == 1 and want in out and str(out_arg) in out and len(out.strip().splitlines()) == 1, out


def test_pythons_own_email_test_messages_are_all_kept(tmp_path: Path) -> None:
    """CPython's email test data (PSF licence): 48 .txt files, two beginning with a From_ line, several MIME
    fragments, one a bare digest body. Before: detected as mbox, and the 46 files without a From_ line were
    skipped. Now one message a file, each held for review (no stored envelope, no hop of ours)."""
    import shutil

    q = tmp_path / "q"
    shutil.copytree(Path(__file__).resolve().parent / "data" / "python-email", q)
    m = triage(q, POLICY, workers=1)
    assert m.snapshot.format == "eml"
    assert sorted([x.path for x in m.messages] + m.snapshot.skipped) == sorted(p.name for p in q.iterdir())
    assert m.snapshot.skipped == ["msg_19.txt"]  # "Send Ppp mailing list submissions to ...": no header at all
    assert m.totals.spam == 0 and m.totals.valid == 0


def test_numbers_out_of_range_and_an_unwritable_incident_are_one_line_errors(tmp_path: Path) -> None:
    # `generate -n 5` wrote 12 messages and said 5; --workers 0 and --shard-size -1 ran as if serial and never;
    # `demo -n 5` and `generate` into a folder that cannot be made stopped with a traceback; `upload` into a
    # store that cannot be made said "[Errno 2] ...", and `approve`, `keys init` and `agent snapshot --state-dir`
    # there were tracebacks.
    def invoke(*args: str) -> tuple[int, str]:
        r = CliRunner().invoke(app, list(args))
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        return r.exit_code, " ".join(r.output.replace("│", " ").split())

    q = tmp_path / "q"
    q.mkdir()
    (q / "a.eml").write_bytes(msg(1))
    cases = [
        (("generate", str(tmp_path / "g.tar.zst"), "-n", "5"), 2,
         "Invalid value for --messages: an incident has at least 12 messages (its valid mail alone), not 5"),
        (("demo", "-n", "0", "--yes", "--workdir", str(tmp_path / "d")), 2, "an incident has at least 12 messages"),
        (("triage", str(q), "--workers", "0", "--out", str(tmp_path / "o"), "-q"), 2,
         "Invalid value for '--workers': Input should be greater than or equal to 1"),
        (("triage", str(q), "--shard-size", "-1", "--out", str(tmp_path / "o"), "-q"), 2,
         "Invalid value for '--shard-size': Input should be greater than or equal to 0"),
        (("blocklist", "127.0.0.2", "--timeout", "0"), 2, "Invalid value for '--timeout'"),
        (("console", "--port", "70000"), 2, "Invalid value for '--port'"),
        (("console", "--data", "s3://bkt", "--port", "0"), 2,
         "error: --data s3://bkt: the console reads a local store or triage output folder"),
        (("generate", "/proc/no/such/g.tar.zst", "-n", "20"), 1,
         "error: The incident cannot be written: /proc/no: No such file or directory"),
        (("upload", str(q), "--incident", "inc", "--host", "mx1", "--store", "/proc/no"), 1,
         "error: The snapshot could not be uploaded: /proc/no: No such file or directory"),
        (("approve", "inc", "--store", "/proc/no"), 1,
         "error: The approval could not be written: /proc/no: No such file or directory"),
        (("keys", "init", "--store", "/proc/no"), 1,
         "error: The key could not be written: /proc/no: No such file or directory"),
        (("agent", "snapshot", "--mta", "pickup-dir", "--dir", str(q), "--to", str(tmp_path / "st"), "--incident",
          "i", "--host", "h", "--state-dir", "/proc/no"), 1, "error: The agent failed: /proc/no: No such file or "
                                                            "directory"),
    ]
    for args, code, want in cases:
        got, out = invoke(*args)
        assert got == code and want in out, (args, got, out)
    assert not (tmp_path / "g.tar.zst").exists() and not (tmp_path / "o").exists()
