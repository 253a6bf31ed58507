"""triage_facts: the workflow's facts step -> one shard's per-message facts the campaign rules read."""

from __future__ import annotations

from functions.common import ColdStart, Powertools, StepHandler
from functions.settings import TriageStepSettings
from functions.triage_steps import build_step

pt = Powertools("triage-facts")


def build(s: TriageStepSettings) -> StepHandler:
    return build_step("facts", pt, s)


handler = ColdStart(build, TriageStepSettings)
