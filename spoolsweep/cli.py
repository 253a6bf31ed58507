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
    """A botocore error as one line, else None: every command that reaches S3 or SQS raised these as
    tracebacks of botocore's and urllib3's frames."""
    try:
        from adapters.aws import said
    except ImportError:  # no boto3 here: no botocore error either
        return None
    why = said(e)
    return None if why is None else f"The AWS call failed: {why}"


def main() -> None:
    try:
        app()
    except Exception as e:
        if (why := _aws_said(e)) is None:
            raise
        from spoolsweep.console_out import fail

        fail(why)
