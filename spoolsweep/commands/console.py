"""`spoolsweep console`: serve the review console on 127.0.0.1 with an access token."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("console")(console)


def console(
    data: Annotated[Path, typer.Option(help="a local store root or a triage output folder")] = Path(
        "spoolsweep-store"),
    port: Annotated[int, typer.Option(help="port on 127.0.0.1; 0 picks a free one")] = 8765,
    token: Annotated[str | None, typer.Option(help="access token (random unless given)")] = None,
) -> None:
    """Review incidents, change verdicts, approve, watch the replay."""
    import uvicorn

    from console.app import create_app, new_token

    if not data.is_dir():
        typer.echo(f"error: {data} is not a folder", err=True)
        raise typer.Exit(2)
    tok = token or new_token()
    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    typer.echo(f"http://127.0.0.1:{port}/?token={tok}")
    uvicorn.run(create_app(data, tok), host="127.0.0.1", port=port, log_level="warning")
