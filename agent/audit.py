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


# Exim ---------------------------------------------------------------------------------------------
_VERBS = ("accept", "deny", "require", "defer", "discard", "drop", "warn")
_BEGIN = re.compile(r"^\s*begin\s+(\w+)\s*$")
# ACL modifiers: they say what to do or log, not which recipients a statement applies to
_MODIFIERS = {"message", "log_message", "logwrite", "control", "set", "delay", "add_header", "remove_header",
              "endpass", "continue", "udpsend", "queue", "log_reject_target"}


def exim_config_text(command: list[str]) -> str:
    """The running configuration, as `exim -bP config` prints it (comments gone, macros expanded)."""
    return subprocess.run([*command, "-bP", "config"], capture_output=True, text=True, check=True, timeout=30).stdout


def _exim_sections(text: str) -> dict[str, list[str]]:
    """The main section ("main") and each `begin NAME` section, as lines with continuations (trailing \\) joined."""
    out: dict[str, list[str]] = {"main": []}
    cur = "main"
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.rstrip()
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        pending = ""
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if m := _BEGIN.match(line):
            cur = m.group(1)
            out.setdefault(cur, [])
            continue
        out[cur].append(line)
    return out


def _exim_acls(lines: list[str]) -> dict[str, list[tuple[str, list[tuple[str, str]]]]]:
    """ACL name -> statements, each (verb, [(condition, value), ...]) in order."""
    acls: dict[str, list[tuple[str, list[tuple[str, str]]]]] = {}
    cur: list[tuple[str, list[tuple[str, str]]]] | None = None
    for line in lines:
        name = line.strip()
        if name.endswith(":") and " " not in name and name[:-1] not in _VERBS:  # `exim -bP config` indents names
            cur = acls.setdefault(line.strip()[:-1], [])
            continue
        if cur is None:
            continue
        words = line.split(None, 1)
        rest = line.strip()
        if words and words[0] in _VERBS:
            cur.append((words[0], []))
            rest = words[1] if len(words) > 1 else ""
        if cur and "=" in rest:
            k, _, v = rest.partition("=")
            cur[-1][1].append((k.strip(), v.strip()))
    return acls


def _exim_list(value: str) -> list[str]:
    """An Exim list: colon-separated, or `<; ...` with another separator."""
    value = value.strip()
    sep = ":"
    if value.startswith("<") and len(value) > 1:
        sep, value = value[1], value[2:]
    return [x.strip() for x in value.split(sep) if x.strip()]


_EXIM_RCPT_FIX = ("accept domains = +local_domains : +relay_to_domains, then accept hosts = +relay_from_hosts, "
                  "accept authenticated = *, and end with: deny message = relay not permitted")


