"""triage_plan: the workflow's plan step -> the incident's shards (the map's items), once all are parsed."""

from __future__ import annotations

from functions.common import ColdStart, Powertools, StepHandler
from functions.settings import TriageStepSettings
from functions.triage_steps import build_step

pt = Powertools("triage-plan")


def build(s: TriageStepSettings) -> StepHandler:
    return build_step("plan", pt, s)


handler = ColdStart(build, TriageStepSettings)
