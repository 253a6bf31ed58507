"""The demo's story on a private Exim or Sendmail: flood it, close the relay, freeze and snapshot with the agent; the
replay half (relay to the sink, what is left queued) is what spoolsweep/lab/run.py asks of `LabMta`."""

from __future__ import annotations

import contextlib
import smtplib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pipeline.generator import GenMessage, Incident


@dataclass
class LabMta:
    """A running private Exim or Sendmail as the demo's replay step needs it."""

    name: str
    agent_args: list[str]  # `--mta exim --exim WRAPPER --exim-config CONF` and the like
    relay_to: Callable[[int], None]
    queued_ids: Callable[[], list[str]]  # what is still queued (frozen or not)
    flush: Callable[[], None] | None = None


def relay_probe(port: int, rcpt: str = "victim@example.com") -> tuple[int, str]:
    """What a client on 127.0.0.1 that is not ours gets when it asks to relay: (code, reply) to RCPT TO."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("probe.example.net")
        s.mail("probe@example.net")
        code, msg = s.rcpt(rcpt)
        s.rset()
    return code, msg.decode(errors="replace")


def every_500(say: Callable[[str], None]) -> Callable[[int], None]:
    """A progress callback that says how many messages were sent, every 500."""
    def progress(i: int) -> None:
        if i % 500 == 0:
            say(f"   … {i:,} sent")
    return progress


def _push(send: Callable[[GenMessage], str], messages: list[GenMessage], progress: Callable[[int], object],
          threads: int = 4) -> None:
    with ThreadPoolExecutor(threads) as ex:
        for i, _ in enumerate(ex.map(send, messages), 1):
            progress(i)


@contextlib.contextmanager
def exim_incident(st, inc: Incident, step: Callable[[int, str], None], say: Callable[[str], None],
                  incident: str, host: str) -> Iterator[LabMta]:
    from spoolsweep.lab.exim import private_exim

    with private_exim(open_relay=True) as ex:
        step(2, "the mail server: a private Exim on 127.0.0.1 (Debian's packages, unpacked), an open relay")
        say(f"   daemon 127.0.0.1:{ex.port}, config {ex.conf}, spool {ex.spool}; the relay is down, so everything "
            f"piles up in the queue (queue_only)")
        step(3, "the incident: spammers, a stolen password and the organisation's own mail, as SMTP sessions")

        def send(m: GenMessage) -> str:
            e = m.envelope
            # `exim -bs -oMa ADDR ...`: an SMTP session Exim records as coming from the message's real client
            return ex.send_bs(e.mail_from or "", e.rcpt_to, m.data, client_address=e.client_address or "127.0.0.1",
                              client_name=e.client_name, helo=e.helo or "localhost", auth_id=e.sasl_username,
                              authenticator="plain" if e.sasl_username else None)

        _push(send, inc.messages, every_500(say))
        say(f"   {len(inc.messages):,} messages queued: `exim -bpc` says {ex.run('-bpc').stdout.decode().strip()}")
        step(4, "stop the bleeding: close the relay")
        before = relay_probe(ex.port)
        st.spoolsweep("agent", "audit", "--mta", "exim", "--exim", str(ex.wrapper), "--exim-config", str(ex.conf),
                      check=False)
        ex.close_relay()
        say("   acl_smtp_rcpt: accept domains = +local_domains, hosts = +relay_from_hosts, authenticated = *, "
            "then deny; exim restarted")
        after = relay_probe(ex.port)
        say(f"   relaying for a stranger to victim@example.com: before {before[0]}, now {after[0]} {after[1]}")
        if after[0] < 500:
            raise RuntimeError(f"the relay is still open: {after}")
        step(5, "the agent freezes the queue (exim -Mf) and snapshots it into the embedded store")
        args = ["--mta", "exim", "--exim", str(ex.wrapper), "--exim-config", str(ex.conf)]
        st.spoolsweep("agent", "snapshot", *args, "--to", str(st.store), "--incident", incident, "--host", host,
                      "--state-dir", str(st.state))

        def queued() -> list[str]:
            from agent.mta.exim import EximQueue

            return [qid for qid, _ in EximQueue(command=[str(ex.wrapper), "-C", str(ex.conf)])._queue()]

        yield LabMta("exim", args, ex.relay_to, queued)


@contextlib.contextmanager
def sendmail_incident(st, inc: Incident, step: Callable[[int, str], None],
                      say: Callable[[str], None], incident: str, host: str) -> Iterator[LabMta]:
    from spoolsweep.lab.loopback import Loopback
    from spoolsweep.lab.sendmail import private_sendmail
    from spoolsweep.lab.story import password_of

    users = {m.envelope.sasl_username: password_of(m.envelope.sasl_username)
             for m in inc.messages if m.envelope.sasl_username}
    with private_sendmail(open_relay=True, users=users) as sm:
        step(2, "the mail server: a private Sendmail on 127.0.0.1 (Debian's packages, unpacked), "
                "FEATURE(`promiscuous_relay')")
        say(f"   daemon 127.0.0.1:{sm.port}, config {sm.cf} (from {sm.mc.name}), queue {sm.queue}; SMTP AUTH for "
            f"{len(users)} accounts; the smart host is down, so everything piles up in the queue")
        step(3, "the incident: spammers, a stolen password and the organisation's own mail, over SMTP")
        # Sendmail 8.17 has no XCLIENT (and `-bs` ignores -M for the client): each message comes from its own
        # client's loopback address instead, and the site policy names those addresses
        lb = Loopback(m.envelope.client_address for m in inc.messages)
        policy = st.workdir / "site.toml"
        policy.write_text(lb.policy(policy.read_text()))
        say(f"   each client connects from its own loopback address ({len(lb.slots):,} client /24s on 127.0.0.0/8); "
            f"trusted_networks in site.toml moved the same way")
        # a real SMTP AUTH login for the authenticated ones, with AUTH=<account> on MAIL FROM: 8.17 keeps the account
        # in its qf file only that way (the A line), and the reader takes it only from an authenticated session
        _push(lambda m: sm.send_smtp(m.envelope.mail_from or "", m.envelope.rcpt_to, m.data,
                                     helo=m.envelope.helo or "localhost", source=lb.source(m.envelope.client_address),
                                     login=(m.envelope.sasl_username, password_of(m.envelope.sasl_username))
                                     if m.envelope.sasl_username else None),
              inc.messages, every_500(say))
        queued_now = sum(1 for p in sm.queue.iterdir() if p.name.startswith("qf"))
        say(f"   {len(inc.messages):,} messages sent; {queued_now:,} in the queue")
        step(4, "stop the bleeding: close the relay")
        st.spoolsweep("agent", "audit", "--mta", "sendmail", "--sendmail", str(sm.wrapper), "--sendmail-config",
                      str(sm.cf), check=False)
        sm.close_relay()
        say("   deleted FEATURE(`promiscuous_relay') from sendmail.mc, rebuilt sendmail.cf with m4, restarted")
        st.spoolsweep("agent", "audit", "--mta", "sendmail", "--sendmail", str(sm.wrapper), "--sendmail-config",
                      str(sm.cf))
        step(5, "the agent quarantines the queue (sendmail -Q) and snapshots it into the embedded store")
        args = ["--mta", "sendmail", "--sendmail", str(sm.wrapper)]
        st.spoolsweep("agent", "snapshot", *args, "--to", str(st.store), "--incident", incident, "--host", host,
                      "--state-dir", str(st.state))

        def queued() -> list[str]:
            return sorted(p.name[2:] for p in Path(sm.queue).iterdir() if p.name.startswith(("hf", "qf")))

        yield LabMta("sendmail", args, sm.relay_to, queued)
