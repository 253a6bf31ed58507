"""Audit an MTA's effective configuration for what makes it an open relay, with the lines to change."""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class Finding(BaseModel):
    model_config = ConfigDict(extra="forbid")
    severity: str  # "open-relay" | "risk" | "ok"
    setting: str
    current: str
    problem: str
    change_to: str


def postconf_n(config_dir: Path | None = None) -> str:
    argv = ["postconf", "-n"] + (["-c", str(config_dir)] if config_dir else [])
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


def parse_postconf(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = " ".join(v.split())
    return out


def _restrictions(value: str) -> list[str]:
    return [x for x in re.split(r"[\s,]+", value) if x]


def _wide(net: str) -> str | None:
    try:
        n = ipaddress.ip_network(net.strip("[]"), strict=False)
    except ValueError:
        return None  # a lookup table or hostname: not judged here
    if n.prefixlen == 0:
        return "every address on the internet"
    if not (n.is_private or n.is_loopback or n.is_link_local) and n.prefixlen < (24 if n.version == 4 else 48):
        return f"a public network of {n.num_addresses:,} addresses"
    return None


def audit_postfix(conf: dict[str, str]) -> list[Finding]:
    """Findings for `postconf -n` settings; an empty list means nothing found that opens the relay."""
    found: list[Finding] = []
    mynetworks = conf.get("mynetworks", "")
    for net in _restrictions(mynetworks):
        if why := _wide(net):
            found.append(Finding(severity="open-relay", setting="mynetworks", current=mynetworks,
                                 problem=f"{net} is {why}: all of it may relay without authentication",
                                 change_to="mynetworks = 127.0.0.0/8 [::1]/128 (plus only your own LAN ranges)"))
    for setting in ("smtpd_relay_restrictions", "smtpd_recipient_restrictions"):
        if setting not in conf:
            continue
        rules = _restrictions(conf[setting])
        guard = next((i for i, r in enumerate(rules) if r in ("reject_unauth_destination",
                                                               "defer_unauth_destination")), None)
        relay_controls = setting == "smtpd_relay_restrictions" or "smtpd_relay_restrictions" not in conf or not \
            conf.get("smtpd_relay_restrictions")
        if not relay_controls:
            continue
        fix = f"{setting} = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
        if guard is None:
            found.append(Finding(severity="open-relay", setting=setting, current=conf[setting],
                                 problem="no reject_unauth_destination: mail for any domain is accepted",
                                 change_to=fix))
            continue
        for r in rules[:guard]:
            if r in ("permit", "static:OK"):  # `check_client_access static:OK` splits into two words
                found.append(Finding(severity="open-relay", setting=setting, current=conf[setting],
                                     problem=f"'{r}' comes before reject_unauth_destination and lets anyone relay",
                                     change_to=fix))
                break
    relay_domains = conf.get("relay_domains", "")
    if any(d in ("*", ".") or d.startswith("*.") for d in _restrictions(relay_domains)):
        found.append(Finding(severity="open-relay", setting="relay_domains", current=relay_domains,
                             problem="a wildcard relays for every domain",
                             change_to="relay_domains = (only the domains you are backup MX for)"))
    if conf.get("smtpd_sasl_auth_enable", "no") == "yes" and conf.get("smtpd_tls_auth_only", "no") != "yes":
        found.append(Finding(severity="risk", setting="smtpd_tls_auth_only", current=conf.get("smtpd_tls_auth_only",
                                                                                              "no (default)"),
                             problem="SMTP AUTH is offered without TLS: passwords cross the network in clear, "
                                     "which is how they get stolen",
                             change_to="smtpd_tls_auth_only = yes"))
    return found
