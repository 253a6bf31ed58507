"""`spoolsweep generate`: a labelled incident built from real public mail."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command()(generate)


def generate(
    out: Annotated[Path, typer.Argument(help="NAME.tar.gz / NAME.tar.zst, or a folder with --format eml")],
    messages: Annotated[int, typer.Option("--messages", "-n", help="about how many messages")] = 2000,
    seed: Annotated[int, typer.Option(help="same seed, same incident")] = 1,
    corpus: Annotated[Path | None, typer.Option(help="SpamAssassin corpus tarball or folder")] = None,
    fmt: Annotated[str, typer.Option("--format", help="canonical | eml")] = "canonical",
) -> None:
    """Generate an incident (relayed campaigns, stolen account, backscatter, real mail) with its ground truth."""
    from pipeline.errors import CorpusNotFound
    from pipeline.generator import (
        POLICY_TOML,
        find_corpus,
        iter_incident,
        load_corpus,
        write_canonical,
        write_eml_folder,
    )
    from spoolsweep.console_out import fail

    if fmt not in ("eml", "canonical"):
        raise typer.BadParameter(f"unknown format {fmt!r}")
    try:
        ham, spam = load_corpus(find_corpus(corpus))
    except CorpusNotFound as e:
        fail(str(e))
    inc = iter_incident(ham, spam, n=messages, seed=seed)
    if fmt == "eml":
        path = write_eml_folder(inc, out)
    else:
        path = write_canonical(inc, out)
    policy = path.parent / "site.toml"
    if not policy.exists():
        policy.write_text(POLICY_TOML)
    typer.echo(f"{messages:,} messages -> {path} (policy {policy})")
