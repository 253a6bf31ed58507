"""`spoolsweep schema`: print the manifest's JSON Schema."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    app.command()(schema)


def schema() -> None:
    """Print the JSON Schema of manifest.json (also at pipeline/schema/manifest.schema.json)."""
    from pipeline.manifest_io import manifest_schema

    typer.echo(json.dumps(manifest_schema(), indent=1, sort_keys=True))
