"""Shards: how a big snapshot is cut into parts that parse in parallel, and how triage knows the last one landed.

A shard is uploaded as incoming/<incident>/<host>/<base>.part-0003-of-0010.tar.zst; a file without the
part suffix is a shard of one. The name alone says how many parts there are, so the fan-in needs no
plan object that could arrive after its shards. A parsed shard's metadata is a ShardMeta, written by the
parse use case before the records and read by triage.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.archive import ArchiveReport
from pipeline.models import IndexEntry
from pipeline.policy import Limits
from pipeline.queues import check_name
from pipeline.readers import read_snapshot
from pipeline.readers.base import Found

_SUFFIXES = (".tar.zst", ".tar.gz", ".tgz", ".tar", ".zip")
_PART = re.compile(r"^(?P<base>.+)\.part-(?P<i>\d{4,6})-of-(?P<n>\d{4,6})\Z")


@dataclass(frozen=True)
class ShardName:
    shard: str
    group: str
    part: int
    parts: int


class ShardMeta(BaseModel):
    """What triage needs of a parsed shard besides its records (state/<incident>/shards/<shard>.json)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    incident: str
    host: str
    source: str = Field(description="the incoming/ key the shard was parsed from")
    snapshot: str | None = Field(None, description="the snapshot file it was cut from, when it is a part of one "
                                 "(the manifest names that file, as if it had been read whole)")
    object_sha256: str | None = Field(None, description="the digest of the incoming object as it was parsed: an event "
                                      "for that key after the object changed is refused, not taken as done")
    shard: str
    part: int
    parts: int
    format: str = Field(description="the queue format read, or 'unreadable'")
    sha256: str | None = None
    members_read: int = 0
    messages: int = 0
    skipped: list[str] = Field(default_factory=list)
    defects: list[str] = Field(default_factory=list)
    site: dict[str, Any] | None = Field(None, description="the MTA configuration the agent recorded, with its host")


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def stem(filename: str) -> str:
    for s in _SUFFIXES:
        if filename.endswith(s):
            return filename[: -len(s)]
    return filename


def shard_of(host: str, filename: str) -> ShardName:
    """The shard an incoming file is: '<host>.<stem>', with its part number and count."""
    shard = check_name("shard", f"{host}.{stem(filename)}")
    return parse_shard(shard)


def parse_shard(shard: str) -> ShardName:
    m = _PART.match(shard)
    if not m or not 1 <= int(m["i"]) <= int(m["n"]):
        return ShardName(shard, shard, 1, 1)
    return ShardName(shard, m["base"], int(m["i"]), int(m["n"]))


def of_one_name(keys: Iterable[str], prefix: str, host: str, filename: str) -> list[str]:
    """The keys, of files directly under prefix (a host's incoming/ folder), that are the snapshot `filename`
    names or parts of one of that name: what a snapshot of that name would be parsed and triaged with."""
    group = shard_of(host, filename).group
    out = []
    for k in keys:
        name = k[len(prefix):]
        if not k.startswith(prefix) or "/" in name or name.startswith("."):
            continue
        try:
            if shard_of(host, name).group == group:
                out.append(k)
        except ValueError:
            continue
    return out


def missing(shards: Iterable[str]) -> list[str]:
    """What is still to come before the set of parsed shards is complete ([] means: triage now)."""
    groups: dict[str, set[int]] = defaultdict(set)
    total: dict[str, int] = {}
    for s in shards:
        n = parse_shard(s)
        groups[n.group].add(n.part)
        total[n.group] = max(total.get(n.group, 0), n.parts)
    out = []
    for g, have in sorted(groups.items()):
        out += [f"{g}.part-{i:04d}-of-{total[g]:04d}" for i in range(1, total[g] + 1) if i not in have]
    return out


def part_name(base: str, i: int, n: int) -> str:
    return f"{base}.part-{i:04d}-of-{n:04d}.tar.zst"


