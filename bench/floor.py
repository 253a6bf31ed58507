"""The read-and-hash floor of a snapshot: every member read by the reader triage uses (pipeline.archive:
libarchive when installed, the standard library's tarfile with SPOOLSWEEP_TAR_READER=tarfile) and hashed
with SHA-256, nothing parsed. What a triage cannot go below; its time over this, measured in the same run,
compares across the machine's quick and slow hours where messages per second does not."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path


def read_and_hash(snap: str | Path) -> tuple[int, float]:
    """(members read, seconds) of one pass over the snapshot."""
    from pipeline.archive import ArchiveReport, iter_members
    from pipeline.policy import Limits

    t0 = time.perf_counter()
    n = 0
    for m in iter_members(snap, Limits(), ArchiveReport()):
        if m.data is not None:
            hashlib.sha256(m.data).digest()
        n += 1
    return n, time.perf_counter() - t0