def audit_exim(text: str) -> list[Finding]:
    """Findings for an Exim configuration (`exim -bP config`); an empty list means nothing found that opens the
    relay. Reads relay_from_hosts, relay_to_domains and the RCPT ACL up to the first statement that refuses
    other domains."""
    found: list[Finding] = []
    sec = _exim_sections(text)
    lists: dict[str, list[str]] = {}
    options: dict[str, str] = {}
    for line in sec.get("main", []):
        words = line.split(None, 1)
        if words and words[0] in ("hostlist", "domainlist") and len(words) == 2 and "=" in words[1]:
            name, _, value = words[1].partition("=")
            lists[name.strip()] = _exim_list(value)
        elif "=" in line:
            k, _, v = line.partition("=")
            options[k.strip()] = v.strip()
    relay_hosts = lists.get("relay_from_hosts", [])
    for net in relay_hosts:
        if net == "*" or (why := _wide(net.removeprefix("net-"))):
            found.append(Finding(severity="open-relay", setting="relay_from_hosts",
                                 current=f"hostlist relay_from_hosts = {' : '.join(relay_hosts)}",
                                 problem=f"{net} is {'every host' if net == '*' else why}: all of it may relay "
                                         "without authentication",
                                 change_to="hostlist relay_from_hosts = <; 127.0.0.1 ; ::1 (plus only your own LAN "
                                           "ranges)"))
    if "*" in lists.get("relay_to_domains", []):
        found.append(Finding(severity="open-relay", setting="relay_to_domains",
                             current="domainlist relay_to_domains = *", problem="a wildcard relays for every domain",
                             change_to="domainlist relay_to_domains = (only the domains you are backup MX for)"))
    acl_name = options.get("acl_smtp_rcpt")
    if not acl_name:
        return found  # no RCPT ACL: Exim refuses every recipient over SMTP
    statements = _exim_acls(sec.get("acl", [])).get(acl_name, [])
    for verb, conds in statements:
        conds = [(k, v) for k, v in conds if k.lstrip("!").strip() not in _MODIFIERS]
        keys = {k.lstrip("!").strip(): (k.startswith("!"), v) for k, v in conds}
        if verb in ("deny", "require") and "domains" in keys:
            break  # from here on other domains are refused
        if verb in ("deny", "drop") and not conds:
            break
        if verb != "accept":
            continue
        shown = " ".join(["accept", *(f"{k} = {v}" for k, v in conds)])
        hosts = keys.get("hosts")
        if "domains" in keys or "recipients" in keys or "authenticated" in keys or "condition" in keys:
            continue
        if "local_parts" in keys and keys["local_parts"][1] != "*":
            continue
        if hosts is not None and not hosts[0]:
            entries = _exim_list(hosts[1])
            if not entries:
                continue  # `hosts = :` is local submission (exim -bs), not the network
            wide = [h for h in entries if h == "*" or _wide(h.removeprefix("net-"))]
            if not wide:
                continue  # specific hosts (or +relay_from_hosts, judged above)
            problem = f"'{shown}' lets {', '.join(wide)} relay to any domain"
        else:
            problem = f"'{shown}' accepts every recipient from anyone before other domains are refused"
        found.append(Finding(severity="open-relay", setting=f"acl_smtp_rcpt ({acl_name})", current=shown,
                             problem=problem, change_to=_EXIM_RCPT_FIX))
        break
    if options.get("auth_advertise_hosts", "*") in ("*", "") and "tls_advertise_hosts" not in options and any(
            s for s in sec.get("authenticators", [])):
        found.append(Finding(severity="risk", setting="auth_advertise_hosts",
                             current=f"auth_advertise_hosts = {options.get('auth_advertise_hosts', '* (default)')}",
                             problem="SMTP AUTH is offered without TLS: passwords cross the network in clear, "
                                     "which is how they get stolen",
                             change_to="auth_advertise_hosts = ${if eq{$tls_in_cipher}{}{}{*}}"))
    return found


# Sendmail -----------------------------------------------------------------------------------------
# FEATUREs the cf records as `#####  $Id: NAME.m4,v ...`, and what each does to relaying
_SENDMAIL_FEATURES = {
    "promiscuous_relay": ("open-relay", "relays for anyone, to any domain"),
    "relay_local_from": ("open-relay", "relays for any client that claims a local sender in MAIL FROM (trivially "
                                       "forged: the 'spoofed local sender' trick)"),
    "relay_mail_from": ("risk", "relays for senders listed in access as From: RELAY, which any client can forge"),
    "loose_relay_check": ("risk", "accepts user%host@ourdomain, the percent hack"),
    "relay_based_on_MX": ("risk", "relays for any domain whose MX points here, which others control"),
}
_SENDMAIL_ID = re.compile(r"^#+\s+\$Id: (\w+)\.m4,", re.M)
_ACCESS_MAP = re.compile(r"^Kaccess\s+\S+\s+(?:-\S+\s+)*(/\S+)", re.M)


