"""`spoolsweep demo`: the README's main job: a whole spam incident on one machine, told step by step, checked."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from spoolsweep.console_out import fail, out, progress_bar, summary_table


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    workdir: Annotated[Path, typer.Option(help="where the incident, the store and the tally go")] = Path("demo-out"),
    messages: Annotated[int, typer.Option("--messages", "-n", help="size of the generated incident")] = 2000,
    seed: Annotated[int, typer.Option(help="same seed, same incident")] = 1,
    corpus: Annotated[Path | None, typer.Option(help="SpamAssassin corpus tarball or folder")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="approve the engine's verdicts and replay/purge")] = False,
    spool: Annotated[str, typer.Option(
        help="auto | postfix (needs root and Debian postfix) | exim | sendmail (need root and apt-get download) | "
             "pickup | triage-only")] = "auto",
    mta: Annotated[str | None, typer.Option(help="the same as --spool: postfix | exim | sendmail")] = None,
    console: Annotated[bool, typer.Option(help="open the review console on 127.0.0.1 if it is installed")] = True,
    wait_approval: Annotated[float, typer.Option(
        min=0, help="without --yes: seconds to wait for an approval made in the console or with "
                    "`spoolsweep approve`")] = 0,
) -> None:
    """A real incident: flood a private open-relay Postfix (or Exim, or Sendmail), close it, snapshot, triage, approve,
    replay, tally."""
    from pipeline.errors import CorpusNotFound
    from pipeline.generator import MIN_VALID, find_corpus
    from spoolsweep.lab.postfix import available

    spool = mta or spool
    if spool not in ("auto", "postfix", "exim", "sendmail", "pickup", "triage-only"):
        raise typer.BadParameter("--spool/--mta must be auto, postfix, exim, sendmail, pickup or triage-only")
    if messages < MIN_VALID:  # before anything starts (pipeline.generator.iter_incident refuses it there)
        raise typer.BadParameter(f"an incident has at least {MIN_VALID} messages (its valid mail alone), "
                                 f"not {messages}", param_hint="--messages")
    try:
        corpus = find_corpus(corpus)  # before anything starts: a wrong --corpus is a one-line error
    except CorpusNotFound as e:
        fail(str(e))
    if spool in ("exim", "sendmail"):
        from spoolsweep.lab import exim, sendmail

        if why := (exim if spool == "exim" else sendmail).available():
            out.print(f"[red]cannot run a private {spool.capitalize()} here:[/] {why}")
            raise typer.Exit(1)
    if spool == "triage-only":
        _triage_only(workdir, messages, seed, corpus)
        return
    if spool in ("auto", "postfix"):
        why = available()
        if why and spool == "postfix":
            out.print(f"[red]cannot run Postfix here:[/] {why}")
            raise typer.Exit(1)
        if why:
            out.print(f"[yellow]No private Postfix here ({why}): falling back to an IIS-style pickup-folder "
                      f"spool; the story is the same, the MTA is a folder of .eml files.[/]")
            spool = "pickup"
        else:
            spool = "postfix"
    from spoolsweep.lab.run import run_story

    ok = run_story(workdir, messages, seed, corpus, yes, spool, console, wait_approval)
    if not ok:
        raise typer.Exit(1)


def _triage_only(workdir: Path, messages: int, seed: int, corpus: Path | None) -> None:
    """Generate an incident, triage it in this process, score it (no MTA, no agent)."""
    from pipeline.generator import POLICY_TOML, find_corpus, generate, load_corpus, score, write_canonical
    from pipeline.manifest_io import write_manifest
    from pipeline.policy import load_policy
    from pipeline.triage import triage

    workdir.mkdir(parents=True, exist_ok=True)
    policy_path = workdir / "site.toml"
    policy_path.write_text(POLICY_TOML)
    snap = workdir / "incident.tar.gz"
    out.print(f"[bold]1. generating[/] an incident of {messages:,} messages from the SpamAssassin corpus")
    ham, spam = load_corpus(find_corpus(corpus))
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
    (workdir / "tally.json").write_text(json.dumps(s, indent=1))
    if s["valid_as_spam"]:
        raise typer.Exit(1)


