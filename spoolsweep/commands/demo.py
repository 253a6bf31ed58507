"""`spoolsweep demo`: the README's main job on bundled data: generate an incident, triage it, check it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from spoolsweep.console_out import out, progress_bar, summary_table


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    workdir: Annotated[Path, typer.Option(help="where the incident and the manifest go")] = Path("demo-out"),
    messages: Annotated[int, typer.Option("--messages", "-n", help="size of the generated incident")] = 5000,
    seed: Annotated[int, typer.Option(help="same seed, same incident")] = 1,
    corpus: Annotated[Path | None, typer.Option(help="SpamAssassin corpus tarball or folder")] = None,
) -> None:
    """Generate an open-relay + stolen-password incident from real public mail, triage it, score it."""
    from pipeline.generator import POLICY_TOML, find_corpus, generate, load_corpus, score, write_canonical
    from pipeline.manifest_io import write_manifest
    from pipeline.policy import load_policy
    from pipeline.triage import triage

    workdir.mkdir(parents=True, exist_ok=True)
    policy_path = workdir / "site.toml"
    policy_path.write_text(POLICY_TOML)
    snap = workdir / "incident.tar.gz"
    out.print(f"[bold]1. generating[/] an incident of {messages:,} messages from the SpamAssassin corpus")
    ham, spam = load_corpus(corpus or find_corpus())
    write_canonical(generate(ham, spam, n=messages, seed=seed), snap)
    out.print(f"   snapshot {snap} ({snap.stat().st_size / 2**20:.1f} MiB), policy {policy_path}")
    out.print("[bold]2. triage[/]")
    t0 = time.perf_counter()
    with progress_bar() as cb:
        manifest = triage(snap, load_policy(policy_path), progress=cb)
    dt = time.perf_counter() - t0
    path = write_manifest(manifest, workdir)
    summary_table(manifest)
    out.print(f"   {manifest.totals.messages / dt:,.0f} messages/s; manifest {path}")
    s = score(manifest.messages, workdir / "incident.truth.jsonl")
    out.print("[bold]3. checked against the ground truth[/]")
    out.print(f"   valid marked spam: {s['valid_as_spam']}   spam marked valid: {s['spam_as_valid']} "
              f"({s['spam_as_valid_share']:.2%} of spam)   review: {s['review']} ({s['review_share']:.2%})")
    if s["valid_as_spam"]:
        raise typer.Exit(1)