def sendmail_class_r(command: list[str]) -> list[str]:
    """Class R (the hosts and networks allowed to relay: CR lines and relay-domains) as the running Sendmail has it."""
    cp = subprocess.run([*command, "-bt"], input="$=R\n", capture_output=True, text=True, check=True, timeout=30)
    # "ADDRESS TEST MODE ...", "Enter <ruleset> <address>", then the members, the first one after the "> " prompt
    members = [re.sub(r"^(?:>\s*)+", "", ln).strip() for ln in cp.stdout.splitlines()
               if not ln.startswith(("ADDRESS", "Enter"))]
    return [m for m in members if m and " " not in m]


def sendmail_access_file(cf: str) -> Path | None:
    """The text source of the access map the cf reads (the .db's path without its suffix)."""
    m = _ACCESS_MAP.search(cf)
    return Path(m.group(1).removesuffix(".db")) if m else None


def _sendmail_prefix(entry: str) -> str | None:
    """Why an IP prefix in class R or access (`10`, `192.168`, `IPv6:…`, `1.2.3.0/24`) is too wide, else None."""
    e = entry.strip().removeprefix("Connect:").removeprefix("IPv6:")
    if "/" in e:
        return _wide(e)
    parts = e.split(".")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 4:
        return None
    return _wide(".".join(parts + ["0"] * (4 - len(parts))) + f"/{8 * len(parts)}")


def audit_sendmail(cf: str, class_r: list[str] | None = None, access: str = "") -> list[Finding]:
    """Findings for a sendmail.cf, its class R (relay-domains) and its access map's text; an empty list means
    nothing found that opens the relay."""
    found: list[Finding] = []
    features = set(_SENDMAIL_ID.findall(cf))
    for name, (severity, problem) in _SENDMAIL_FEATURES.items():
        if name in features:
            found.append(Finding(severity=severity, setting=f"FEATURE(`{name}')", current=f"FEATURE(`{name}')dnl",
                                 problem=f"FEATURE(`{name}') {problem}",
                                 change_to=f"delete FEATURE(`{name}')dnl from sendmail.mc, rebuild sendmail.cf "
                                           "(sendmailconfig or make -C /etc/mail) and restart sendmail"))
    if "promiscuous_relay" not in features and "Relaying denied" not in cf:
        found.append(Finding(severity="open-relay", setting="check_rcpt", current="(no 'Relaying denied' rule)",
                             problem="the cf's check_rcpt never refuses relaying: every recipient is accepted",
                             change_to="rebuild sendmail.cf from a sendmail.mc without relay FEATUREs"))
    for entry in class_r or []:
        if why := _sendmail_prefix(entry):
            found.append(Finding(severity="open-relay", setting="class R (relay-domains)", current=entry,
                                 problem=f"{entry} is {why}: all of it may relay",
                                 change_to="list only your own networks in /etc/mail/relay-domains (e.g. 127.0.0.1 "
                                           "and your LAN), then restart sendmail"))
        elif "." not in entry and not entry.isdigit() and entry.lower() not in ("localhost",):
            found.append(Finding(severity="open-relay", setting="class R (relay-domains)", current=entry,
                                 problem=f"{entry} is a whole top-level domain: every host under it may relay",
                                 change_to="list only your own hosts and networks in /etc/mail/relay-domains"))
    for line in access.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2 or words[-1].upper() != "RELAY":
            continue
        key = words[0]
        if key.lower().startswith("from:") or ("@" in key and not key.lower().startswith(("to:", "connect:"))):
            found.append(Finding(severity="risk", setting="access", current=line.strip(),
                                 problem="relaying allowed by the sender address, which any client can forge",
                                 change_to=f"delete '{line.strip()}' and use SMTP AUTH for that sender"))
        elif not key.lower().startswith("to:") and (why := _sendmail_prefix(key)):
            found.append(Finding(severity="open-relay", setting="access", current=line.strip(),
                                 problem=f"{key} is {why}: all of it may relay",
                                 change_to=f"Connect:{'127.0.0.1'} RELAY (plus only your own LAN ranges); then "
                                           "makemap hash /etc/mail/access < /etc/mail/access"))
    return found
