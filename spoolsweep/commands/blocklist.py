"""`spoolsweep blocklist`: check addresses and domains against the DNS blocklist catalogue."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from spoolsweep.console_out import err, fail, out


def register(app: typer.Typer) -> None:
    app.command()(blocklist)


def blocklist(
    targets: Annotated[list[str] | None, typer.Argument(help="IPv4/IPv6 addresses or domains")] = None,
    policy: Annotated[Path | None, typer.Option(help="site policy: server_ips, server_names, local_domains")] = None,
    nameserver: Annotated[str | None, typer.Option(help="HOST[:PORT] to ask instead of the system resolver")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    watch: Annotated[float | None, typer.Option(help="re-check every SECONDS and print what changed")] = None,
    timeout: Annotated[float, typer.Option(help="seconds per query (one retry)")] = 2.0,
    catalogue: Annotated[Path | None, typer.Option(help="a zone catalogue TOML instead of the built-in one")] = None,
    webhook: Annotated[str | None, typer.Option(help="with --watch: POST each change as JSON to this URL")] = None,
) -> None:
    """Is this server on a blocklist? Listed first, with what it means and how to get off.

    Exit status: 0 nothing listed, 1 listed somewhere, 3 nothing listed but some checks unknown.
    Spamhaus refuses queries through big public resolvers (8.8.8.8, 1.1.1.1): use your own.
    """
    import tomllib

    from pipeline.blocklist import check_targets
    from pipeline.blocklist.catalogue import Zone, load_catalogue
    from pipeline.errors import SpoolsweepError
    from pipeline.policy import load_policy

    try:
        pol = load_policy(policy) if policy else None
    except SpoolsweepError as e:
        fail(str(e), 2)
        return
    names = list(targets or [])
    if not names and pol is not None:
        names = [*pol.server_ips, *pol.server_names, *pol.local_domains]
    if not names:
        fail("name a TARGET or give --policy with server_ips / server_names / local_domains", 2)
    zones = (tuple(Zone.model_validate(z) for z in tomllib.loads(catalogue.read_text())["zone"]) if catalogue
             else load_catalogue())
    if pol is not None and pol.blocklist_zones is not None:
        zones = tuple(z for z in zones if z.zone in set(pol.blocklist_zones))
    from pipeline.blocklist.watch import changes as diff

    previous = None
    while True:
        report = check_targets(names, nameserver, zones, timeout=timeout)
        if json_out:
            typer.echo(report.model_dump_json(indent=1))
        elif watch and previous is not None:
            changes = diff(previous, report)
            for c in changes:
                out.print(f"{time.strftime('%H:%M:%S')} {c['target']} on {c['zone']}: {c['before']} -> {c['now']}")
            if changes and webhook:
                _post(webhook, changes)
        else:
            _table(report)
        previous = report
        if not watch:
            break
        time.sleep(watch)
    if report.listed():
        raise typer.Exit(1)
    if any(r.status.value == "unknown" for r in report.results):
        raise typer.Exit(3)


def _post(url: str, changes: list[dict]) -> None:
    """Tell a webhook (chat, ticketing) what changed; a failed post is reported, the watch goes on."""
    import json
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise typer.BadParameter("--webhook must be an http(s) URL")
    req = urllib.request.Request(url, data=json.dumps({"blocklist_changes": changes}).encode(),  # noqa: S310
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        urllib.request.urlopen(req, timeout=10).close()  # noqa: S310 - http(s) only, checked above
    except OSError as e:
        err.print(f"[yellow]webhook failed: {e}[/]")


def _table(report) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    tab = Table(title=f"DNS blocklists ({len(report.results)} checks)")
    for col in ("target", "zone", "status", "meaning / why", "delist"):
        tab.add_column(col, overflow="fold")
    for r in report.results:
        if r.status.value == "not_listed":
            continue
        style = "bold red" if r.status.value == "listed" else "yellow"
        tab.add_row(r.target, r.zone, f"[{style}]{r.status.value}[/]", "; ".join(r.meanings) or r.why,
                    r.delist_url or "")
    out.print(tab)
    clean = sum(1 for r in report.results if r.status.value == "not_listed")
    out.print(f"{len(report.listed())} listed, {clean} not listed, "
              f"{len(report.results) - clean - len(report.listed())} unknown")
    for h in report.zones:
        err.print(f"[dim]zone {h.zone} not used: {h.why}[/]", highlight=False)
