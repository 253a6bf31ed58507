"""`spoolsweep triage`: a snapshot in, a manifest out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spoolsweep.console_out import check_out, fail, progress_bar, summary_table, warn_all


def register(app: typer.Typer) -> None:
    app.command()(triage)


def triage(
    snapshot: Annotated[Path, typer.Argument(help="a .tar, .tar.gz, .tgz, .tar.zst or a directory")],
    policy: Annotated[Path | None, typer.Option(help="site policy (TOML)")] = None,
    out: Annotated[Path, typer.Option(help="folder for manifest.json and its parts")] = Path("triage-out"),
    fmt: Annotated[str | None, typer.Option("--format", help="queue format; detected when omitted")] = None,
    incident: Annotated[str | None, typer.Option(help="incident name (default: the snapshot's name)")] = None,
    workers: Annotated[int | None, typer.Option(help="parser processes (default: one per core)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress, no summary")] = False,
) -> None:
    """Decide for every message of SNAPSHOT whether it is valid, spam or to review; write DIR/manifest.json + parts."""
    from pipeline.errors import SpoolsweepError
    from pipeline.manifest_io import write_manifest
    from pipeline.policy import load_policy
    from pipeline.triage import triage as run

    try:
        pol = load_policy(policy)
        check_out(out)  # before the work: a triage of a million messages must not end in "cannot write"
        with progress_bar(not quiet) as cb:
            manifest = run(snapshot, pol, fmt=fmt, incident=incident, progress=cb, workers=workers,
                           policy_source=str(policy) if policy else None)
        path = write_manifest(manifest, out)
    except SpoolsweepError as e:
        fail(str(e))
        return
    except OSError as e:
        fail(f"{e.filename or out}: {e.strerror or e}")
        return
    if not quiet:
        summary_table(manifest)
        typer.echo(f"manifest: {path} (messages in {path.parent}/messages-*.parquet)")
    else:
        warn_all(manifest)
    if manifest.archive_defects:
        raise typer.Exit(2)
