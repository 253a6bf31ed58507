"""The object-store prefixes an incident moves through, named in one place, like Postfix's queue names.

    incoming/<incident>/<host>/<snapshot>          the snapshot (agent or human upload)
    parsed/<incident>/<shard>.parquet             a shard's records as columns (pipeline.columnar)
    parsed/<incident>/<shard>.jsonl.zst           the same as ParsedRecord lines (written before; still read)
    manifests/<incident>/manifest.json            the triage result's summary, written last
    manifests/<incident>/messages-<n>.parquet     its messages in parts (pipeline.manifest_io), written first
    blocklists/<incident>/report.json             the blocklist report
    state/<incident>/decisions.json               the review's verdict changes, oldest first
    state/<incident>/shards/<shard>.json          a parsed shard's metadata (pipeline.shards.ShardMeta)
    state/<incident>/triage.claim                 who claimed the incident's triage (write-once)
    state/<incident>/triage/plan.json             the plan step's summary (pipeline.plan)
    state/<incident>/triage/plan/<shard>.parquet  the plan's rows of one shard
    state/<incident>/triage/decide.zst            the decide step's output (pipeline.staged.Decisions)
    state/<incident>/triage/<step>/<shard>.zst    a map step's output per shard (facts, verdicts)
    state/<incident>/triage/run/<step>[.<shard>].json  a triage step's output, run on one machine (the journal)
    state/policy.toml                             the site policy
    state/blocklists/latest.json                  the last scheduled blocklist report
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


def prefix(queue: str) -> str:
    """Everything in one queue: `incoming/`, `manifests/`, ..."""
    if queue not in ALL:
        raise ValueError(f"{queue!r} is not a queue")
    return f"{queue}/"


def incoming_key(incident: str, host: str, name: str) -> str:
    return f"{INCOMING}/{check_name('incident', incident)}/{check_name('host', host)}/{check_name('file', name)}"


_PARSED_SUFFIX = ".parquet"
_LEGACY_PARSED_SUFFIX = ".jsonl.zst"  # shards parsed before the columnar form, still read


def parsed_key(incident: str, shard: str) -> str:
    return f"{PARSED}/{check_name('incident', incident)}/{check_name('shard', shard)}{_PARSED_SUFFIX}"


def legacy_parsed_key(incident: str, shard: str) -> str:
    """Where a shard parsed before the columnar form lies (ParsedRecord JSON lines, zstd)."""
    return f"{PARSED}/{check_name('incident', incident)}/{check_name('shard', shard)}{_LEGACY_PARSED_SUFFIX}"


def manifest_key(incident: str) -> str:
    return f"{MANIFESTS}/{check_name('incident', incident)}/manifest.json"


def blocklist_key(incident: str) -> str:
    return f"{BLOCKLISTS}/{check_name('incident', incident)}/report.json"


def approval_key(incident: str, approval_id: str) -> str:
    return f"{APPROVALS}/{check_name('incident', incident)}/{check_name('approval', approval_id)}.json"


def decisions_key(incident: str) -> str:
    """The review's decision log (the console writes it; dispatch checks approvals against it)."""
    return f"{STATE}/{check_name('incident', incident)}/decisions.json"


def shard_meta_key(incident: str, shard: str) -> str:
    """What triage needs besides a shard's records: format, digests, defects (written before the records)."""
    return f"{STATE}/{check_name('incident', incident)}/shards/{check_name('shard', shard)}.json"


def claim_key(incident: str) -> str:
    """The write-once marker of the one event that runs an incident's triage."""
    return f"{STATE}/{check_name('incident', incident)}/triage.claim"


TRIAGE_STEPS = ("plan", "facts", "decide", "verdicts", "summary")


def triage_step_key(incident: str, step: str, shard: str | None = None) -> str:
    """Where a triage step keeps its output (pipeline.staged): per shard for the map steps."""
    if step not in TRIAGE_STEPS:
        raise ValueError(f"{step!r} is not a triage step ({', '.join(TRIAGE_STEPS)})")
    base = f"{STATE}/{check_name('incident', incident)}/triage/{step}"
    return f"{base}.zst" if shard is None else f"{base}/{check_name('shard', shard)}.zst"
def workflow_journal_key(incident: str, step: str, shard: str | None = None) -> str:
    """What one step of the triage workflow returned, when run on one machine (adapters/workflow.py resumes from it)."""
    item = "" if shard is None else f".{check_name('shard', shard)}"
    return f"{STATE}/{check_name('incident', incident)}/triage/run/{check_name('step', step)}{item}.json"


POLICY_KEY = f"{STATE}/policy.toml"
BLOCKLIST_STATE_KEY = f"{STATE}/blocklists/latest.json"


def corrupt_key(incident: str, shard: str) -> str:
    """Why a shard's snapshot could not be read, kept for a human (the snapshot itself stays in incoming/)."""
    return f"{CORRUPT}/{check_name('incident', incident)}/{check_name('shard', shard)}.json"


def incoming_prefix(incident: str, host: str | None = None) -> str:
    """The prefix of an incident's snapshots, or of one host's."""
    base = f"{INCOMING}/{check_name('incident', incident)}/"
    return base if host is None else f"{base}{check_name('host', host)}/"


def parsed_prefix(incident: str) -> str:
    return f"{PARSED}/{check_name('incident', incident)}/"


def shard_of_parsed_key(key: str) -> str | None:
    """The shard a parsed/<incident>/<shard>.parquet (or .jsonl.zst) key holds; None for any other key."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != PARSED:
        return None
    for suffix in (_PARSED_SUFFIX, _LEGACY_PARSED_SUFFIX):
        if parts[2].endswith(suffix) and len(parts[2]) > len(suffix):
            return parts[2][: -len(suffix)]
    return None


def plan_key(incident: str) -> str:
    """The plan step's summary: shards, policy, campaigns (written after every shard's rows)."""
    return f"{STATE}/{check_name('incident', incident)}/triage/plan.json"


def plan_rows_key(incident: str, shard: str) -> str:
    """The plan's rows of one shard: each row's global position, id, duplicate count, label, campaign."""
    return f"{STATE}/{check_name('incident', incident)}/triage/plan/{check_name('shard', shard)}.parquet"


def approvals_prefix(incident: str) -> str:
    return f"{APPROVALS}/{check_name('incident', incident)}/"


def receipts_prefix(incident: str) -> str:
    return f"{RECEIPTS}/{check_name('incident', incident)}/"


def host_of_incoming_key(key: str) -> str | None:
    """The host an incoming/<incident>/<host>/... key was uploaded by; None for a key of another shape."""
    parts = key.split("/")
    return parts[2] if len(parts) >= 4 and parts[0] == INCOMING and parts[2] else None


def instructions_prefix(host: str) -> str:
    return f"{INSTRUCTIONS}/{check_name('host', host)}/"


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


def parts_of(key: str, queue: str, n: int) -> list[str]:
    """The n non-empty parts after `queue/` of a key; ValueError for a key of any other shape."""
    q, parts = split_key(key)
    if q != queue or len(parts) != n or not all(parts):
        raise ValueError(f"key {key!r} is not {queue}/" + "/".join(["…"] * n))
    return parts
