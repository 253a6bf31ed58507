"""The object-store prefixes an incident moves through, named in one place, like Postfix's queue names.

    incoming/<incident>/<host>/<snapshot>          the snapshot (agent or human upload)
    parsed/<incident>/<shard>.jsonl.zst           ParsedRecord lines, one object per shard
    manifests/<incident>/manifest.json            the triage result
    blocklists/<incident>/report.json             the blocklist report
    state/<incident>/decisions.json               the review's verdict changes, oldest first
    approvals/<incident>/<approval-id>.json       immutable approvals
    instructions/<host>/<instruction-id>.json     signed instructions (the local channel's copy)
    receipts/<incident>/<host>/<instruction-id>.json  what the agent did
    corrupt/<incident>/...                        what could not be read, kept for a human
Every object is written once under a deterministic key; its presence means it is complete.
"""

from __future__ import annotations

import re

INCOMING = "incoming"
PARSED = "parsed"
MANIFESTS = "manifests"
BLOCKLISTS = "blocklists"
APPROVALS = "approvals"
INSTRUCTIONS = "instructions"
RECEIPTS = "receipts"
CORRUPT = "corrupt"
STATE = "state"

ALL = (INCOMING, PARSED, MANIFESTS, BLOCKLISTS, APPROVALS, INSTRUCTIONS, RECEIPTS, CORRUPT, STATE)

# \Z, not $: `$` also matches before a final newline, and "inc1\n" would pass
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


def check_name(kind: str, value: str) -> str:
    """Incident, host and shard names become key parts: keep them to a safe alphabet."""
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise ValueError(f"{kind} {value!r} must be 1-128 of A-Z a-z 0-9 . _ - and not start with a symbol")
    return value


def incoming_key(incident: str, host: str, name: str) -> str:
    return f"{INCOMING}/{check_name('incident', incident)}/{check_name('host', host)}/{check_name('file', name)}"


def parsed_key(incident: str, shard: str) -> str:
    return f"{PARSED}/{check_name('incident', incident)}/{check_name('shard', shard)}.jsonl.zst"


def manifest_key(incident: str) -> str:
    return f"{MANIFESTS}/{check_name('incident', incident)}/manifest.json"


def blocklist_key(incident: str) -> str:
    return f"{BLOCKLISTS}/{check_name('incident', incident)}/report.json"


def approval_key(incident: str, approval_id: str) -> str:
    return f"{APPROVALS}/{check_name('incident', incident)}/{check_name('approval', approval_id)}.json"


def decisions_key(incident: str) -> str:
    """The review's decision log (the console writes it; dispatch checks approvals against it)."""
    return f"{STATE}/{check_name('incident', incident)}/decisions.json"


def instruction_key(host: str, instruction_id: str) -> str:
    return f"{INSTRUCTIONS}/{check_name('host', host)}/{check_name('instruction', instruction_id)}.json"


def receipt_key(incident: str, host: str, instruction_id: str) -> str:
    return (f"{RECEIPTS}/{check_name('incident', incident)}/{check_name('host', host)}/"
            f"{check_name('instruction', instruction_id)}.json")


def split_key(key: str) -> tuple[str, list[str]]:
    """(queue, parts) of a key; raises ValueError for a key outside the known queues."""
    queue, _, rest = key.partition("/")
    if queue not in ALL or not rest:
        raise ValueError(f"key {key!r} is not under a known prefix")
    return queue, rest.split("/")
