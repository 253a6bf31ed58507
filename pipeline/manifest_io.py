"""Write and read manifests: complete files only, written beside and renamed into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from pipeline.models import Manifest


def manifest_bytes(manifest: Manifest) -> bytes:
    # straight to bytes: a million-message manifest is not worth holding twice
    return Manifest.__pydantic_serializer__.to_json(manifest)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(manifest: Manifest, out: Path) -> Path:
    path = Path(out) / "manifest.json"
    atomic_write(path, manifest_bytes(manifest))
    return path


def manifest_schema() -> dict[str, Any]:
    return Manifest.model_json_schema()
