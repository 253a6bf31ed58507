"""Use cases around an incident's store: the site policy, uploading a snapshot, approving, the signing key."""

from __future__ import annotations

import os
import tempfile
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from pipeline import queues
from pipeline.approval_stream import approval_bytes, approved_lists
from pipeline.errors import PolicyError, SpoolsweepError, StoreError
from pipeline.instructions import Approval, approval_id, effective_verdicts, generate_keypair, key_id_of
from pipeline.manifest_io import ManifestReader
from pipeline.models import Manifest, Verdict
from pipeline.policy import SitePolicy, policy_from_dict, policy_from_toml
from pipeline.shards import of_one_name, split_snapshot
from pipeline.store import Store


class AlreadyExists(SpoolsweepError):
    """It already exists and is never overwritten:"""


class Counts(NamedTuple):
    """What an approval says, in numbers (the approval itself lists every message: read it from its key)."""

    approval_id: str
    host: str
    approved_by: str
    manifest_sha256: str
    replay: int
    purge: int
    hold: int


class Approved(NamedTuple):
    key: str
    approval: Counts
    new: bool  # False: the same approval was already written


def load_site_policy(store: Store, key: str = queues.POLICY_KEY) -> SitePolicy:
    """The site policy kept in the store; the built-in default (everything unknown is review) if there is none."""
    if not store.exists(key):
        return SitePolicy()
    try:
        return policy_from_dict(tomllib.loads(store.get(key).decode("utf-8-sig")), source=key)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PolicyError(f"{key}: not TOML: {e}") from None


def put_policy(store: Store, policy_toml: bytes, key: str = queues.POLICY_KEY) -> None:
    """Keep a site policy in the store, refusing a bad one here rather than at triage."""
    try:
        text = policy_toml.decode("utf-8-sig")  # a byte-order mark is not part of the TOML
    except UnicodeDecodeError:
        raise PolicyError("policy: not UTF-8 text; save it as UTF-8") from None
    policy_from_toml(text, source="policy")
    store.put(key, text.encode())


def upload(store: Store, source: Path, incident: str, host: str, shard_size: int = 20000,
           policy: SitePolicy | None = None) -> list[str]:
    """Put a snapshot under incoming/, cut into shards of shard_size messages (0: as it is); the keys."""
    queues.check_name("incident", incident)
    queues.check_name("host", host)
    if shard_size <= 0:
        if not source.is_file():
            raise StoreError(f"{source}: only a file can be uploaded whole; give a shard size for a folder")
        key = queues.incoming_key(incident, host, source.name)
        data = source.read_bytes()
        _not_another(store, incident, host, source.name, {key: lambda: data})
        store.put(key, data)
        return [key]
    with tempfile.TemporaryDirectory(prefix="spoolsweep-upload-") as tmp:
        parts = split_snapshot(source, Path(tmp), host, shard_size, (policy or SitePolicy()).limits)
        new = {queues.incoming_key(incident, host, p.name): p.read_bytes for p in parts}
        _not_another(store, incident, host, source.name, new)
        for key, read in new.items():
            store.put(key, read())
    return list(new)


def _not_another(store: Store, incident: str, host: str, name: str, new: dict[str, Callable[[], bytes]]) -> None:
    """Refuse a snapshot whose objects would land where another one of the same name already is: the parse
    finds those already parsed and goes on, so the manifest would go on describing the first one, with no word
    said (and parts of a different count would be triaged beside the first's). The same snapshot again (an
    upload retried, whole or cut as before; beside the parts the parse cut a whole one into) is put again."""
    prefix = queues.incoming_key(incident, host, "x")[:-1]
    there = of_one_name(store.list(prefix), prefix, host, next(iter(new)).rsplit("/", 1)[-1])
    same = [k for k in there if k in new]
    if not there or (same and all(store.get(k) == new[k]() for k in same)):
        return
    raise StoreError(f"{name}: incident {incident} already holds a snapshot of that name from {host} "
                     f"({len(there)} object(s) under {prefix}) other than this upload's; upload this one as "
                     "another incident")


def approve(store: Store, incident: str, by: str, host: str | None = None, now: datetime | None = None,
            overrides: dict[str, Verdict] | None = None, changes: list[dict[str, Any]] | None = None) -> Approved:
    """Write the approval of an incident's current manifest once."""
    mkey = queues.manifest_key(incident)
    reader = ManifestReader(store, incident)
    if host is None:
        hosts = reader.summary.snapshot.hosts
        if len(hosts) != 1:
            raise StoreError(f"{mkey} names hosts {hosts or 'none'}; say which with --host")
        host = hosts[0]
    return write_approval(store, incident, reader, reader.sha256, host, by, now or datetime.now(UTC), overrides,
                          changes)


def write_approval(store: Store, incident: str, manifest: Manifest | ManifestReader, manifest_sha256: str, host: str,
                   by: str, now: datetime, overrides: dict[str, Verdict] | None = None,
                   changes: list[dict[str, Any]] | None = None) -> Approved:
    """The approval object, written once under its deterministic key (a second writer reads the first's).

    Made as a stream (pipeline.approval_stream): every message of the manifest is read, none held. A missing
    or corrupt part is a ManifestError, and nothing is written."""
    aid = approval_id(manifest_sha256, host, by)
    key = queues.approval_key(incident, aid)
    if store.exists(key):
        return _existing(store, key)
    changes = changes or []
    if overrides is None:
        overrides = effective_verdicts(manifest, changes)
    head = Approval(approval_id=aid, incident=incident, host=host, manifest_sha256=manifest_sha256, approved_by=by,
                    approved_at=now, changes=changes, replay=[], purge=[], hold=[])
    with approved_lists(manifest, overrides) as lists:
        data = approval_bytes(head, lists)
        counts = Counts(aid, host, by, manifest_sha256, **lists.counts)
    if store.put_if_absent(key, data):
        return Approved(key, counts, True)
    return _existing(store, key)


def _existing(store: Store, key: str) -> Approved:
    a = Approval.model_validate_json(store.get(key))
    return Approved(key, Counts(a.approval_id, a.host, a.approved_by, a.manifest_sha256, len(a.replay), len(a.purge),
                                len(a.hold)), False)


def key_paths(root: Path) -> tuple[Path, Path]:
    """Where the embedded default keeps its signing key pair: <root>/keys/signing.pem and signing.pub.pem."""
    return root / "keys" / "signing.pem", root / "keys" / "signing.pub.pem"


def keys_init(root: Path, force: bool = False) -> tuple[Path, str]:
    """Create the signing key pair (private key 0600); (public key path, key id)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    priv_path, pub_path = key_paths(root)
    if priv_path.exists() and not force:
        raise AlreadyExists(str(priv_path))
    priv, pub = generate_keypair()
    priv_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(priv_path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(priv)
    os.replace(priv_path.with_suffix(".tmp"), priv_path)
    pub_path.write_bytes(pub)
    raw = load_pem_public_key(pub).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pub_path, key_id_of(raw)
