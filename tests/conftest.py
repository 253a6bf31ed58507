"""Shared fixtures: the corpus, generated incidents and the site policy they were generated for."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.generator import POLICY_TOML, find_corpus, generate, load_corpus, write_canonical
from pipeline.policy import SitePolicy, load_policy

ROOT = Path(__file__).resolve().parent.parent


# `./run test` spreads the suite over two processes (pytest-xdist, `--dist loadgroup`). A module's tests stay
# together, so its module fixtures (a moto server, generated incidents) are built once; every test that runs a
# real MTA or the lab's network namespace is in one group, so no two of them run side by side (they unpack
# Debian's packages into one cache, and each starts daemons of its own).
_MTA_MARKS = {"postfix", "exim", "sendmail"}
_MTA_MODULES = {"test_lab_loopback"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.stem
        mta = module in _MTA_MODULES or any(m.name in _MTA_MARKS for m in item.iter_markers())
        item.add_marker(pytest.mark.xdist_group("mta" if mta else module))

@pytest.fixture(scope="session")
def corpus() -> tuple[list[bytes], list[bytes]]:
    return load_corpus(find_corpus())


@pytest.fixture(scope="session")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("policy") / "site.toml"
    p.write_text(POLICY_TOML)
    return p


@pytest.fixture(scope="session")
def policy(policy_file: Path) -> SitePolicy:
    return load_policy(policy_file)


@pytest.fixture(scope="session")
def incident_tar(corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1,500-message generated incident as a canonical .tar.gz, truth beside it."""
    ham, spam = corpus
    out = tmp_path_factory.mktemp("incident") / "incident.tar.gz"
    write_canonical(generate(ham, spam, n=1500, seed=7), out)
    return out


@pytest.fixture(scope="session", autouse=True)
def local_nameserver():
    """Every blocklist query of the suite goes to a DNS server on 127.0.0.1, never to the real lists.

    The pipeline's blocklist step (functions, `spoolsweep up` in subprocesses) reads
    SPOOLSWEEP_NAMESERVER; this server knows no zone, so every zone is "not working" and nothing
    leaves the machine.
    """
    from tests.support.dns_server import LocalDNS, ZoneResolver

    with LocalDNS(ZoneResolver({}, set(), set(), set())) as server:
        old = os.environ.get("SPOOLSWEEP_NAMESERVER")
        os.environ["SPOOLSWEEP_NAMESERVER"] = server.nameserver
        try:
            yield server
        finally:
            if old is None:
                os.environ.pop("SPOOLSWEEP_NAMESERVER", None)
            else:
                os.environ["SPOOLSWEEP_NAMESERVER"] = old


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's server on 127.0.0.1, one for each test module that asks for it; yields its endpoint URL."""
    from tests.support.moto import moto_server

    with moto_server() as url:
        yield url
