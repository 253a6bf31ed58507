"""MTA adapters, one module each: pickup folders, Postfix, Exim, Sendmail, and SMTP re-injection to the local MTA."""

from __future__ import annotations

from pathlib import Path

from agent.errors import AgentError
from agent.mta.base import Deliverer, Queue

MTAS = ("postfix", "exim", "sendmail", "pickup-dir")


def make_queue(mta: str, path: Path | None = None, aside: Path | None = None, pickup: Path | None = None,
               postfix_config: Path | None = None, exim: str = "exim", exim_config: Path | None = None,
               sendmail: str = "sendmail", sendmail_config: Path | None = None) -> Queue:
    """The frozen-queue adapter for `--mta`; each module is imported only when chosen."""
    if mta.startswith("pickup-dir:"):
        mta, path = "pickup-dir", Path(mta.split(":", 1)[1])
    if mta == "pickup-dir":
        if path is None:
            raise AgentError("--mta pickup-dir needs the folder (--dir PATH or --mta pickup-dir:PATH)")
        from agent.mta.pickup import PickupQueue

        return PickupQueue(path, aside, pickup)
    if mta == "postfix":
        from agent.mta.postfix import PostfixQueue

        return PostfixQueue(postfix_config)
    if mta == "exim":
        from agent.mta.exim import EximQueue

        return EximQueue(exim, exim_config)
    if mta == "sendmail":
        from agent.mta.sendmail import SendmailQueue

        return SendmailQueue(sendmail, sendmail_config)
    raise AgentError(f"unknown --mta {mta!r}; one of {', '.join(MTAS)}")


def make_deliverer(deliver: str, state_dir: Path) -> Deliverer | None:
    """`native` (the MTA releases its own frozen mail) or `smtp://HOST:PORT` (re-injection through the courier)."""
    if deliver == "native":
        return None
    if deliver.startswith("smtp://"):
        from agent.mta.courier import CourierDeliverer

        hostport = deliver.removeprefix("smtp://").rstrip("/")
        host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "25")
        return CourierDeliverer(host or "127.0.0.1", int(port or 25), state_dir)
    raise AgentError(f"unknown --deliver {deliver!r}: native or smtp://HOST:PORT")
