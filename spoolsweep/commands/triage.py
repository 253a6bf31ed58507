"""`spoolsweep triage`: a snapshot in, a manifest out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.errors import SnapshotError
from spoolsweep.console_out import check_out, fail, progress_bar, summary_table, warn_all

if TYPE_CHECKING:
    from pipeline.models import Manifest
    from pipeline.policy import SitePolicy


SHARD_SIZE = 20000  # as the parse function's SPOOLSWEEP_SHARD_SIZE
SPILL_BYTES = 64 * 2**20  # as its SPOOLSWEEP_SPLIT_BYTES: a snapshot file this big is triaged in shards


def register(app: typer.Typer) -> None:
    app.command()(triage)


def triage(
    snapshot: Annotated[Path, typer.Argument(help="a .tar, .tar.gz, .tgz, .tar.zst or a directory")],
    policy: Annotated[Path | None, typer.Option(help="site policy (TOML)")] = None,
    out: Annotated[Path, typer.Option(help="folder for manifest.json and its parts")] = Path("triage-out"),
    fmt: Annotated[str | None, typer.Option("--format", help="queue format; detected when omitted")] = None,
    incident: Annotated[str | None, typer.Option(help="incident name (default: the snapshot's name)")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="parser processes (default: one per core)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress, no summary")] = False,
    shard_size: Annotated[int | None, typer.Option(min=0, help="parse into shards of this many messages in a temporary "
                                                         "store and triage them as the functions do (default: "
                                                         f"{SHARD_SIZE:,} for a snapshot file over "
                                                         f"{SPILL_BYTES // 2**20} MiB; 0: never)")] = None,
) -> None:
    """Decide for every message of SNAPSHOT whether it is valid, spam or to review; write DIR/manifest.json + parts.

    A big snapshot is parsed shard by shard into a temporary store and triaged by the same workflow the
    functions run (plan, facts, decide, verdicts, summary), its steps on a process pool (--workers).
    """
    from pipeline.errors import SpoolsweepError
    from pipeline.manifest_io import write_manifest
    from pipeline.policy import load_policy
    from pipeline.triage import triage as run

    try:
        pol = load_policy(policy)
        check_out(out)  # before the work: a triage of a million messages must not end in "cannot write"
        with progress_bar(not quiet) as cb:
            if _spill(snapshot, shard_size):
                manifest = _sharded(snapshot, pol, fmt, incident, cb, workers, str(policy) if policy else None,
                                    shard_size or SHARD_SIZE, out)
                path = out / "manifest.json"
            else:
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


def _spill(snapshot: Path, shard_size: int | None) -> bool:
    if shard_size is not None:
        return shard_size > 0
    try:
        return snapshot.is_file() and snapshot.stat().st_size > SPILL_BYTES
    except OSError:
        return False


def _sharded(snapshot: Path, policy: SitePolicy, fmt: str | None, incident: str | None, progress: Callable,
             workers: int | None, policy_source: str | None, shard_size: int, out: Path) -> Manifest:
    """Parse into shards in a temporary store, run the triage workflow over them, and move its manifest
    (parts first, the summary last) into `out`; the summary is returned, the messages stay on disk."""
    import os
    import tempfile

    from adapters.workflow import run_locally, spill_snapshot
    from pipeline.manifest_io import ManifestReader, atomic_write
    from pipeline.queues import check_name
    from pipeline.store import LocalStore

    name = incident or snapshot.name
    try:
        check_name("incident", name)
    except ValueError as e:
        raise SnapshotError(str(e)) from None
    n = workers if workers is not None else (os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="spoolsweep-triage-") as tmp:
        store = LocalStore(tmp)
        total = spill_snapshot(store, snapshot, policy, fmt, name, max(100, shard_size), n, progress)
        done = 0

        def step(_: object) -> None:
            nonlocal done
            done += 1
            progress("triage steps", done, None)

        run_locally(store, name, None, workers=n, direct=(policy, policy_source), on_step=step)
        reader = ManifestReader(store, name)
        summary = reader.summary
        out.mkdir(parents=True, exist_ok=True)
        for part in summary.parts.items if summary.parts else []:
            atomic_write(out / part.key, store.get(reader.base + part.key))
        atomic_write(out / "manifest.json", store.get(reader.key))
    progress("triage", total, total)
    return summary
