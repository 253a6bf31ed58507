"""triage_summary: the workflow's summary step -> the manifest from every shard's verdicts (written last)."""

from __future__ import annotations

from functions.common import ColdStart, Powertools, StepHandler
from functions.settings import TriageStepSettings
from functions.triage_steps import build_step

pt = Powertools("triage-summary", counted="MessagesTriaged")


def build(s: TriageStepSettings) -> StepHandler:
    return build_step("summary", pt, s)


handler = ColdStart(build, TriageStepSettings)
