"""Read throughput per queue format (messages/s, MB/s) against the bare cost of reading and hashing the archive.

    python3 bench/read_formats.py [--n 100000] [--formats postfix,exim,sendmail,mbox,maildir]
                                  [--corpus WHOLE-CORPUS.tar.gz]   # default: $SPOOLSWEEP_CORPUS or the sample

For each format it writes an uncompressed tar of N messages (real corpus mail, cycled, with
per-copy envelopes) in that format's on-disk layout, then times (1) the bare walk: every member
read and SHA-256 hashed by pipeline.archive, nothing parsed; (2) the reader over the same archive.
Reader overhead = (2) - (1); the aim is overhead <= bare cost. Times are this process's CPU
seconds (time.process_time), so other load on the machine does not skew them; both use one core.
Writers here follow the formats the readers document; the real-MTA tests prove the readers
against Postfix and Exim themselves.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.archive import ArchiveReport, iter_members
from pipeline.policy import Limits
from pipeline.readers import READERS

Files = Iterator[tuple[str, bytes]]
T0 = 1_700_000_000


def corpus(path: Path | None) -> list[bytes]:
    """--corpus, else $SPOOLSWEEP_CORPUS, else the sample the package ships (pipeline/data/corpus)."""
    from pipeline.errors import CorpusNotFound
    from pipeline.generator import find_corpus, load_corpus

    try:
        ham, spam = load_corpus(find_corpus(path))
    except CorpusNotFound as e:
        raise SystemExit(str(e)) from None
    return ham + spam


def lf(msg: bytes) -> bytes:
    msg = msg.replace(b"\r\n", b"\n")
    return msg.split(b"\n", 1)[1] if msg.startswith(b"From ") else msg


def _rec(t: bytes, payload: bytes) -> bytes:
    n, out = len(payload), bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return t + bytes(out) + payload


def postfix(msgs: list[bytes], n: int) -> Files:
    for i in range(n):
        body = lf(msgs[i % len(msgs)])
        content = b"".join(_rec(b"N", line) for line in body.split(b"\n")[:-1])
        env = [_rec(b"T", b"%d 0" % (T0 + i)), _rec(b"S", b"s%d@example.net" % i),
               _rec(b"A", b"client_address=203.0.113.%d" % (i % 250)), _rec(b"A", b"helo_name=h.example"),
               _rec(b"O", b"r%d@victim.example" % i), _rec(b"R", b"r%d@victim.example" % i)]
        head = b"".join(env)
        size = _rec(b"C", b"%15d %15d %15d %15d %15d %15d" % (len(content), 0, 1, 0, len(content), 0))
        qid = b"%X" % (0xA00000000 + i)
        yield (f"var/spool/postfix/deferred/{qid.decode()[-1]}/{qid.decode()}",
               size + head + _rec(b"M", b"") + content + _rec(b"X", b"") + _rec(b"E", b""))


def exim(msgs: list[bytes], n: int) -> Files:
    for i in range(n):
        head, _, body = lf(msgs[i % len(msgs)]).partition(b"\n\n")
        mid = f"1x{i:04X}"[-6:].rjust(6, "0") + f"-{i:06X}-AB"
        lines = body.count(b"\n")
        hdrs = b""
        for h in _headers(head):
            hdrs += b"%03d  " % len(h) + h
        h_file = (f"{mid}-H\nroot 0 0\n<s{i}@example.net>\n{T0 + i} 0\n--host_address [203.0.113.{i % 250}]:25\n"
                  f"-received_protocol esmtp\n-body_linecount {lines}\nXX\n1\nr{i}@victim.example\n\n"
                  ).encode() + hdrs
        yield f"var/spool/exim4/input/{mid}-D", f"{mid}-D\n".encode() + body
        yield f"var/spool/exim4/input/{mid}-H", h_file


def _headers(head: bytes) -> list[bytes]:
    out: list[bytes] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += line + b"\n"
        elif line:
            out.append(line + b"\n")
    return out


def sendmail(msgs: list[bytes], n: int) -> Files:
    for i in range(n):
        head, _, body = lf(msgs[i % len(msgs)]).partition(b"\n\n")
        qid = f"3A{i:010d}"
        hs = b"".join(b"H??" + h for h in _headers(head))
        qf = (f"V8\nT{T0 + i}\n$_h.example [203.0.113.{i % 250}]\n$rESMTP\nSs{i}@example.net\n"
              f"RPFD:r{i}@victim.example\n").encode() + hs + b".\n"
        yield f"var/spool/mqueue/df{qid}", body
        yield f"var/spool/mqueue/qf{qid}", qf


def mbox(msgs: list[bytes], n: int) -> Files:
    per = 1000
    for f in range(0, n, per):
        parts = []
        for i in range(f, min(n, f + per)):
            m = lf(msgs[i % len(msgs)])
            m = b"\n".join((b">" + x if x.startswith(b"From ") else x) for x in m.split(b"\n"))
            parts.append(b"From s%d@example.net Tue Nov 14 22:13:20 2023\n" % i + m.rstrip(b"\n") + b"\n\n")
        yield f"export/box{f // per:05d}.mbox", b"".join(parts)


def maildir(msgs: list[bytes], n: int) -> Files:
    for i in range(n):
        yield f"Maildir/new/{T0 + i}.M{i}P1.host,S=1", b"Return-Path: <s%d@example.net>\n" % i + lf(msgs[i % len(msgs)])


WRITERS: dict[str, Callable[[list[bytes], int], Files]] = {
    "postfix": postfix, "exim": exim, "sendmail": sendmail, "mbox": mbox, "maildir": maildir}


def write_tar(path: Path, files: Files) -> int:
    total = 0
    with tarfile.open(path, "w") as tf:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), T0
            tf.addfile(ti, io.BytesIO(data))
            total += len(data)
    return total


def bare(path: Path, limits: Limits) -> float:
    t = time.process_time()
    for _ in iter_members(path, limits, ArchiveReport()):
        pass
    return time.process_time() - t


def read(path: Path, fmt: str, limits: Limits) -> tuple[float, int, int]:
    from pipeline.readers import read_snapshot

    t = time.process_time()
    _, found, _ = read_snapshot(path, limits, fmt=None)
    count = defects = 0
    for f in found:
        count += 1
        defects += bool(f.raw.defects)
        if f.raw.format != fmt:
            raise SystemExit(f"{fmt}: detected as {f.raw.format}")
    return time.process_time() - t, count, defects


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--formats", default=",".join(WRITERS))
    ap.add_argument("--corpus", type=Path)
    args = ap.parse_args()
    msgs = corpus(args.corpus)
    limits = Limits()
    print(f"{args.n} messages per format, {len(msgs)} distinct corpus messages; readers: {', '.join(sorted(READERS))}")
    print(f"{'format':9} {'MB':>7} {'bare s':>7} {'read s':>7} {'msg/s':>9} {'MB/s':>7} {'overhead/bare':>13} defects")
    with tempfile.TemporaryDirectory(prefix="spoolsweep-bench-") as tmp:
        for fmt in args.formats.split(","):
            path = Path(tmp) / f"{fmt}.tar"
            size = write_tar(path, WRITERS[fmt](msgs, args.n))
            b = bare(path, limits)
            r, count, defects = read(path, fmt, limits)
            mb = path.stat().st_size / 1e6
            print(f"{fmt:9} {mb:7.1f} {b:7.2f} {r:7.2f} {count / r:9.0f} {mb / r:7.1f} {(r - b) / b:13.2f} "
                  f"{defects}" + ("" if count == args.n else f"  (read {count} of {args.n}!)"))
            path.unlink()
            del size


if __name__ == "__main__":
    main()
