"""Hostile and broken archives: clear errors or review entries, no crash, nothing written, nothing dropped."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from pipeline.errors import ArchiveLimitExceeded, SnapshotError
from pipeline.models import Verdict
from pipeline.policy import Limits, SitePolicy
from pipeline.triage import triage


@pytest.fixture(autouse=True, params=["libarchive", "tarfile"])
def tar_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every hostile archive goes through both tar readers: libarchive (fast path) and tarfile."""
    from pipeline.archive import _use_libarchive

    if request.param == "libarchive" and not _use_libarchive():
        pytest.skip("libarchive-c or libarchive.so not installed")
    monkeypatch.setenv("SPOOLSWEEP_TAR_READER", request.param)
    return request.param


MSG = b"From: a@example.com\nTo: b@example.org\nSubject: hello\n\nbody\n"


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _special(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    return ti


def test_traversal_links_devices_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "out"
    snap = _tar(tmp_path / "evil.tar", [
        (_file("../escape.eml"), MSG),
        (_file("/abs/path.eml"), MSG),
        (_file("ok.eml"), MSG),
        (_file("ok.eml"), MSG + b"again\n"),
        (_special("link.eml", tarfile.SYMTYPE, "/etc/passwd"), None),
        (_special("hard.eml", tarfile.LNKTYPE, "ok.eml"), None),
        (_special("dev.eml", tarfile.CHRTYPE), None),
        (_special("fifo.eml", tarfile.FIFOTYPE), None),
    ])
    m = triage(snap, SitePolicy(local_domains=["example.org"]))
    by_path: dict[str, list] = {}
    for msg in m.messages:
        by_path.setdefault(msg.path, []).append(msg)
    # every regular member is in the manifest, by its stored name
    assert set(by_path) == {"../escape.eml", "/abs/path.eml", "ok.eml"}
    assert len(by_path["ok.eml"]) == 2
    assert len({x.id for x in m.messages}) == len(m.messages) == 4
    for bad in ("../escape.eml", "/abs/path.eml"):
        assert by_path[bad][0].verdict is Verdict.review
        assert any("unsafe member name" in d for d in by_path[bad][0].defects)
    assert by_path["ok.eml"][1].verdict is Verdict.review
    assert any("duplicate" in d for d in by_path["ok.eml"][1].defects)
    # links and devices are named, not followed
    text = "\n".join(m.archive_defects)
    for name in ("link.eml", "hard.eml", "dev.eml", "fifo.eml"):
        assert name in text
    assert not (tmp_path / "escape.eml").exists() and not out.exists()


def test_truncated_archive_keeps_what_was_read(tmp_path: Path) -> None:
    full = _tar(tmp_path / "full.tar.gz", [(_file(f"m{i}.eml"), MSG * 200) for i in range(20)], mode="w:gz")
    data = full.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    m = triage(cut, SitePolicy())
    assert m.archive_defects and "damaged" in m.archive_defects[0]
    assert 0 < m.totals.messages < 20
    # the damage in words, the same every run: not libarchive's errno, return code and handle address
    told = [*m.archive_defects, *(d for msg in m.messages for d in msg.defects)]
    assert not any("archive_p=" in d or "errno=" in d for d in told), told
    assert triage(cut, SitePolicy()).archive_defects == m.archive_defects


def test_garbage_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b" + b"not really gzip" * 100)
    with pytest.raises(SnapshotError):
        triage(junk, SitePolicy())


def test_bomb_limits(tmp_path: Path) -> None:
    many = _tar(tmp_path / "many.tar", [(_file(f"m{i}.eml"), MSG) for i in range(50)])
    with pytest.raises(ArchiveLimitExceeded, match="max_members"):
        triage(many, SitePolicy(limits=Limits(max_members=10)))
    with pytest.raises(ArchiveLimitExceeded, match="max_total_bytes"):
        triage(many, SitePolicy(limits=Limits(max_total_bytes=1000)))


def test_oversized_member_is_review_with_digest(tmp_path: Path) -> None:
    big = _tar(tmp_path / "big.tar", [(_file("big.eml"), MSG + b"x" * 5000), (_file("small.eml"), MSG)])
    m = triage(big, SitePolicy(local_domains=["example.org"], limits=Limits(max_member_bytes=1000)))
    msg = next(x for x in m.messages if x.path == "big.eml")
    assert msg.verdict is Verdict.review and len(msg.sha256) == 64
    assert any("max_member_bytes" in d for d in msg.defects)


def test_directory_with_symlink(tmp_path: Path) -> None:
    d = tmp_path / "Queue"
    d.mkdir()
    (d / "a.eml").write_bytes(MSG)
    (d / "link.eml").symlink_to("/etc/passwd")
    m = triage(d, SitePolicy(local_domains=["example.org"]))
    assert [x.path for x in m.messages] == ["a.eml"]
    assert any("link.eml" in x for x in m.archive_defects)


def test_unparseable_bytes_are_review_not_dropped(tmp_path: Path) -> None:
    d = tmp_path / "Queue"
    d.mkdir()
    (d / "bin.eml").write_bytes(bytes(range(256)) * 20)
    m = triage(d, SitePolicy())
    assert m.totals.messages == 1 and m.messages[0].verdict is Verdict.review


@pytest.mark.slow
def test_index_may_exceed_the_message_cap(incident_tar: Path, policy) -> None:
    """A million-message index is larger than any message may be; it has a cap of its own."""
    small = policy.model_copy(update={"limits": Limits(max_member_bytes=200_000)})
    m = triage(incident_tar, small)
    assert not m.archive_defects
    assert not any("not listed in index" in d for x in m.messages for d in x.defects)
    tiny = policy.model_copy(update={"limits": Limits(max_member_bytes=200_000, max_index_bytes=1000)})
    m = triage(incident_tar, tiny)
    assert m.archive_defects and all(x.verdict is Verdict.review for x in m.messages)


@pytest.mark.slow
def test_both_readers_agree_on_a_real_snapshot(incident_tar: Path, tar_reader: str, monkeypatch) -> None:
    """Same members, bytes, digests and archive digest whichever reader walks the tarball."""
    from pipeline.archive import ArchiveReport, iter_members

    def walk(reader: str) -> tuple[list[tuple[str, str | None, int]], str | None]:
        monkeypatch.setenv("SPOOLSWEEP_TAR_READER", reader)
        rep = ArchiveReport()
        rows = [(m.path, m.sha256, m.size) for m in iter_members(incident_tar, Limits(), rep)]
        return rows, rep.sha256

    a, b = walk(tar_reader), walk("tarfile")
    assert a == b and len(a[0]) > 1000 and a[1]


def test_a_libarchive_that_cannot_open_the_stream_falls_back_to_tarfile(tmp_path: Path, monkeypatch,
                                                                         tar_reader: str) -> None:
    """E.g. a libarchive built without zstd: the snapshot is still read (by tarfile), not refused."""
    if tar_reader == "tarfile":
        pytest.skip("about the libarchive path (the tarfile run has nothing to fall back from)")
    import libarchive
    from libarchive.exception import ArchiveError

    def refuse(*a, **k):
        raise ArchiveError("Unrecognized archive format")

    monkeypatch.setattr(libarchive, "stream_reader", refuse)
    monkeypatch.setenv("SPOOLSWEEP_TAR_READER", "libarchive")
    snap = _tar(tmp_path / "ok.tar.gz", [(_file(f"m{i}.eml"), MSG) for i in range(3)], mode="w:gz")
    m = triage(snap, SitePolicy(local_domains=["example.org"]))
    assert m.totals.messages == 3 and not m.archive_defects


def test_member_names_that_are_not_utf8(tmp_path: Path) -> None:
    """A Latin-1 name in the tar header: the member is read, named with \\x escapes and held for review, and
    nothing after it is lost (it crashed triage before)."""
    import json

    from pipeline.manifest_io import manifest_bytes

    snap = tmp_path / "latin.tar"
    with tarfile.open(snap, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        for name in ("a.eml", "caf\xe9.eml", "z.eml"):
            ti = tarfile.TarInfo(name)
            ti.size = len(MSG)
            tf.addfile(ti, io.BytesIO(MSG))
    m = triage(snap, SitePolicy(local_domains=["example.org"]))
    assert sorted(x.path for x in m.messages) == ["a.eml", "caf\\xe9.eml", "z.eml"]
    assert len(json.loads(manifest_bytes(m))["messages"]) == 3
    odd = next(x for x in m.messages if x.path == "caf\\xe9.eml")
    assert odd.verdict is Verdict.review and any("not UTF-8" in d for d in odd.defects)


def test_folder_file_names_that_are_not_utf8(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    folder.mkdir()
    (folder / "a.eml").write_bytes(MSG)
    with open(bytes(folder) + b"/caf\xe9.eml", "wb") as fh:
        fh.write(MSG)
    m = triage(folder, SitePolicy(local_domains=["example.org"]))
    assert sorted(x.path for x in m.messages) == ["a.eml", "caf\\xe9.eml"]
    assert next(x for x in m.messages if x.path != "a.eml").verdict is Verdict.review
