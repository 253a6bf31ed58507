"""triage_verdicts: the workflow's verdicts step -> one shard's manifest messages, from records and decisions."""

from __future__ import annotations

from functions.common import ColdStart, Powertools, StepHandler
from functions.settings import TriageStepSettings
from functions.triage_steps import build_step

pt = Powertools("triage-verdicts")


def build(s: TriageStepSettings) -> StepHandler:
    return build_step("verdicts", pt, s)


handler = ColdStart(build, TriageStepSettings)
