"""`spoolsweep console`: serve the review console on 127.0.0.1 with an access token (or sign for the AWS one)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from spoolsweep.lab import free_port


def register(app: typer.Typer) -> None:
    app.command("console")(console)


def serve_in_thread(data: Any, port: int = 0, token: str | None = None) -> tuple[str, Any]:
    """Serve the console (DATA: a folder or a Store) on 127.0.0.1 beside other work: (token URL, uvicorn server)."""
    import uvicorn

    from console.app import create_app, new_token

    tok = token or new_token()
    if port:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                port = 0  # taken (another console?): any free port will do, the URL says which
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(data, tok), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="console", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise OSError(f"the console did not start on 127.0.0.1:{port}")
    return f"http://127.0.0.1:{port}/?token={tok}", server


def console(
    data: Annotated[Path, typer.Option(help="a local store root or a triage output folder")] = Path(
        "spoolsweep-store"),
    port: Annotated[int, typer.Option(min=0, max=65535, help="port on 127.0.0.1; 0 picks a free one")] = 8765,
    token: Annotated[str | None, typer.Option(envvar="SPOOLSWEEP_CONSOLE_TOKEN",
                                              help="access token (random unless given; with --aws: the stack's "
                                                   "ConsoleToken)")] = None,
    aws: Annotated[str | None, typer.Option("--aws", metavar="FUNCTION_URL",
                                            help="the deployed console's function URL: serve a local proxy that "
                                                 "signs each request with your AWS credentials")] = None,
    region: Annotated[str | None, typer.Option(help="with --aws: the region, if the URL does not say it")] = None,
    profile: Annotated[str | None, typer.Option(envvar="AWS_PROFILE", help="with --aws: the AWS profile")] = None,
) -> None:
    """Review incidents, change verdicts, approve, watch the replay."""
    import uvicorn

    from console.app import create_app, new_token

    port = port or free_port()
    if aws is not None:
        app = _aws_proxy(aws, token, region, profile)
        tok = token
    else:
        if str(data).startswith("s3:"):  # a Path has folded s3://bucket into s3:/bucket: said as given
            typer.echo(f"error: --data {str(data).replace('s3:/', 's3://', 1)}: the console reads a local store "
                       "or triage output folder; for the deployed stack's store give --aws FUNCTION_URL, or run "
                       "`spoolsweep up --store s3://...`, which serves it", err=True)
            raise typer.Exit(2)
        if not data.is_dir():
            typer.echo(f"error: {data} is not a folder", err=True)
            raise typer.Exit(2)
        tok = token or new_token()
        app = create_app(data, tok)
    typer.echo(f"http://127.0.0.1:{port}/?token={tok}")
    if aws is not None:
        typer.echo(f"signing for {aws} as your AWS identity (Ctrl-C to stop)", err=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _aws_proxy(url: str, token: str | None, region: str | None, profile: str | None):
    from console.aws_proxy import Signer, create_proxy, region_of, session_credentials
    from pipeline.errors import SpoolsweepError

    if not token:
        typer.echo("error: give --token (or SPOOLSWEEP_CONSOLE_TOKEN): the ConsoleToken the stack was deployed with",
                   err=True)
        raise typer.Exit(2)
    if not url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
        typer.echo(f"error: {url} is not an https:// function URL", err=True)
        raise typer.Exit(2)
    try:
        creds, configured = session_credentials(profile or os.environ.get("AWS_PROFILE"))
        return create_proxy(url, Signer(creds, region_of(url, region or configured)))
    except SpoolsweepError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
