"""`spoolsweep relay-test`: does my server relay for strangers? Every classic trick, stopped at RCPT TO."""

from __future__ import annotations

from typing import Annotated

import typer

from spoolsweep.console_out import err, fail, out


def register(app: typer.Typer) -> None:
    app.command("relay-test")(relay_test_cmd)


def relay_test_cmd(
    target: Annotated[str, typer.Argument(help="HOST[:PORT] of a server YOU run (port 25 by default)")],
    local_domain: Annotated[str, typer.Option(help="a domain the server receives mail for")],
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Try the relay tricks abusers use (percent hack, source routes, bang paths, quoted @, IP literals,
    spoofed and null senders, upper case, after a failed AUTH). Never sends DATA.

    Only point it at servers you run. It connects to exactly TARGET, nothing else.
    Exit status: 0 closed, 1 open relay, 2 inconclusive (the server refused even local mail), 3 not tested (the
    server could not be reached, or broke off the session).
    """
    import smtplib

    from pipeline.blocklist.check import split_host_port
    from pipeline.relaytest import relay_test

    host, port = split_host_port(target if (":" in target.replace("::", "") or "]:" in target) else f"{target}:25")
    err.print(f"[yellow]relay test of {host}:{port} only: run it against servers you operate.[/]")
    try:
        report = relay_test(host, port, local_domain)
    except (OSError, smtplib.SMTPException) as e:  # not 1: that says open relay
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        fail(f"The relay test could not run: {host}:{port}: {why}", code=3)
    if json_out:
        typer.echo(report.model_dump_json(indent=1))
    else:
        for r in report.results:
            verdict = ("[bold red]ACCEPTED[/]" if r.relays_outside else "[yellow]accepted*[/]") if r.accepted \
                else "[green]refused[/]"
            out.print(f"{verdict:>24}  {r.trick:<28} RCPT TO:<{r.rcpt_to}>  {r.reply[:70]}", highlight=False)
        if any(r.accepted and not r.relays_outside for r in report.results):
            out.print("* a local address form was accepted: no relay by itself; check the server does not rewrite "
                      "it to the outside (Postfix: allow_untrusted_routing = no, the default)")
        out.print("[bold red]OPEN RELAY[/]" if report.open else "[green]no relay trick was accepted[/]")
    if not report.control_accepted:
        err.print(f"inconclusive: the server refused mail for postmaster@{local_domain}: {report.control_reply}")
        raise typer.Exit(2)
    if report.open:
        raise typer.Exit(1)
