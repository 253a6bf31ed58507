"""The embedded default with the real agent: snapshot a pickup folder, triage, approve, replay and purge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.generator import generate, write_eml_folder
from pipeline.instructions import Approval, Receipt

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # the whole flow through CLI subprocesses


def test_agent_snapshot_up_approve_agent_run(tmp_path, corpus, policy_file):
    ham, spam = corpus
    queue = write_eml_folder(generate(ham, spam, n=400, seed=4), tmp_path / "Queue")
    before = {p.name for p in queue.iterdir()}
    store, state = tmp_path / "store", tmp_path / "agent-state"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}

    def cli(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "spoolsweep", *args], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    cli("agent", "snapshot", "--mta", "pickup-dir", "--dir", str(queue), "--to", str(store), "--incident", "inc1",
        "--host", "mx1", "--state-dir", str(state), "-q")
    assert not any(queue.iterdir())  # frozen: moved aside
    cli("up", "--store", str(store), "--policy", str(policy_file), "--once")
    out = cli("approve", "inc1", "--by", "alice", "--store", str(store))
    [akey] = list((store / "approvals/inc1").glob("*.json"))
    approval = Approval.model_validate_json(akey.read_bytes())
    assert approval.replay and approval.purge and out.startswith("approved")
    cli("up", "--store", str(store), "--once")
    cli("agent", "run", "--mta", "pickup-dir", "--dir", str(queue), "--public-key",
        str(store / "keys/signing.pub.pem"), "--store", str(store), "--host", "mx1", "--state-dir", str(state),
        "--once")
    receipts = [Receipt.model_validate(json.loads(p.read_bytes())) for p in (store / "receipts/inc1/mx1").glob("*")]
    assert receipts and not any(r.refused for r in receipts), [r.refused for r in receipts]
    done = {it.id: it.outcome.value for r in receipts for it in r.items}
    assert {i for i, o in done.items() if o == "replayed"} == {m.id for m in approval.replay}
    assert {i for i, o in done.items() if o == "purged"} == {m.id for m in approval.purge}
    replayed = {p.name.split("-")[0].upper() for p in queue.iterdir()}  # the agent names its re-injected copies
    assert len(list(queue.iterdir())) == len(approval.replay)
    assert replayed == {m.path.rsplit("/", 1)[-1].split(".")[0] for m in approval.replay} and replayed <= {
        b.split(".")[0] for b in before}
