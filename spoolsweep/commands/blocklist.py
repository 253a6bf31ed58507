"""`spoolsweep blocklist`: check addresses and domains against the DNS blocklist catalogue."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from spoolsweep.console_out import err, out


def register(app: typer.Typer) -> None:
    app.command()(blocklist)


def _die(msg: str, code: int) -> NoReturn:
    # one line, never wrapped or decorated: scripts and humans read the same thing
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def blocklist(
    targets: Annotated[list[str] | None, typer.Argument(help="IPv4/IPv6 addresses or domains")] = None,
    policy: Annotated[Path | None, typer.Option(help="site policy: server_ips, server_names, local_domains")] = None,
    nameserver: Annotated[str | None, typer.Option(help="HOST[:PORT] to ask instead of the system resolver")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    watch: Annotated[float | None, typer.Option(min=0.1, help="re-check every SECONDS and print what changed")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds per query (one retry)")] = 2.0,
    catalogue: Annotated[Path | None, typer.Option(help="a zone catalogue TOML instead of the built-in one")] = None,
    webhook: Annotated[str | None, typer.Option(help="with --watch: POST each change as JSON to this URL")] = None,
    check_catalogue: Annotated[bool, typer.Option(
        "--check-catalogue", help="ask every zone for its test entries through --nameserver; list those that "
                                  "stopped answering")] = False,
    write_catalogue: Annotated[Path | None, typer.Option(
        help="with --check-catalogue: write a copy of the catalogue marked answered/stopped per zone")] = None,
) -> None:
    """Is this server on a blocklist? Listed first, with what it means and how to get off.

    Exit status: 0 nothing listed, 1 listed somewhere, 2 bad input, 3 nothing listed but some checks
    unknown (or the resolver did not answer). With --check-catalogue: 0 every zone answered its test
    entries, 1 some stopped. Spamhaus refuses queries through big public resolvers (8.8.8.8, 1.1.1.1): use
    your own, or a DQS key (SPOOLSWEEP_SPAMHAUS_DQS_KEY); Abusix takes SPOOLSWEEP_ABUSIX_KEY. Either key
    may instead come from Secrets Manager: SPOOLSWEEP_<NAME>_SECRET names the secret.
    """
    from pipeline.blocklist.catalogue import load_catalogue, read_catalogue, select_zones
    from pipeline.errors import SpoolsweepError
    from pipeline.policy import load_policy

    try:
        pol = load_policy(policy) if policy else None
        zones = read_catalogue(catalogue) if catalogue else load_catalogue()
        zones = select_zones(zones, pol.blocklist_zones if pol is not None else None)
    except SpoolsweepError as e:
        _die(str(e), 2)
    if check_catalogue:
        _check_catalogue(zones, nameserver, timeout, json_out, catalogue, write_catalogue)
        return
    names = list(targets or [])
    if not names and pol is not None:
        names = [*pol.server_ips, *pol.server_names, *pol.local_domains]
    if not names:
        _die("name a TARGET or give --policy with server_ips / server_names / local_domains", 2)
    from pipeline.blocklist.check import BadNameserver, KeyUnavailable, ResolverUnreachable, check_targets
    from pipeline.blocklist.watch import changes as diff

    previous = None
    while True:
        try:
            report = check_targets(names, nameserver, zones, timeout=timeout,
                                   chosen=pol is not None and pol.blocklist_zones is not None, read_secret=_secrets())
        except (BadNameserver, KeyUnavailable) as e:
            _die(str(e), 2)
        except ResolverUnreachable as e:
            if not watch:
                _die(str(e), 3)
            err.print(f"{time.strftime('%H:%M:%S')} {e}", highlight=False, markup=False)
            time.sleep(watch)
            continue
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


def _check_catalogue(zones, nameserver, timeout, json_out, catalogue, write_to) -> None:
    """Every live zone, every family it claims: does it still answer its test entries through this resolver?"""
    import json
    from importlib import resources

    from pipeline.blocklist.check import BadNameserver, KeyUnavailable, ResolverUnreachable
    from pipeline.blocklist.check import check_catalogue as run

    if not nameserver:
        _die("--check-catalogue needs --nameserver: the resolver whose view of the lists you want checked", 2)
    try:
        health = run(zones, nameserver, timeout=timeout, read_secret=_secrets())
    except (BadNameserver, KeyUnavailable) as e:
        _die(str(e), 2)
    except ResolverUnreachable as e:
        _die(str(e), 3)
    skipped = [h for h in health if not h.working and h.why.startswith("needs a key")]
    stopped = [h for h in health if not h.working and h not in skipped]
    if json_out:
        typer.echo(json.dumps([h.model_dump() for h in health], indent=1))
    else:
        from rich.table import Table

        tab = Table(title=f"Zones that stopped answering their test entries through {nameserver}")
        for col in ("zone", "family", "test entry", "why"):
            tab.add_column(col, overflow="fold")
        for h in stopped:
            tab.add_row(h.zone, h.family or "", h.test_entry or "", h.why)
        out.print(tab)
        out.print(f"{len(health) - len(stopped) - len(skipped)} of {len(health)} zone/family tests answered, "
                  f"{len(stopped)} stopped, {len(skipped)} skipped (no key)")
    if write_to is not None:
        from pipeline.blocklist.catalogue import mark_catalogue

        src = catalogue.read_text(encoding="utf-8") if catalogue else \
            resources.files("pipeline").joinpath("data/dnsbl.toml").read_text(encoding="utf-8")
        write_to.write_text(mark_catalogue(src, health, datetime.now(UTC).date()), encoding="utf-8")
        err.print(f"marked catalogue written to {write_to}", highlight=False, markup=False)
    if stopped:
        raise typer.Exit(1)


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


_STYLE = {"listed": "bold red", "unknown": "yellow", "reputation": "cyan", "allowlisted": "green"}


def _table(report) -> None:
    from rich.table import Table

    tab = Table(title=f"DNS blocklists ({len(report.results)} checks)")
    for col in ("target", "zone", "status", "meaning / why", "delist"):
        tab.add_column(col, overflow="fold")
    for r in report.results:
        if r.status.value == "not_listed":
            continue
        what = "; ".join([*r.meanings, *([r.why] if r.why else [])])
        if r.queried:
            what = f"(asked as {r.queried}) {what}"
        tab.add_row(r.target, r.zone, f"[{_STYLE[r.status.value]}]{r.status.value}[/]", what, r.delist_url or "")
    out.print(tab)
    count = {s: sum(1 for r in report.results if r.status.value == s)
             for s in ("listed", "not_listed", "unknown", "reputation", "allowlisted")}
    out.print(f"{count['listed']} listed, {count['not_listed']} not listed, {count['unknown']} unknown, "
              f"{count['reputation']} reputation only, {count['allowlisted']} allowlisted")
    for h in report.zones:
        fam = f" ({h.family})" if h.family else ""
        err.print(f"[dim]zone {h.zone}{fam} not used: {h.why}[/]", highlight=False)


def _secrets() -> Callable[[str], str]:
    """Keys named by SPOOLSWEEP_<ZONE>_SECRET, read from Secrets Manager (SPOOLSWEEP_ENDPOINT_URL: moto, LocalStack)."""
    from adapters.bootstrap import cloud_from_env, secret_reader

    return secret_reader(cloud_from_env())
