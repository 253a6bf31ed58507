"""`spoolsweep agent`: the on-host agent (snapshot the frozen queue, run the replay daemon)."""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from spoolsweep.console_out import err, fail, os_said, out, progress_bar

if TYPE_CHECKING:
    from pipeline.store import Channel, Store

agent_app = typer.Typer(no_args_is_help=True, help="On the mail host: freeze and snapshot the queue, replay what "
                                                    "was approved.")

StateDir = Annotated[Path, typer.Option(help="journal, local snapshot copies and agent.log")]
Host = Annotated[str | None, typer.Option(help="this host's name in the pipeline (default: the short hostname)")]
Mta = Annotated[str, typer.Option(help="postfix | exim | sendmail | pickup-dir (with --dir, or pickup-dir:PATH)")]
Exim = Annotated[str, typer.Option(help="the Exim binary (exim, exim4)")]
EximConfig = Annotated[Path | None, typer.Option(help="Exim's configuration file (-C)")]
Sendmail = Annotated[str, typer.Option(help="the Sendmail binary (sendmail, /usr/lib/sm.bin/sendmail)")]
SendmailConfig = Annotated[Path | None, typer.Option(help="Sendmail's sendmail.cf (-C)")]


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return ""


def _host(host: str | None) -> str:
    return host or re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]) or "localhost"


def _logging(state_dir: Path, verbose: bool) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    fh = logging.FileHandler(state_dir / "agent.log")
    fh.setFormatter(fmt)
    sh = logging.StreamHandler()
    sh.setFormatter(fmt)
    sh.setLevel(logging.INFO if verbose else logging.WARNING)
    root = logging.getLogger("spoolsweep")
    root.setLevel(logging.INFO)
    root.addHandler(fh)
    root.addHandler(sh)


@agent_app.command()
def snapshot(
    mta: Mta,
    dir: Annotated[Path | None, typer.Option("--dir", help="the pickup/queue folder for --mta pickup-dir")] = None,
    aside: Annotated[Path | None, typer.Option(help="where pickup-dir moves the queue (default DIR.old)")] = None,
    postfix_config: Annotated[Path | None, typer.Option(help="Postfix config dir (MAIL_CONFIG)")] = None,
    exim: Exim = "exim",
    exim_config: EximConfig = None,
    sendmail: Sendmail = "sendmail",
    sendmail_config: SendmailConfig = None,
    upload: Annotated[str | None, typer.Option(help="s3://bucket/incoming/<incident>/<host>/")] = None,
    to: Annotated[Path | None, typer.Option(help="a local store root (the embedded default)")] = None,
    incident: Annotated[str | None, typer.Option(help="incident name")] = None,
    host: Host = None,
    state_dir: StateDir = Path("/var/lib/spoolsweep-agent"),
    keep_local: Annotated[bool, typer.Option(help="keep the local copy after the upload is confirmed")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be frozen and where it would go")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    policy: Annotated[Path | None, typer.Option(
        help="site policy (TOML) to record in the snapshot instead of asking the MTA (pickup-dir has no MTA to "
             "ask)")] = None,
    server_name: Annotated[list[str] | None, typer.Option(help="our HELO / Received 'by' name (repeatable)")] = None,
    local_domain: Annotated[list[str] | None, typer.Option(help="a domain whose mail is ours (repeatable)")] = None,
    trusted_network: Annotated[list[str] | None, typer.Option(help="a network that may relay (repeatable)")] = None,
    server_ip: Annotated[list[str] | None, typer.Option(help="a public address of ours (repeatable)")] = None,
    relay_domain: Annotated[list[str] | None, typer.Option(help="a domain we relay for (repeatable)")] = None,
) -> None:
    """Freeze the queue (new mail keeps flowing), pack it with a sha256 per message, upload it, confirm it.

    The MTA's own configuration goes into the snapshot (Postfix: postconf; Exim: exim -bP; a pickup folder:
    --policy or the values given here), so triage knows the site's domains and names without a policy file."""
    from agent import siteconf
    from agent.journal import Journal
    from agent.mta import make_queue
    from agent.take import take
    from agent.upload import parse_destination
    from pipeline.errors import SpoolsweepError

    try:
        h = _host(host)
        dest = parse_destination(upload, to, incident, h)
        queue = make_queue(mta, dir, aside, postfix_config=postfix_config, exim=exim, exim_config=exim_config,
                           sendmail=sendmail, sendmail_config=sendmail_config)
        site = siteconf.record(queue, mta, policy, {
            "server_names": server_name or [], "local_domains": local_domain or [],
            "trusted_networks": trusted_network or [], "server_ips": server_ip or [],
            "relay_domains": relay_domain or []})
        _logging(state_dir, verbose=False)
        journal = Journal(state_dir / "journal.sqlite")
        with progress_bar(not quiet) as cb:
            s = take(queue, mta, dest, journal, state_dir, dry_run=dry_run, keep_local=keep_local, progress=cb,
                     say=(lambda m: None) if quiet else (lambda m: err.print(m, highlight=False)), site=site)
    except (SpoolsweepError, ValueError) as e:
        fail(str(e))
        return
    except OSError as e:  # a --state-dir or queue folder that cannot be made or read: the journal says how far
        fail(os_said("The agent failed", e))
        return
    if s.dry_run:
        out.print(f"[bold]dry run[/]: {s.froze}; {s.messages:,} messages ({_size(s.bytes)}) would be snapshotted "
                  f"and uploaded to {s.destination}", highlight=False)
        return
    if s.resumed_from:
        out.print(f"resumed an interrupted snapshot (it had reached: {s.resumed_from})", highlight=False)
    out.print(f"[bold]{s.incident}[/] on {s.host}: {s.messages:,} messages ({_size(s.bytes)}); {s.froze}",
              highlight=False)
    out.print(f"  snapshot sha256 {s.archive_sha256}", highlight=False)
    out.print(f"  uploaded to {s.destination} (checksum confirmed)", highlight=False)
    if s.archive:
        out.print(f"  local copy kept: {s.archive}", highlight=False)
    for n in s.notes:
        out.print(f"  [yellow]note:[/] {n}", highlight=False)
    if site is None:
        out.print("  [yellow]note:[/] no site configuration recorded (a pickup folder has no MTA to ask): give "
                  "--policy or --server-name/--local-domain, or triage with --policy", highlight=False)
    else:
        out.print(f"  site configuration recorded ({site['how']})", highlight=False)
        for n in site.get("notes", []):
            out.print(f"  [yellow]note:[/] {n}", highlight=False)


