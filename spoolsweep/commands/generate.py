"""`spoolsweep generate`: a labelled incident built from real public mail."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command()(generate)


def generate(
    out: Annotated[Path | None, typer.Argument(
        help="NAME.tar.gz / NAME.tar.zst, or a folder with --format eml")] = None,
    messages: Annotated[int, typer.Option("--messages", "-n", help="about how many messages")] = 2000,
    seed: Annotated[int, typer.Option(help="same seed, same incident")] = 1,
    corpus: Annotated[Path | None, typer.Option(help="SpamAssassin corpus tarball or folder")] = None,
    fmt: Annotated[str, typer.Option("--format", help="canonical | eml")] = "canonical",
    style: Annotated[str, typer.Option(help="spamware (copies varied as bulk-mail tools vary them) | plain "
                                            "(the original generator: per-copy tokens only)")] = "spamware",
    technique: Annotated[list[str] | None, typer.Option(
        "--technique", "-t", help="spamware techniques to use (repeat, or comma-separated; default all; "
                                  "--list-techniques names them)")] = None,
    no_technique: Annotated[list[str] | None, typer.Option(
        "--no-technique", "-T", help="spamware techniques not to use (repeat, or comma-separated)")] = None,
    technique_rate: Annotated[float | None, typer.Option(
        help="share of campaigns that use each technique (default: each technique's usual share)")] = None,
    list_techniques: Annotated[bool, typer.Option("--list-techniques", help="name the techniques and exit")] = False,
) -> None:
    """Generate an incident (relayed campaigns, stolen account, backscatter, real mail) with its ground truth.

    The truth file beside it names every message's label, kind, true campaign and the techniques
    its copy used, and each spamware copy's source text (runs past the corpus's distinct spams reuse one)."""
    from pipeline.errors import CorpusNotFound
    from pipeline.generator import (
        POLICY_TOML,
        STYLES,
        find_corpus,
        iter_incident,
        load_corpus,
        write_canonical,
        write_eml_folder,
    )
    from pipeline.spamware import RATES, TECHNIQUES, parse_techniques
    from spoolsweep.console_out import fail, os_said

    if list_techniques:
        for name, what in TECHNIQUES.items():
            typer.echo(f"{name:16} {RATES[name]:4.0%} of campaigns  {what}")
        return
    if out is None:
        raise typer.BadParameter("where to write the incident: NAME.tar.gz, or a folder with --format eml",
                                 param_hint="OUT")
    if fmt not in ("eml", "canonical"):
        raise typer.BadParameter(f"unknown format {fmt!r}", param_hint="--format")
    if style not in STYLES:
        raise typer.BadParameter(f"unknown style {style!r} (one of {', '.join(STYLES)})", param_hint="--style")
    if technique_rate is not None and not 0 <= technique_rate <= 1:
        raise typer.BadParameter("a share from 0 to 1", param_hint="--technique-rate")

    def names(values: list[str] | None) -> list[str]:
        return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]

    try:
        techniques = parse_techniques(names(technique) or None, names(no_technique))
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--technique") from None
    try:
        ham, spam = load_corpus(find_corpus(corpus))
    except CorpusNotFound as e:
        fail(str(e))
    try:
        inc = iter_incident(ham, spam, n=messages, seed=seed, style=style, techniques=techniques,
                            technique_rate=technique_rate)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--messages") from None
    try:
        path = write_eml_folder(inc, out) if fmt == "eml" else write_canonical(inc, out)
        policy = path.parent / "site.toml"
        if not policy.exists():
            policy.write_text(POLICY_TOML)
    except OSError as e:  # a folder that cannot be made or written: one line naming it
        fail(os_said("The incident cannot be written", e, out))
    used = "" if style == "plain" else f", techniques: {', '.join(sorted(techniques)) or 'none'}"
    typer.echo(f"{messages:,} messages ({style}{used}) -> {path} (policy {policy})")
