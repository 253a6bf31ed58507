"""Incidents that hold many messages for review, in a local store: for the review-group tests and screenshots."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

from pipeline.generator import POLICY_TOML, iter_incident, write_canonical
from pipeline.manifest_io import write_manifest
from pipeline.policy import SitePolicy, policy_from_dict
from pipeline.triage import triage

HOST = "mail.example.net"


def review_policy() -> SitePolicy:
    """The generator's site, but the office network 192.0.2.0/24 was left out of trusted_networks: its outbound
    mail (a local sender, unauthenticated, from outside) and the web shop are held for review."""
    d = tomllib.loads(POLICY_TOML)
    d["trusted_networks"] = [n for n in d["trusted_networks"] if n != "192.0.2.0/24"]
    return policy_from_dict(d)


def review_store(root: Path, corpus: tuple[list[bytes], list[bytes]], incident: str, n: int = 400, shop: int = 25,
                 seed: int = 11, workers: int | None = 1, style: str = "plain") -> Path:
    """root/ becomes a local store with the manifest and snapshot of one such incident; returns root."""
    ham, spam = corpus
    work = root.parent / (root.name + "-work")
    tar = write_canonical(iter_incident(ham, spam, n=n, seed=seed, shop=shop, style=style), work / "snapshot.tar.gz",
                          host=HOST)
    manifest = triage(tar, review_policy(), incident=incident, workers=workers)
    write_manifest(manifest, root / "manifests" / incident)
    dest = root / "incoming" / incident / HOST
    dest.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tar), dest / "snapshot.tar.gz")
    return root
