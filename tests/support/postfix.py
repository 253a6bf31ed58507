"""Pytest fixtures for a private Postfix; the instance lives in spoolsweep/lab/postfix.py (the demo uses it too)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spoolsweep.lab.postfix import (  # noqa: F401 - re-exported for the tests
    MASTER_CF,
    POSTFIX,
    QUEUES,
    DovecotAuth,
    PostfixInstance,
    available,
    closed_port,
    free_port,
    main_cf,
    private_postfix,
)


@pytest.fixture
def postfix_instance() -> Iterator[PostfixInstance]:
    """A running private Postfix whose mail stays queued; stopped after the test."""
    if why := available():
        pytest.skip(why)
    with private_postfix() as pf:
        yield pf


@pytest.fixture(scope="module")
def postfix_module() -> Iterator[PostfixInstance]:
    """The same, shared by one test module (start-up costs about a second)."""
    if why := available():
        pytest.skip(why)
    with private_postfix() as pf:
        yield pf
