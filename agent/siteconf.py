"""Record the MTA's own view of the site (its names, domains, trusted networks) for the snapshot's `site`.

Triage turns it into the site policy (pipeline/sitepolicy.py), so an admin need not write one: the MTA
already knows which domains are local and whom it relays for. Recorded raw, as the MTA printed it, with
the command that printed it, so the manifest can say where each value came from. Never fatal: a value
the MTA will not give is a note, and triage falls back to what the queue shows.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from agent.mta.base import Queue

POSTFIX_PARAMS = ("myhostname", "mydomain", "mydestination", "mynetworks", "relay_domains", "virtual_alias_domains",
                  "virtual_mailbox_domains", "inet_interfaces")
# Exim: options with -bP NAME; named lists (the usual Debian names) with -bP +NAME
EXIM_OPTIONS = ("primary_hostname", "local_interfaces")
EXIM_LISTS = ("local_domains", "relay_to_domains", "relay_from_hosts")
POLICY_KEYS = ("local_domains", "server_names", "server_ips", "trusted_networks", "relay_domains")
_LINE = re.compile(r"^\s*(?:(?:domainlist|hostlist|addresslist|localpartlist)\s+)?([A-Za-z0-9_]+)\s*=\s?(.*)$")


def parse_settings(text: str) -> dict[str, str]:
    """`name = value` lines (postconf, exim -bP) into a dict; Postfix's continuation lines are joined."""
    out: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if line[:1].isspace() and last is not None:
            out[last] += " " + line.strip()
            continue
        if m := _LINE.match(line):
            last = m.group(1)
            out[last] = m.group(2).strip()
    return out


def _run(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[str, str]:
    try:
        cp = subprocess.run(list(argv), capture_output=True, timeout=60, check=False, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "", str(e)
    return cp.stdout.decode("utf-8", "replace"), cp.stderr.decode("utf-8", "replace").strip()[:300]


def postfix_site(sbin: Path, config_dir: Path | None) -> dict[str, Any]:
    """`postconf -x` (values with $name expanded) for the parameters the policy needs."""
    base = [str(sbin / "postconf"), *(["-c", str(config_dir)] if config_dir else [])]
    out, err = _run([*base, "-x", *POSTFIX_PARAMS])
    how = "postconf -x"
    if not out:  # Postfix before 2.10 has no -x: unexpanded values are still evidence
        out, err = _run([*base, *POSTFIX_PARAMS])
        how = "postconf"
    params = parse_settings(out)
    notes = [] if params else [f"postconf printed nothing: {err or 'no output'}"]
    return {"mta": "postfix", "how": how, "params": params, "notes": notes}


def exim_site(command: Sequence[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """`exim -bP` for the options and named lists the policy needs; a list the configuration does not
    define is a note (Exim says so on stderr), not an error."""
    params: dict[str, str] = {}
    notes: list[str] = []
    out, err = _run([*command, "-bP", *EXIM_OPTIONS], env)
    params.update(parse_settings(out))
    for name in EXIM_LISTS:
        out, err = _run([*command, "-bP", f"+{name}"], env)
        got = parse_settings(out)
        if name in got:
            params[name] = got[name]
        else:
            said = (err or out).strip().splitlines()
            notes.append(f"exim -bP +{name}: {said[0] if said else 'not defined'}")
    return {"mta": "exim", "how": "exim -bP", "params": params, "notes": notes}


def given_site(mta: str, policy_file: Path | None, values: dict[str, list[str]]) -> dict[str, Any] | None:
    """For a pickup folder (IIS, Exchange), whose MTA has no command to ask: a --policy file's values and
    those given on the command line (which win)."""
    policy: dict[str, list[str]] = {}
    how = []
    if policy_file is not None:
        from pipeline.errors import PolicyError
        from pipeline.policy import load_policy

        try:
            pol = load_policy(policy_file)
        except PolicyError as e:
            raise AgentError(str(e)) from None
        policy.update({k: list(getattr(pol, k)) for k in POLICY_KEYS if k in pol.model_fields_set})
        how.append(f"--policy {policy_file.name}")
    given = {k: v for k, v in values.items() if v}
    if given:
        from pipeline.errors import PolicyError
        from pipeline.policy import policy_from_dict

        try:
            policy_from_dict(given, source="the command line")
        except PolicyError as e:
            raise AgentError(str(e)) from None
        policy.update(given)
        how.append("command line")
    if not policy:
        return None
    return {"mta": mta, "how": " + ".join(how), "policy": policy, "notes": []}


def record(queue: Queue, mta: str, policy_file: Path | None = None,
           values: dict[str, list[str]] | None = None) -> dict[str, Any] | None:
    """The MTA's own view for the snapshot's meta, or None when there is nothing to record."""
    values = values or {}
    if policy_file is not None or any(values.values()):
        return given_site(mta, policy_file, values)
    if mta == "postfix":
        from agent.mta.postfix import PostfixQueue

        if isinstance(queue, PostfixQueue):
            return postfix_site(queue.sbin, queue.config_dir)
    if mta == "exim":
        from agent.mta.exim import EximQueue

        if isinstance(queue, EximQueue):
            return exim_site(queue.command, queue.env)
    return None
