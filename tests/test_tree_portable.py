"""The tracked tree names no path of one machine and links nowhere outside itself, so a clone works anywhere."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.support.tree import tracked

ROOT = Path(__file__).resolve().parent.parent

# Written in pieces so that this file scans clean too.
_SL = "/"
MACHINE_PATH = re.compile(
    "|".join([
        # the folders this project was developed in, and the shared folder beside them
        rf"(?<![\w.]){_SL}work{_SL}", rf"\.\.{_SL}shared\b",
        # home folders (Linux, macOS, Windows)
        rf"(?<![\w.~]){_SL}home{_SL}\w+", rf"(?<![\w.~]){_SL}root{_SL}\.?\w+", rf"(?<![\w.~]){_SL}Users{_SL}\w",
        r"[A-Za-z]:\\Users\\",
        # CI and build machines' work folders
        rf"(?<![\w.]){_SL}(?:__w|builds?|github{_SL}workspace|var{_SL}lib{_SL}jenkins){_SL}\w",
    ])
)
# a fixed name in the shared temporary folder; a glob (name-*) or a mktemp template (name.XXXXXX) is a prefix: fine
TMP_NAME = re.compile(rf"(?<![\w.]){_SL}tmp{_SL}([\w.@-]+)(\*?)")


def _third_party_mail(root: Path, rel: Path) -> bool:
    """Real mail copied from other projects (a folder with a NOTICE beside it) quotes other machines' paths
    as message text; it is input to parse, never a path this project opens."""
    return any((root / d).with_name(d.name + ".NOTICE").is_file() for d in rel.parents if d.parts)


def problems(root: Path, files: list[Path]) -> list[str]:
    """One line per machine path (file:line: the path) and per link whose target leaves the tree."""
    found = []
    top = root.resolve()
    for rel in files:
        p = root / rel
        if p.is_symlink():
            target = os.readlink(p)
            inside = not os.path.isabs(target) and (p.parent.resolve() / target).resolve().is_relative_to(top)
            if not inside:
                found.append(f"{rel}: a link to {target}, outside the tree")
            continue
        if not p.is_file() or _third_party_mail(root, rel):
            continue
        data = p.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary: compressed data, where a path would be noise
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            hits = [m.group(0) for m in MACHINE_PATH.finditer(line)]
            hits += [m.group(0) for m in TMP_NAME.finditer(line) if not m.group(2) and "XXX" not in m.group(1)]
            found += [f"{rel}:{n}: {h!r} names a path of one machine" for h in hits]
    return found


def test_tree_names_no_machine_path_and_no_outward_link() -> None:
    files = tracked(ROOT)
    assert len(files) > 50, files  # the scan saw the project, not an empty listing
    found = problems(ROOT, files)
    assert not found, "\n".join(found)


def test_scan_finds_each_kind(tmp_path: Path) -> None:
    bad = [f"{_SL}work{_SL}shared{_SL}corpus.tgz", f"..{_SL}shared{_SL}corpus", f"{_SL}home{_SL}ann{_SL}x",
           f"{_SL}root{_SL}.cache", f"{_SL}Users{_SL}ann", "C:\\Users\\ann", f"{_SL}builds{_SL}grp{_SL}proj",
           f"{_SL}tmp{_SL}corpus{_SL}spamassassin-dev", f"{_SL}tmp{_SL}x"]
    fine = [f"{_SL}tmp{_SL}spoolsweep-postfix-*", f"mktemp {_SL}tmp{_SL}demo.XXXXXX", f"a{_SL}work{_SL}b", "~/.cache/x",
            f"{_SL}etc{_SL}postfix", f"{_SL}var{_SL}spool{_SL}postfix"]
    (tmp_path / "bad.py").write_text("\n".join(f"p = '{b}'" for b in bad) + "\n")
    (tmp_path / "fine.md").write_text("\n".join(fine) + "\n")
    (tmp_path / "blob.gz").write_bytes(b"\x1f\x8b\0" + f"{_SL}work{_SL}".encode())
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "in.txt").write_text("ok\n")
    (tmp_path / "in-link").symlink_to("sub/in.txt")
    (tmp_path / "up-link").symlink_to("../elsewhere.tar.gz")
    (tmp_path / "abs-link").symlink_to(tmp_path / "sub" / "in.txt")
    (tmp_path / "mail" / "cvs").mkdir(parents=True)  # real mail from another project, its NOTICE beside it
    (tmp_path / "mail" / "cvs" / "1.eml").write_text(f"CVSROOT: {_SL}home{_SL}ncvs\n")
    (tmp_path / "mail.NOTICE").write_text("Apache-2.0\n")
    files = tracked(tmp_path)  # no checkout: listed by walking it, links included
    assert set(files) == {Path(n) for n in ("bad.py", "fine.md", "blob.gz", "sub/in.txt", "in-link", "up-link",
                                             "abs-link", "mail/cvs/1.eml", "mail.NOTICE")}
    found = problems(tmp_path, files)
    assert sum(f.startswith("bad.py:") for f in found) == len(bad), found
    assert [f for f in found if not f.startswith("bad.py:")] == [
        f"abs-link: a link to {tmp_path / 'sub' / 'in.txt'}, outside the tree",
        "up-link: a link to ../elsewhere.tar.gz, outside the tree",
    ]

