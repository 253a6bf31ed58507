"""Terminal output shared by the commands: errors, progress bars, the triage summary."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

out = Console()
err = Console(stderr=True)


def fail(msg: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {msg}", highlight=False, markup=True, soft_wrap=True)  # one line, however narrow
    sys.exit(code)


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator:
    """A callback(stage, done, total) that drives a rich progress bar on stderr."""
    if not enabled:
        yield lambda stage, done, total: None
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as p:
        tasks: dict[str, int] = {}

        def cb(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = p.add_task(stage, total=total)
            p.update(tasks[stage], completed=done, total=total)

        yield cb


def summary_table(manifest) -> None:  # type: ignore[no-untyped-def]
    t = manifest.totals
    out.print(f"[bold]{manifest.incident}[/]: {t.messages:,} messages ({t.bytes / 2**20:,.1f} MiB), "
              f"format {manifest.snapshot.format}")
    out.print(f"  [green]valid {t.valid:,}[/]   [red]spam {t.spam:,}[/]   [yellow]review {t.review:,}[/]   "
              f"campaigns {t.campaigns:,}")
    if manifest.campaigns:
        tab = Table(title="Biggest campaigns", show_lines=False)
        for col in ("#", "size", "verdict", "label", "sample subject", "client IPs", "why"):
            tab.add_column(col, overflow="fold")
        for c in manifest.campaigns[:10]:
            tab.add_row(str(c.id), f"{c.size:,}", c.verdict.value, c.label[:40],
                        (c.sample_subjects[0] if c.sample_subjects else "")[:50], str(c.client_ips.distinct),
                        (c.reasons[0].text if c.reasons else "")[:80])
        out.print(tab)
    for a in manifest.accounts:
        if a.compromised:
            out.print(f"  [bold red]![/] {a.summary}", highlight=False)
    for d in manifest.archive_defects:
        err.print(f"[yellow]archive:[/] {d}", highlight=False)
