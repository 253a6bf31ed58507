"""Hand the snapshot to the pipeline: into a local store directory, or to S3 as a multipart upload with
SHA-256 checksums that resumes where it stopped. Either way the checksum is confirmed before the agent
lets go of its local copy; an object already there is never overwritten."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agent.errors import AgentError, SnapshotExists, UploadError
from agent.snapshot import file_sha256
from pipeline.queues import INCOMING, check_name, incoming_key

PART = 16 * 2**20


@dataclass
class Destination:
    """Where a snapshot goes: a store root folder, or an S3 bucket; the key is incoming/<incident>/<host>/."""

    kind: str  # "dir" | "s3"
    root: str
    incident: str
    host: str

    def key(self, name: str) -> str:
        return incoming_key(self.incident, self.host, name)

    def prefix(self) -> str:
        return f"{INCOMING}/{self.incident}/{self.host}/"

    def __str__(self) -> str:
        base = f"s3://{self.root}" if self.kind == "s3" else self.root.rstrip("/")
        return f"{base}/{self.prefix()}"


def parse_destination(upload: str | None, to: Path | None, incident: str | None, host: str) -> Destination:
    """`--upload s3://bucket/incoming/<incident>/<host>/` or `--to DIR` (a store root) plus --incident."""
    if (upload is None) == (to is None):
        raise UploadError("give exactly one of --upload s3://... or --to DIR")
    if to is not None:
        if incident is None:
            raise UploadError("--to needs --incident")
        return Destination("dir", str(to), check_name("incident", incident), check_name("host", host))
    assert upload is not None
    u = urlparse(upload)
    if u.scheme != "s3" or not u.netloc:
        raise UploadError(f"{upload!r} is not an s3://bucket/incoming/<incident>/<host>/ URL")
    parts = [p for p in u.path.split("/") if p]
    if len(parts) >= 2 and parts[0] == INCOMING:
        url_incident = parts[1]
        if incident is not None and incident != url_incident:
            raise UploadError(f"--incident {incident} differs from the URL's {url_incident}")
        incident = url_incident
        if len(parts) >= 3 and parts[2] != host:
            raise UploadError(f"the URL names host {parts[2]!r}, this agent is {host!r} (--host)")
    elif parts or incident is None:
        raise UploadError(f"{upload!r}: expected s3://bucket/incoming/<incident>/<host>/ (or s3://bucket + --incident)")
    return Destination("s3", u.netloc, check_name("incident", incident), check_name("host", host))


@contextmanager
def _s3_said(make: Callable[[str], AgentError]) -> Iterator[None]:
    """What S3 or the way to it said (no credentials, no connection, access denied, no such bucket), as the
    agent's error of one line: it was a traceback of botocore's and urllib3's frames."""
    from adapters.aws import said

    try:
        yield
    except Exception as e:
        if (why := said(e)) is None:
            raise
        raise make(why) from None


def existing(dest: Destination, client: Any = None) -> list[str]:
    """Objects already under the destination prefix (a second snapshot into one incident is refused)."""
    if dest.kind == "dir":
        base = Path(dest.root) / dest.prefix()
        return sorted(p.name for p in base.iterdir() if not p.name.startswith(".")) if base.is_dir() else []
    with _s3_said(lambda why: AgentError(f"{dest} cannot be listed, so nothing was frozen: {why}")):
        s3 = client or _s3()
        resp = s3.list_objects_v2(Bucket=dest.root, Prefix=dest.prefix(), MaxKeys=10)
    return [o["Key"] for o in resp.get("Contents", [])]


def to_dir(archive: Path, dest: Destination, name: str, sha256: str) -> str:
    """Copy into <root>/incoming/<incident>/<host>/<name>, fsync, re-read to confirm, then link into place."""
    final = Path(dest.root) / dest.key(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        if file_sha256(final) == sha256:
            return str(final)  # a resumed upload that had finished
        raise SnapshotExists(f"{final} exists with other content")
    tmp = final.with_name(f".{name}.upload")
    with open(archive, "rb") as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    if file_sha256(tmp) != sha256:
        tmp.unlink()
        raise UploadError(f"{tmp}: checksum differs after copy")
    try:
        os.link(tmp, final)  # never overwrite: the snapshot is evidence
    finally:
        tmp.unlink(missing_ok=True)
    return str(final)


def _s3() -> Any:
    from adapters.aws import client  # only here: the agent's base install has no boto3
    from adapters.bootstrap import cloud_from_env

    cloud = cloud_from_env()
    return client("s3", cloud.endpoint_url, cloud.region)


def to_s3(archive: Path, dest: Destination, name: str, sha256: str, state: dict,
          save: Callable[[dict], None], progress: Callable[[str, int, int | None], None] | None = None,
          client: Any = None) -> str:
    """Multipart upload with a SHA-256 per part; `state` (saved after each part) lets it resume."""
    with _s3_said(lambda why: UploadError(f"s3://{dest.root}/{dest.key(name)}: {why}; the queue stays frozen, the "
                                          f"copy is {archive}: run the same command again to go on")):
        return _to_s3(archive, dest, name, sha256, state, save, progress, client)


def _to_s3(archive: Path, dest: Destination, name: str, sha256: str, state: dict,
           save: Callable[[dict], None], progress: Callable[[str, int, int | None], None] | None,
           client: Any) -> str:
    s3 = client or _s3()
    key = dest.key(name)
    size = archive.stat().st_size
    nparts = max(1, -(-size // PART))
    if not state.get("upload_id"):
        resp = s3.create_multipart_upload(Bucket=dest.root, Key=key, ChecksumAlgorithm="SHA256",
                                          Metadata={"sha256": sha256})
        state = {"upload_id": resp["UploadId"], "parts": {}}
        save(state)
    parts: dict[str, dict] = state["parts"]
    digests: list[bytes] = []
    with open(archive, "rb") as fh:
        for n in range(1, nparts + 1):
            chunk = fh.read(PART)
            digest = hashlib.sha256(chunk).digest()
            digests.append(digest)
            b64 = base64.b64encode(digest).decode()
            if str(n) in parts and parts[str(n)]["ChecksumSHA256"] == b64:
                continue
            r = s3.upload_part(Bucket=dest.root, Key=key, UploadId=state["upload_id"], PartNumber=n,
                               Body=chunk, ChecksumAlgorithm="SHA256", ChecksumSHA256=b64)
            parts[str(n)] = {"PartNumber": n, "ETag": r["ETag"], "ChecksumSHA256": b64}
            save(state)
            if progress:
                progress("uploading", n, nparts)
    s3.complete_multipart_upload(
        Bucket=dest.root, Key=key, UploadId=state["upload_id"],
        MultipartUpload={"Parts": [parts[str(n)] for n in range(1, nparts + 1)]})
    head = s3.head_object(Bucket=dest.root, Key=key, ChecksumMode="ENABLED")
    # S3 answers with the checksum of the part checksums ("...-N"); compare the digest part
    want = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
    got = head.get("ChecksumSHA256")
    if head.get("ContentLength") != size or not got or got.split("-")[0] != want:
        raise UploadError(f"s3://{dest.root}/{key}: checksum {got} != {want} or size {head.get('ContentLength')}")
    return f"s3://{dest.root}/{key}"


def dumps(state: dict) -> str:
    return json.dumps(state, sort_keys=True)
