"""`spoolsweep schema`: print the manifest's JSON Schema, or the verdict rules in words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command()(schema)


def schema(
    rules: Annotated[bool, typer.Option("--rules", help="the verdict rules in words, as README.md lists them, "
                                                       "instead of the schema")] = False,
    readme: Annotated[Path | None, typer.Argument(help="with --rules: rewrite this file's rules section (between "
                                                       "its markers) instead of printing it")] = None,
) -> None:
    """Print the JSON Schema of manifest.json (also at pipeline/schema/manifest.schema.json)."""
    if not rules:
        if readme is not None:
            raise typer.BadParameter("a file is written only with --rules", param_hint="README")
        from pipeline.manifest_io import manifest_schema

        typer.echo(json.dumps(manifest_schema(), indent=1, sort_keys=True))
        return
    from pipeline.errors import SpoolsweepError
    from pipeline.rules_doc import rules_markdown, with_rules
    from spoolsweep.console_out import fail

    if readme is None:
        typer.echo(rules_markdown())
        return
    try:
        text = readme.read_text(encoding="utf-8")
        new = with_rules(text)
        if new != text:
            readme.write_text(new, encoding="utf-8")
    except OSError as e:
        fail(f"{readme}: {e.strerror}")
    except SpoolsweepError as e:
        fail(f"{readme}: {e}")
