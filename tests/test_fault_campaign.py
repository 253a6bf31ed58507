"""The fault campaign over the whole flow (pickup-folder spool, embedded pipeline, agent): duplicate and reordered
events, a function killed mid-step, the store briefly refusing writes, a forged and an expired instruction, a
message changed after review, the agent killed mid-replay. Each must end with nothing lost and nothing delivered
twice, or with a clear refusal; the test prints how many faults of each kind it injected and survived."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters import names
from pipeline.errors import StoreError
from pipeline.generator import POLICY_TOML, generate, write_eml_folder
from pipeline.instructions import Approval, Receipt, generate_keypair, instruction_from_approval, sign
from pipeline.manifest_io import read_manifest
from pipeline.queues import receipt_key
from pipeline.store import LocalChannel, LocalStore
from spoolsweep.lab.sink import Sink, body_of
from spoolsweep.lab.story import message_id
from tests.support import agent as support
from tests.test_agent_sigkill import kill_until_done

mail_corpus = support.mail_corpus
INC, HOST, N = "inc-faults", "mx1", 200
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def cli(*args: str) -> str:
    cp = subprocess.run([sys.executable, "-m", "spoolsweep", *map(str, args)], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, check=False, env={**os.environ, "COLUMNS": "160"})
    assert cp.returncode == 0, f"{args}: {cp.stdout}\n{cp.stderr}"
    return cp.stdout + cp.stderr


def verdicts(store: Path) -> dict[str, tuple[str, str]]:
    m = read_manifest(store / "manifests" / INC)
    return {x.path: (x.sha256, x.verdict.value) for x in m.messages}


class FlakyStore:
    """LocalStore's writes refused `n` times (put and put_if_absent), as a store briefly refusing writes."""

    def __init__(self, n: int, injected: Counter) -> None:
        self.n, self.injected = n, injected
        self.refused: list[str] = []  # the keys whose write was refused, once per refusal
        self.put, self.put_if_absent = LocalStore.put, LocalStore.put_if_absent

    def _wrap(self, real):  # type: ignore[no-untyped-def]
        def write(store, key, data, *a, **kw):  # type: ignore[no-untyped-def]
            if self.n > 0 and not key.startswith("state/"):
                self.n -= 1
                self.injected["store refused a write"] += 1
                self.refused.append(key)
                raise StoreError(f"{key}: injected: the store refuses writes for a moment")
            return real(store, key, data, *a, **kw)
        return write

    def __enter__(self) -> FlakyStore:
        LocalStore.put = self._wrap(self.put)  # type: ignore[method-assign]
        LocalStore.put_if_absent = self._wrap(self.put_if_absent)  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        LocalStore.put, LocalStore.put_if_absent = self.put, self.put_if_absent  # type: ignore[method-assign]


def in_process(store: Path, work) -> None:  # type: ignore[no-untyped-def]
    """Run `work(runner)` against the embedded default in this process (handlers given its settings)."""
    from adapters.bootstrap import embedded_settings
    from adapters.runtime import LocalRunner

    saved = dict(os.environ)
    try:
        work(LocalRunner(store, settle=0.0, settings=embedded_settings(store, 1)))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        from adapters.runtime import reset_handlers

        reset_handlers()


def redeliver(runner, injected: Counter, survived: Counter) -> None:  # type: ignore[no-untyped-def]
    """Every event of the finished pipeline again, later steps first (reordered), each twice (duplicated); an
    event survived when its handler reported it done and nothing failed."""
    runner.done.clear()  # forget what was handled: every object is new again
    todo = runner.pending()
    for step in ("triage", "parse"):  # triage's events first: out of order
        for s, key, size, etag in todo:
            if s != step:
                continue
            for copy in range(2):
                out = runner.deliver(step, [runner.record(s, key, size, etag, message_id=f"dup{copy}-{key}")])
                kind = "duplicate event" if copy else "reordered event"
                injected[kind] += 1
                survived[kind] += bool(out.done) and not out.failed


