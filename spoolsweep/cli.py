"""The `spoolsweep` command: one sub-command per job, each in its own module under spoolsweep/commands."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Incident response for abused mail servers: triage the queue, replay the real mail, "
                       "purge the spam.")

# Each module defines `register(app)`; a module whose extra is not installed is left out.
COMMANDS = ["triage", "policy", "generate", "schema", "demo", "blocklist", "relay", "local", "console", "bench",
            "agent"]


def _register() -> None:
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"spoolsweep.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("spoolsweep.commands"):
                continue
            raise
        mod.register(app)


_register()


def _aws_said(e: BaseException) -> str | None:
    """A botocore error as one line (no credentials, no connection, a refusal with its code), else None:
    every command that reaches S3 or SQS raised these as tracebacks of botocore's and urllib3's frames."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return None
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"AWS refused: {err.get('Code', 'error')}: {err.get('Message') or e}"
    if isinstance(e, BotoCoreError):
        return f"The AWS call failed: {e}"
    return None


def main() -> None:
    try:
        app()
    except Exception as e:
        if (why := _aws_said(e)) is None:
            raise
        from spoolsweep.console_out import fail

        fail(why)