class Cut(BaseModel):
    """A part's account of the snapshot it was cut from (its spoolsweep-snapshot.json's "cut"): what the
    manifest says of that snapshot, as if it had been read whole. Every part names it; the last one also
    tells what the whole read found besides messages (told once, as the CLI's shards tell it)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    source: str = Field(max_length=500, description="the snapshot's file name")
    format: str = Field(max_length=100, description="the queue format it was read as")
    sha256: str | None = Field(None, max_length=64)
    members_read: int = Field(0, ge=0)
    skipped: list[str] = Field(default_factory=list)
    defects: list[str] = Field(default_factory=list)


def cut_of(meta: dict[str, Any]) -> tuple[Cut | None, list[str]]:
    """The "cut" a part's spoolsweep-snapshot.json gives (None: not a part of another snapshot), and the
    defect to tell when it is not one that can be read (the part is then described as itself)."""
    if "cut" not in meta:
        return None, []
    try:
        return Cut.model_validate(meta["cut"]), []
    except ValidationError as e:
        return None, [f"spoolsweep-snapshot.json: its \"cut\" is not readable ({str(e).splitlines()[0]}); "
                      "the part is described as itself"]


def _write_shard(path: Path, host: str, source_format: str, batch: list[Found], report: ArchiveReport,
                 cut: Cut) -> None:
    # each message's defects go on with it: a digest that differed from the source's index, an entry the
    # index lacked, bytes too large to read; the part's reader says them again (pipeline.readers.canonical)
    index = "".join(IndexEntry(path=f.raw.path, sha256=f.sha256, size=f.size, envelope=f.raw.envelope,
                               defects=list(f.raw.defects) or None).model_dump_json(exclude_none=True) + "\n"
                    for f in batch)
    # a canonical source's own MTA and recorded configuration go on with every part: they say what
    # its envelopes can be trusted to hold (pipeline.verdicts.records_client) and which policy it had
    mta = report.meta.get("mta", source_format) if source_format == "canonical" else source_format
    extra = {"site": report.meta["site"]} if isinstance(report.meta.get("site"), dict) else {}
    meta = json.dumps({"format": "spoolsweep-snapshot", "version": 1, "host": host, "mta": mta,
                       "messages": len(batch), **extra, "cut": cut.model_dump()})
    with open(path, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as zw, \
            tarfile.open(fileobj=zw, mode="w|") as tf:
        for name, data in [("spoolsweep-snapshot.json", meta.encode()), ("index.jsonl", index.encode())] + \
                [(f.raw.path, f.data) for f in batch if f.data is not None]:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o600, 0
            tf.addfile(ti, io.BytesIO(data))


def split_snapshot(source: Path, out_dir: Path, host: str, per_shard: int, limits: Limits,
                   fmt: str | None = None) -> list[Path]:
    """Cut a snapshot of any known format into canonical shards of at most per_shard messages.

    Messages keep their paths, envelopes, digests and defects, so triage of the parts decides as
    triage of the whole snapshot would; a message too large to hold stays listed in the index with
    its defect, so triage says review. Every part names the snapshot it was cut from (Cut), the last
    one with what the read found besides messages: the manifest describes the snapshot uploaded.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    base = stem(source.name.rstrip("/")) or "snapshot"
    check_name("file", base)
    # the file's digest, as the read below computes it (it drains the file): every part names it
    digest = file_sha256(source) if source.is_file() else None
    name, found, report = read_snapshot(source, limits, fmt=fmt, report=ArchiveReport())
    cut = Cut(source=source.name.rstrip("/")[:500], format=name, sha256=digest)
    written: list[Path] = []
    batch: list[Found] = []
    for f in found:
        if len(batch) >= per_shard:  # written once the next message shows it is not the last part
            written.append(out_dir / f".tmp-{len(written) + 1}")
            _write_shard(written[-1], host, name, batch, report, cut)
            batch = []
        batch.append(f)
    # the read is over: the last part tells what it found besides messages
    changed = ([f"{source.name}: changed while it was cut into parts (sha256 {digest} before, "
                f"{report.sha256} as read)"] if report.sha256 and report.sha256 != digest else [])
    last = cut.model_copy(update={"members_read": report.members, "skipped": list(report.skipped),
                                  "defects": [*report.defects, *changed]})
    written.append(out_dir / f".tmp-{len(written) + 1}")
    _write_shard(written[-1], host, name, batch, report, last)
    final = []
    for i, p in enumerate(written, 1):
        target = out_dir / part_name(base, i, len(written))
        p.replace(target)
        final.append(target)
    return final
