"""`spoolsweep policy suggest`: a site.toml inferred from a snapshot, with the evidence for every line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from spoolsweep.console_out import fail

policy_app = typer.Typer(no_args_is_help=True, help="The site policy: what is local, what is ours, whom to trust.")


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")


@policy_app.command()
def suggest(
    snapshot: Annotated[Path, typer.Argument(help="a snapshot (.tar, .tar.gz, .tar.zst or a folder)")],
    fmt: Annotated[str | None, typer.Option("--format", help="queue format; detected when omitted")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="parser processes (default: one per core)")] = None,
) -> None:
    """Print a site.toml for SNAPSHOT: the MTA's own configuration when the agent recorded it, else what the
    queue shows (our server's name in the topmost Received lines, the domains our accounts send from)."""
    from pipeline.errors import SpoolsweepError
    from pipeline.policy import SitePolicy
    from pipeline.triage import read_and_parse

    try:
        _, records, report = read_and_parse(snapshot, SitePolicy(), fmt, workers=workers)
    except SpoolsweepError as e:
        fail(str(e))
        return
    typer.echo(render(snapshot.name, records, report.meta), nl=False)


def render(name: str, records: list, meta: dict) -> str:
    """The suggested site.toml: per key, the MTA's recorded value, else the queue's evidence, else a comment."""
    from pipeline.sitepolicy import KEYS, Derived, from_queue, from_site, site_of

    site = site_of(meta)
    mta = from_site(site) if site else Derived()
    queue = from_queue(records, mta.values.get("server_names"))
    lines = [f"# site.toml suggested by `spoolsweep policy suggest` for {name} ({len(records):,} messages).",
             "# Each value says where it came from. Check them, then: spoolsweep triage SNAPSHOT --policy site.toml",
             ""]
    for key in KEYS:
        src = mta if key in mta.values else queue if key in queue.values else None
        if src is None:
            why = ("who may relay without AUTH is your decision: the queue cannot show it safely"
                   if key == "trusted_networks" else "no evidence in this snapshot")
            lines.append(f"# {key} = []   # {why}")
            continue
        lines.append(f"{key} = [")
        for v in src.values[key]:
            lines.append(f"    {json.dumps(v)},  # {src.evidence[key][v]}")
        lines.append("]")
    for n in mta.notes:
        lines.append(f"# note: {n}")
    for n in (site or {}).get("notes", []):
        lines.append(f"# note (agent): {n}")
    return "\n".join(lines) + "\n"
