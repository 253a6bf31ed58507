"""The embedded default on one machine: a store directory, a local channel, keys, and the same handlers.

    <root>/incoming/ parsed/ manifests/ ...   the store (pipeline/queues.py), durable on disk
    <root>/channel/<host>/                    the local instruction channel (pipeline.store.LocalChannel)
    <root>/keys/signing.pem, signing.pub.pem  the Ed25519 key dispatch signs with; agents verify with .pub
    <root>/.runner/                           what the local runner has handled, and its dead letters
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from functions.root import key_id_of
from functions.shards import split_snapshot
from pipeline import queues
from pipeline.errors import SpoolsweepError, StoreError
from pipeline.instructions import Approval, approval_from_manifest, generate_keypair
from pipeline.models import Manifest
from pipeline.policy import SitePolicy
from pipeline.store import Store


class AlreadyExists(SpoolsweepError):
    """It already exists and is never overwritten:"""


def key_paths(root: Path) -> tuple[Path, Path]:
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


def configure(root: Path, workers: int | None = None) -> None:
    """Point the handlers' settings at the embedded default (environment, as Lambda configures them)."""
    priv, _ = key_paths(root)
    os.environ.update({
        "SPOOLSWEEP_STORE": str(root), "SPOOLSWEEP_CHANNEL": str(root / "channel"),
        "SPOOLSWEEP_SIGNING_KEY_FILE": str(priv), "SPOOLSWEEP_WORKERS": str(workers or os.cpu_count() or 1),
    })
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")  # no CloudWatch here to read EMF lines
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    from functions.runner import reset_handlers

    reset_handlers()


def put_policy(store: Store, policy_toml: bytes, key: str = "state/policy.toml") -> None:
    from pipeline.errors import PolicyError
    from pipeline.policy import policy_from_toml

    try:
        text = policy_toml.decode("utf-8-sig")  # a byte-order mark is not part of the TOML
    except UnicodeDecodeError:
        raise PolicyError("policy: not UTF-8 text; save it as UTF-8") from None
    policy_from_toml(text, source="policy")  # refuse a bad one here, not later
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
        store.put(key, source.read_bytes())
        return [key]
    keys = []
    with tempfile.TemporaryDirectory(prefix="spoolsweep-upload-") as tmp:
        for part in split_snapshot(source, Path(tmp), host, shard_size, (policy or SitePolicy()).limits):
            key = queues.incoming_key(incident, host, part.name)
            store.put(key, part.read_bytes())
            keys.append(key)
    return keys


def approve(store: Store, incident: str, by: str, host: str | None = None,
            now: datetime | None = None, overrides: dict | None = None,
            changes: list[dict] | None = None) -> tuple[str, Approval, bool]:
    """Write the approval of an incident's current manifest once; (key, approval, newly written)."""
    mkey = queues.manifest_key(incident)
    data = store.get(mkey)
    manifest = Manifest.model_validate_json(data)
    hosts = [h.strip() for h in (manifest.snapshot.host or "").split(",") if h.strip()]
    if host is None:
        if len(hosts) != 1:
            raise StoreError(f"{mkey} names hosts {hosts or 'none'}; say which with --host")
        host = hosts[0]
    sha = hashlib.sha256(data).hexdigest()
    # one approval per manifest, host and person: approving twice is the same approval, not a second replay
    approval_id = hashlib.sha256(f"{sha}\n{host}\n{by}".encode()).hexdigest()[:24]
    approval = approval_from_manifest(manifest, sha, host, by, now or datetime.now(UTC), approval_id,
                                      changes=changes, overrides=overrides)
    key = queues.approval_key(incident, approval_id)
    if store.exists(key):
        return key, Approval.model_validate_json(store.get(key)), False
    written = store.put_if_absent(key, approval.model_dump_json(indent=1).encode())
    if not written:
        approval = Approval.model_validate_json(store.get(key))
    return key, approval, written
