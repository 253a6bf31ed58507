"""The composition root: builds the real store, channel and signing key from a function's settings."""

from __future__ import annotations

import hashlib
from pathlib import Path

from functions.settings import Common, DispatchSettings
from pipeline.errors import PolicyError
from pipeline.policy import SitePolicy, policy_from_dict
from pipeline.store import Channel, LocalChannel, LocalStore, Store


def build_store(s: Common) -> Store:
    if s.store.startswith("s3://"):
        from functions.adapters import S3Store, client

        return S3Store(s.store.removeprefix("s3://").strip("/"), client("s3", s.endpoint_url, s.region))
    return LocalStore(Path(s.store))


def build_channel(s: Common) -> Channel:
    if s.channel.startswith("sqs://"):
        from functions.adapters import SqsChannel, client

        # sqs://<name-prefix> names the stack, as `spoolsweep agent run --channel` reads it
        prefix = s.channel.removeprefix("sqs://").strip("/") or s.name_prefix
        return SqsChannel(client("sqs", s.endpoint_url, s.region), prefix=prefix)
    return LocalChannel(Path(s.channel or Path(s.store) / "channel"))


def load_site_policy(store: Store, s: Common) -> SitePolicy:
    """The site policy kept in the store; the built-in default (everything unknown is review) if there is none."""
    import tomllib

    if not store.exists(s.policy_key):
        return SitePolicy()
    try:
        return policy_from_dict(tomllib.loads(store.get(s.policy_key).decode("utf-8-sig")), source=s.policy_key)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PolicyError(f"{s.policy_key}: not TOML: {e}") from None


def signing_key(s: DispatchSettings) -> tuple[bytes, str]:
    """(private PEM, key id) from a file or Secrets Manager."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from functions.errors import SettingsError

    if s.signing_key_secret:
        from functions.adapters import secret_string

        pem = secret_string(s.signing_key_secret, s.endpoint_url, s.region)
    elif s.signing_key_file:
        pem = Path(s.signing_key_file).read_bytes()
    else:
        raise SettingsError("set SPOOLSWEEP_SIGNING_KEY_FILE or SPOOLSWEEP_SIGNING_KEY_SECRET")
    pub = load_pem_private_key(pem, password=None).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pem, s.key_id or key_id_of(pub)


def key_id_of(public_raw: bytes) -> str:
    return "ed25519:" + hashlib.sha256(public_raw).hexdigest()[:16]
