"""Terminal output shared by the commands: errors, progress bars, the triage summary."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

out = Console()
err = Console(stderr=True)


def fail(msg: str, code: int = 1) -> None:
    # soft_wrap: one error is one line, however narrow the terminal (and greppable in a log)
    err.print(f"[bold red]error:[/] {msg}", highlight=False, markup=True, soft_wrap=True)
    sys.exit(code)


def os_said(what: str, e: OSError, where: object = None) -> str:
    """An OSError as one line that names the file: "[Errno 2] No such file or directory: 'x'" said the file
    last or not at all. `where`: the path to name when the error carries none."""
    name = e.filename or where
    return f"{what}: {name}: {e.strerror or e}" if name else f"{what}: {e.strerror or e}"


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator:
    """A callback(stage, done, total) that drives a rich progress bar on stderr."""
    if not enabled:
        yield lambda stage, done, total: None
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as p:
        tasks: dict[str, TaskID] = {}

        def cb(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = p.add_task(stage, total=total)
            p.update(tasks[stage], completed=done, total=total)

        yield cb


def check_out(folder: Path) -> None:
    """The manifest's folder can be made and written, checked before any work (a one-line error if not)."""
    from pipeline.errors import OutputError

    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".spoolsweep-probe-"):
            pass
    except OSError as e:
        raise OutputError(f"{folder}: {e.strerror or e}") from None


def warn_all(manifest) -> None:
    """What the admin must read before approving, on stderr even with --quiet."""
    for w in getattr(manifest, "warnings", []) or []:
        err.print(f"[bold yellow]warning:[/] {w}", highlight=False)


def summary_table(manifest) -> None:
    t = manifest.totals
    out.print(f"[bold]{manifest.incident}[/]: {t.messages:,} messages ({t.bytes / 2**20:,.1f} MiB), "
              f"format {manifest.snapshot.format}")
    if manifest.policy is not None:
        out.print(f"  policy: {manifest.policy.source}", highlight=False)
    out.print(f"  [green]valid {t.valid:,}[/]   [red]spam {t.spam:,}[/]   [yellow]review {t.review:,}[/]   "
              f"campaigns {t.campaigns:,}")
    if manifest.campaigns:
        tab = Table(title="Biggest campaigns", show_lines=False)
        for col in ("#", "size", "verdict", "subject", "phrase", "client IPs", "why"):
            tab.add_column(col, overflow="fold")
        for c in manifest.campaigns[:10]:
            # what a person reads: the typical subject and a phrase the members share (the label is
            # normalised terms, placeholders and all, kept for search); as text, not markup: a list's
            # subject tag, "[zzzzteana] ...", is no style
            tab.add_row(str(c.id), f"{c.size:,}", c.verdict.value,
                        Text((c.subject or (c.sample_subjects[0] if c.sample_subjects else ""))[:50]),
                        Text((c.phrase or c.label)[:50]), str(c.client_ips.distinct),
                        Text((c.reasons[0].text if c.reasons else "")[:80]))
        out.print(tab)
    for a in manifest.accounts:
        if a.compromised:
            out.print(f"  [bold red]![/] {a.summary}", highlight=False)
    for d in manifest.archive_defects:
        err.print(f"[yellow]archive:[/] {d}", highlight=False)
    warn_all(manifest)
