"""Relay tests: the tricks abusers and the classic scanners use, each stopped at RCPT TO (no DATA, ever).

Point it only at a server you run. It talks to exactly the host and port it is given (no MX
look-ups), sends no message, and resets after every trick.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

PROBE_DOMAIN = "relay-probe.example.com"  # reserved by RFC 2606: nothing is ever delivered there


class TrickResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trick: str
    mail_from: str
    rcpt_to: str
    accepted: bool
    reply: str
    relays_outside: bool  # acceptance would hand mail to a domain that is not ours


class RelayReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str
    local_domain: str
    control_accepted: bool
    control_reply: str
    results: list[TrickResult]

    @property
    def open(self) -> bool:
        return any(r.accepted and r.relays_outside for r in self.results)


@dataclass(frozen=True)
class Trick:
    name: str
    mail_from: str
    rcpt_to: str
    auth_first: bool = False
    # False for address forms whose last hop is our own domain: accepting them proves no relay by
    # itself (a server may take them for a local user and bounce later), so they are reported, not
    # counted; Postfix, for one, accepts a source route to a domain in relay_domains.
    outside: bool = True


def tricks(local: str, outside: str = PROBE_DOMAIN, literal: str = "192.0.2.1") -> Iterator[Trick]:
    probe = f"probe@{outside}"
    yield Trick("plain relay", probe, probe)
    yield Trick("spoofed local sender", f"postmaster@{local}", probe)
    yield Trick("null sender", "", probe)
    yield Trick("upper-case domain", probe, f"PROBE@{outside.upper()}")
    yield Trick("percent hack", probe, f"probe%{outside}@{local}", outside=False)
    yield Trick("source route", probe, f"@{local}:{probe}", outside=False)
    yield Trick("bang path", probe, f"{outside}!probe@{local}", outside=False)
    yield Trick("quoted local part with @", probe, f'"{probe}"@{local}', outside=False)
    yield Trick("double @", probe, f"{probe}@{local}", outside=False)
    yield Trick("IP literal", probe, f"probe@[{literal}]")
    yield Trick("after a failed AUTH", probe, probe, auth_first=True)


def _rcpt(smtp: smtplib.SMTP, t: Trick) -> tuple[bool, str]:
    code, msg = smtp.mail(f"<{t.mail_from}>" if not t.mail_from.startswith("<") else t.mail_from)
    if code >= 400:
        smtp.rset()
        return False, f"MAIL {code} {msg.decode(errors='replace')}"
    code, msg = smtp.rcpt(t.rcpt_to)
    smtp.rset()
    return code in (250, 251), f"{code} {msg.decode(errors='replace')}"


def relay_test(host: str, port: int, local_domain: str, helo: str = "relay-test.spoolsweep.invalid",
               timeout: float = 20) -> RelayReport:
    """Try every trick against host:port; each ends at RCPT TO and is reset."""
    local = local_domain.lower().strip()
    results: list[TrickResult] = []
    with smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout) as smtp:
        smtp.ehlo_or_helo_if_needed()
        ok, control_reply = _rcpt(smtp, Trick("control", f"probe@{PROBE_DOMAIN}", f"postmaster@{local}"))
        for t in tricks(local):
            if t.auth_first:
                continue
            accepted, reply = _rcpt(smtp, t)
            results.append(TrickResult(trick=t.name, mail_from=t.mail_from, rcpt_to=t.rcpt_to, accepted=accepted,
                                       reply=reply, relays_outside=t.outside))
    auth = next(t for t in tricks(local) if t.auth_first)
    with smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout) as smtp:
        smtp.ehlo_or_helo_if_needed()
        if smtp.has_extn("auth"):
            smtp.docmd("AUTH", "PLAIN AHJlbGF5LXRlc3QAbm90LXRoZS1wYXNzd29yZA==")  # \0relay-test\0not-the-password
        accepted, reply = _rcpt(smtp, auth)
        results.append(TrickResult(trick=auth.name, mail_from=auth.mail_from, rcpt_to=auth.rcpt_to,
                                   accepted=accepted, reply=reply, relays_outside=True))
    return RelayReport(target=f"{host}:{port}", local_domain=local, control_accepted=ok, control_reply=control_reply,
                       results=results)