@agent_app.command()
def run(
    mta: Mta,
    public_key: Annotated[Path, typer.Option(help="the Ed25519 public key (PEM) instructions are signed with")],
    dir: Annotated[Path | None, typer.Option("--dir", help="the pickup/queue folder for --mta pickup-dir")] = None,
    aside: Annotated[Path | None, typer.Option(help="where pickup-dir's frozen queue is (default DIR.old)")] = None,
    pickup: Annotated[Path | None, typer.Option(help="the folder replayed mail goes to (default DIR)")] = None,
    postfix_config: Annotated[Path | None, typer.Option(help="Postfix config dir (MAIL_CONFIG)")] = None,
    exim: Exim = "exim",
    exim_config: EximConfig = None,
    sendmail: Sendmail = "sendmail",
    sendmail_config: SendmailConfig = None,
    deliver: Annotated[str, typer.Option(help="native (the MTA releases it) or smtp://HOST:PORT")] = "native",
    store: Annotated[str, typer.Option(help="store root folder, or s3://bucket")] = "./spoolsweep-store",
    channel: Annotated[str, typer.Option(help="channel folder (default STORE/channel) or sqs[://prefix]")] = "",
    host: Host = None,
    state_dir: StateDir = Path("/var/lib/spoolsweep-agent"),
    quarantine: Annotated[Path | None, typer.Option(
        help="copy purged mail here first (default STATE_DIR/quarantine)")] = None,
    no_quarantine: Annotated[bool, typer.Option("--no-quarantine", help="purge without keeping a copy")] = False,
    rate: Annotated[float, typer.Option(min=0, help="at most this many replays a second (0 = no limit)")] = 0,
    batch: Annotated[int, typer.Option(min=1, help="native releases per MTA command (postsuper -H -)")] = 100,
    wait: Annotated[float, typer.Option(min=0, help="long-poll seconds")] = 20,
    visibility: Annotated[float, typer.Option(
        min=0, help="local channel: seconds a received instruction stays hidden")] = 60,
    once: Annotated[bool, typer.Option("--once", help="stop when the channel is empty")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Long-poll this host's instruction channel; verify each instruction, replay and purge, write receipts."""
    from rich.markup import escape

    from agent.errors import AgentError
    from agent.journal import Journal
    from agent.mta import make_deliverer, make_queue
    from agent.runner import Agent, RateLimit
    from pipeline.errors import SpoolsweepError
    from pipeline.instructions import public_key_problem

    try:
        h = _host(host)
        try:
            pem = public_key.read_bytes()
        except OSError as e:
            raise AgentError(f"--public-key {public_key}: {e.strerror or e}") from None
        if why := public_key_problem(pem):  # said before the queue or the channel is touched
            raise AgentError(f"--public-key {public_key}: {why}")
        _logging(state_dir, verbose)
        quarantine = None if no_quarantine else (quarantine or state_dir / "quarantine")
        st, ch = _store(store), _channel(channel or "", store, visibility)
        queue = make_queue(mta, dir, aside, pickup, postfix_config, exim, exim_config, sendmail, sendmail_config)
        agent = Agent(host=h, queue=queue, store=st,
                      journal=Journal(state_dir / "journal.sqlite"), public_key_pem=pem,
                      deliverer=make_deliverer(deliver, state_dir), quarantine=quarantine, rate=RateLimit(rate),
                      batch=batch)
        receipts = agent.run(ch, wait_seconds=wait, once=once)
    except SpoolsweepError as e:
        fail(str(e))
        return
    except OSError as e:
        fail(os_said("The agent failed", e))
        return
    except KeyboardInterrupt:
        err.print("stopped")
        raise typer.Exit(130) from None
    for r in receipts:
        counts = ", ".join(f"{k} {v}" for k, v in r.counts().items() if v)
        if r.refused:
            # the reason may quote what a hostile body held: printed as text, never as rich markup
            out.print(f"[red]refused[/] {r.instruction_id} ({r.incident}): {escape(r.refused)}", highlight=False)
        else:
            out.print(f"[green]done[/] {r.instruction_id} ({r.incident}): {counts or 'nothing to do'}",
                      highlight=False)


def _store(spec: str) -> Store:
    from adapters.bootstrap import build_store, cloud_from_env

    return build_store(spec, cloud_from_env())  # boto3 only for s3://


def _channel(spec: str, store: str, visibility: float) -> Channel:
    from adapters.bootstrap import build_channel, cloud_from_env

    return build_channel(spec, store, cloud_from_env(), visibility)


@agent_app.command()
def audit(
    mta: Annotated[str, typer.Option(help="postfix | exim | sendmail")] = "postfix",
    config_dir: Annotated[Path | None, typer.Option(help="Postfix config_directory (default: postconf's)")] = None,
    postconf_file: Annotated[Path | None, typer.Option(help="saved `postconf -n` output instead of running it")] = None,
    exim: Exim = "exim",
    exim_config: EximConfig = None,
    sendmail: Sendmail = "sendmail",
    sendmail_config: SendmailConfig = None,
    config_file: Annotated[Path | None, typer.Option(help="Exim: saved `exim -bP config` output; Sendmail: a "
                                                         "sendmail.cf to read instead of the running one's")] = None,
    access: Annotated[Path | None, typer.Option(help="Sendmail: the access map's text source (default: the "
                                                    "one the cf names)")] = None,
) -> None:
    """Read the MTA's effective configuration and flag what makes it an open relay, with the lines to change.

    Exit status: 0 nothing found, 1 the configuration relays for strangers, 3 risks only.
    """
    import subprocess

    from agent import audit as a

    try:
        if mta == "postfix":
            text = postconf_file.read_text() if postconf_file else a.postconf_n(config_dir)
            findings, what = a.audit_postfix(a.parse_postconf(text)), "`postconf -n`"
        elif mta == "exim":
            cmd = [exim, *(["-C", str(exim_config)] if exim_config else [])]
            text = config_file.read_text() if config_file else a.exim_config_text(cmd)
            findings, what = a.audit_exim(text), "`exim -bP config`"
        elif mta == "sendmail":
            cmd = [sendmail, *(["-C", str(sendmail_config)] if sendmail_config else [])]
            cf_path = config_file or sendmail_config or Path("/etc/mail/sendmail.cf")
            cf = cf_path.read_text(errors="replace")
            access_path = access or a.sendmail_access_file(cf)
            access_text = access_path.read_text(errors="replace") if access_path and access_path.is_file() else ""
            class_r = [] if config_file else a.sendmail_class_r(cmd)
            findings, what = a.audit_sendmail(cf, class_r, access_text), f"{cf_path}"
        else:
            raise typer.BadParameter("--mta must be postfix, exim or sendmail")
    except (OSError, subprocess.SubprocessError) as e:
        fail(f"cannot read the {mta} configuration: {e}", 2)
        return
    if not findings:
        typer.echo(f"no open-relay settings found in {what}")
        return
    for f in findings:
        typer.echo(f"[{f.severity}] {f.setting} = {f.current}\n    {f.problem}\n    change to: {f.change_to}")
    raise typer.Exit(1 if any(f.severity == "open-relay" for f in findings) else 3)