def test_fault_campaign(tmp_path, mail_corpus):
    injected: Counter = Counter()
    survived: Counter = Counter()
    rng = random.Random(9)
    ham, spam = mail_corpus
    inc = generate(ham, spam, n=N, seed=5)
    truth = {message_id(m.data): m for m in inc.messages}
    q, store, state, ref = tmp_path / "Queue", tmp_path / "store", tmp_path / "state", tmp_path / "ref"
    (tmp_path / "site.toml").write_text(POLICY_TOML)
    write_eml_folder(inc, q)
    cli("agent", "snapshot", "--mta", "pickup-dir", "--dir", q, "--to", store, "--incident", INC, "--host", HOST,
        "--state-dir", state)
    # the reference: the same snapshot through an undisturbed pipeline
    shutil.copytree(store, ref)
    cli("up", "--store", ref, "--policy", tmp_path / "site.toml", "--once")
    want = verdicts(ref)

    # 1. a function killed mid-step (SIGKILL of `spoolsweep up`), again and again, then left to finish
    # a killed step cannot remove its temporary folder: keep those in the test's own folder, not the machine's /tmp
    (tmp_path / "tmp").mkdir()
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-m", "spoolsweep", "up", "--store", str(store), "--policy",
                              str(tmp_path / "site.toml"), "--once"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
        time.sleep(rng.uniform(1.0, 3.0))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            injected["function killed mid-step"] += 1
        p.wait()
    # a kill can land before `up` has copied the policy into the store: the admin runs it again as before
    cli("up", "--store", store, "--policy", tmp_path / "site.toml", "--once")
    if verdicts(store) == want:  # else a killed function changed the manifest
        survived["function killed mid-step"] = injected["function killed mid-step"]

    # 2. the store refusing writes for a moment: a copy of the snapshot through the handlers in this process
    flaky = tmp_path / "flaky"
    shutil.copytree(store / "incoming", flaky / "incoming")
    (flaky / "state").mkdir()
    shutil.copy(ref / "state" / "policy.toml", flaky / "state" / "policy.toml")
    with FlakyStore(names.MAX_RECEIVES - 1, injected) as fs:  # one fewer than would dead-letter the event
        in_process(flaky, lambda r: r.run_until_idle())
    # a refused write survived when the object was written after all, and the result is the reference's
    if verdicts(flaky) == want and not list((flaky / ".runner" / "dlq").glob("*/*.json")):
        survived["store refused a write"] = sum((flaky / key).is_file() for key in fs.refused)

    # 3. duplicate and reordered events
    before = read_manifest(store / "manifests" / INC)
    in_process(store, lambda r: redeliver(r, injected, survived))
    assert verdicts(store) == want
    assert not list((store / ".runner" / "dlq").glob("*/*.json")), "nothing dead-lettered"
    assert read_manifest(store / "manifests" / INC).messages == before.messages, \
        "same result however often and in whatever order"

    # approve; dispatch twice (a duplicate S3 event for the approval)
    cli("approve", INC, "--by", "tester", "--store", store)
    cli("up", "--store", store, "--once")
    approval = Approval.model_validate_json(next((store / "approvals" / INC).glob("*.json")).read_bytes())
    real = instruction_from_approval(approval, datetime.now(UTC))
    priv = (store / "keys" / "signing.pem").read_bytes()
    channel = LocalChannel(store / "channel")
    channel.send(HOST, sign(real, priv, "k").model_dump_json(), "dup-dispatch")
    injected["duplicate instruction"] += 1

    # 4. a forged and an expired instruction
    other, _ = generate_keypair()
    forged = real.model_copy(update={"instruction_id": "forged-1"})
    channel.send(HOST, sign(forged, other, "k").model_dump_json(), "forged")
    old = datetime.now(UTC) - timedelta(days=3)
    expired = instruction_from_approval(approval, old).model_copy(update={"instruction_id": "expired-1"})
    channel.send(HOST, sign(expired, priv, "k").model_dump_json(), "expired")
    injected["forged instruction"] += 1
    injected["expired instruction"] += 1

    # 5. a reviewed valid message changed on disk after the review
    aside = Path(str(q) + ".old")
    valid_paths = [m.path for m in approval.replay]
    tampered = aside / Path(valid_paths[0]).name
    assert tampered.exists(), sorted(p.name for p in aside.iterdir())[:5]
    tampered.write_bytes(tampered.read_bytes() + b"\r\nP.S. changed after the review\r\n")
    tampered_id = message_id(tampered.read_bytes())
    injected["message changed after review"] += 1

    # 6. the agent SIGKILLed during the replay, again and again
    with Sink() as sink:
        cmd = [sys.executable, "-m", "spoolsweep", "agent", "run", "--mta", "pickup-dir", "--dir", str(q),
               "--deliver", f"smtp://127.0.0.1:{sink.port}", "--host", HOST, "--state-dir", str(state),
               "--store", str(store), "--public-key", str(store / "keys" / "signing.pub.pem"), "--once",
               "--wait", "1", "--visibility", "1", "--rate", "100"]
        total = len(list(aside.iterdir()))
        at_kill = kill_until_done(cmd, LocalStore(store), receipt_key(INC, HOST, real.instruction_id),
                                  lambda: total - len(list(aside.iterdir())), seed=4, kills=4)
        injected["agent killed mid-replay"] += len(at_kill)
        time.sleep(1.2)
        cli(*cmd[3:])  # drain what is left on the channel (the duplicate, the forged, the expired)
        time.sleep(1.5)
        got = sink.message_ids()
        received = {r.message_id: r for r in sink.received}

    receipts = {p.name: Receipt.model_validate_json(p.read_bytes())
                for p in (store / "receipts" / INC / HOST).glob("*.json")}
    done = receipts[f"{real.instruction_id}.json"]
    refused = [r for r in receipts.values() if r.refused]
    # a forged body's claims never name its receipt: it is filed by digest under receipts/unverified/
    forged_receipts = [Receipt.model_validate_json(p.read_bytes())
                       for p in (store / "receipts" / "unverified" / HOST).glob("*.json")]
    # each fault survived by what the channel, the receipts and the sink show afterwards
    survived["forged instruction"] = sum(r.refused == "bad signature" for r in forged_receipts) \
        if not any("forged-1" == r.instruction_id for r in refused) else 0
    survived["expired instruction"] = sum("expired-1" == r.instruction_id for r in refused)
    refused_changed = [i.outcome.value for i in done.items if "digest mismatch" in (i.detail or "")] == ["refused"]
    # left untouched (not purged) and not replayed
    survived["message changed after review"] = int(refused_changed and tampered.exists() and tampered_id not in got)
    # nothing twice, nothing lost, no spam out, the rest byte for byte
    valid_ids = {k for k, m in truth.items() if m.label == "valid"}
    counts = done.counts()
    whole = (set(got) == valid_ids - {tampered_id} and counts["replayed"] == len(approval.replay) - 1
             and counts["purged"] == len(approval.purge) and sorted(p.name for p in aside.iterdir()) == [tampered.name]
             and all(body_of(received[k].data) == body_of(truth[k].data) for k in got))
    once = set(got.values()) <= {1}
    survived["agent killed mid-replay"] = len(at_kill) if whole and once else 0
    survived["duplicate instruction"] = int(once)  # the instruction sent twice replayed nothing twice
    print("\nfault campaign: injected / survived")
    for k in sorted(injected):
        print(f"  {k:<32} {injected[k]:>3} / {survived[k]}")
    assert survived == injected and len(injected) == 9
