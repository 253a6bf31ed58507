"""Shards: how a big snapshot is cut into parts that parse in parallel, and how triage knows the last one landed.

A shard is uploaded as incoming/<incident>/<host>/<base>.part-0003-of-0010.tar.zst; a file without the
part suffix is a shard of one. The name alone says how many parts there are, so the fan-in needs no
plan object that could arrive after its shards. A parsed shard's metadata is a ShardMeta, written by the
parse use case before the records and read by triage.
"""

from __future__ import annotations

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
from pydantic import BaseModel, ConfigDict, Field

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


def _write_shard(path: Path, host: str, source_format: str, batch: list[Found], report: ArchiveReport) -> None:
    index = "".join(IndexEntry(path=f.raw.path, sha256=f.sha256, size=f.size, envelope=f.raw.envelope)
                    .model_dump_json(exclude_none=True) + "\n" for f in batch)
    # a canonical source's own MTA and recorded configuration go on with every part: they say what
    # its envelopes can be trusted to hold (pipeline.verdicts.records_client) and which policy it had
    mta = report.meta.get("mta", source_format) if source_format == "canonical" else source_format
    extra = {"site": report.meta["site"]} if isinstance(report.meta.get("site"), dict) else {}
    meta = json.dumps({"format": "spoolsweep-snapshot", "version": 1, "host": host, "mta": mta,
                       "messages": len(batch), **extra})
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

    Messages keep their paths, envelopes and digests, so their ids are the same as if the whole
    snapshot had been triaged at once; a message too large to hold stays listed in the index,
    so triage sees it as missing and says review.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    base = stem(source.name.rstrip("/")) or "snapshot"
    check_name("file", base)
    name, found, report = read_snapshot(source, limits, fmt=fmt, report=ArchiveReport())
    written: list[Path] = []
    batch: list[Found] = []
    for f in found:
        batch.append(f)
        if len(batch) >= per_shard:
            written.append(out_dir / f".tmp-{len(written) + 1}")
            _write_shard(written[-1], host, name, batch, report)
            batch = []
    if batch or not written:
        written.append(out_dir / f".tmp-{len(written) + 1}")
        _write_shard(written[-1], host, name, batch, report)
    final = []
    for i, p in enumerate(written, 1):
        target = out_dir / part_name(base, i, len(written))
        p.replace(target)
        final.append(target)
    return final
