"""The private Exim lives in spoolsweep/lab/exim.py (the demo uses it too); re-exported for the tests."""

from __future__ import annotations

from spoolsweep.lab.exim import (  # noqa: F401 - re-exported for the tests
    CACHE,
    CONFIG,
    EXIM_UID,
    PACKAGES,
    EximInstance,
    available,
    private_exim,
    unpacked,
)
