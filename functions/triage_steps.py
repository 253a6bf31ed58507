"""What the five triage-workflow handlers share: one step of pipeline.service.triage.run_step per invocation.

The state machine (infra/template.yaml, adapters/workflow.py) invokes them with {"incident", "shard"?}
and passes on what they return: plan's `shards` become the map's items.
"""

from __future__ import annotations

from adapters.names import TRIAGE_MAP_STEPS
from functions.common import Powertools, StepHandler, step_handler
from functions.errors import PoisonEvent
from functions.settings import TriageStepSettings
from pipeline import queues
from pipeline.service.incidents import load_site_policy
from pipeline.service.triage import run_step


def build_step(step: str, pt: Powertools, s: TriageStepSettings) -> StepHandler:
    from adapters.bootstrap import build_store

    store = build_store(s.store, s.cloud)

    def run(event: dict) -> dict:
        try:
            incident = queues.check_name("incident", event["incident"])
            shard = queues.check_name("shard", event["shard"]) if step in TRIAGE_MAP_STEPS else None
        except (KeyError, TypeError, ValueError) as e:
            raise PoisonEvent(f"triage {step}: bad payload {event!r}: {e}") from None
        source = s.policy_key if store.exists(s.policy_key) else None
        out = run_step(step, store, incident, shard, load_site_policy(store, s.policy_key), source)
        return out.model_dump(mode="json")

    return step_handler(pt, run, s)
