"""The use cases every entry point calls (Lambda handlers, CLI, console, agent CLI): ports and typed values in,
typed results out; no AWS and no MTA code here, only pipeline/store.py's ports.

    parse.py       a snapshot or shard under incoming/ -> its parsed shard (or its parts)
    plan.py        every shard of an incident parsed -> the plan (order, ids, policy, campaigns)
    triage.py      every shard of an incident parsed -> the manifest
    blocklists.py  a manifest -> the blocklist report; the scheduled re-check
    incidents.py   put a policy, upload a snapshot, approve a manifest, make the signing key
    dispatch.py    an approval -> signed instructions on the host's channel
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepResult:
    """What a step did, in words for the log, with how many messages or instructions it handled."""

    summary: str
    count: int = 0
    done: bool = True  # False: skipped, already done or waiting, nothing was written

    def __str__(self) -> str:
        return self.summary
