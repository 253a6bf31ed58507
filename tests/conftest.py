"""Shared fixtures: the corpus, generated incidents and the site policy they were generated for."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.generator import POLICY_TOML, find_corpus, generate, load_corpus, write_canonical
from pipeline.policy import SitePolicy, load_policy

ROOT = Path(__file__).resolve().parent.parent


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
