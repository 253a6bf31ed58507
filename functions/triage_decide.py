"""triage_decide: the workflow's decide step -> campaign, account and source decisions from every shard's facts."""

from __future__ import annotations

from functions.common import ColdStart, Powertools, StepHandler
from functions.settings import TriageStepSettings
from functions.triage_steps import build_step

pt = Powertools("triage-decide")


def build(s: TriageStepSettings) -> StepHandler:
    return build_step("decide", pt, s)


handler = ColdStart(build, TriageStepSettings)
