"""The handlers fed AWS-shaped events on the embedded default: duplicates, reordering, poison, fan-in, restarts."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from adapters import names
from adapters.bootstrap import embedded_settings
from adapters.runtime import LocalRunner, invoke, reset_handlers, s3_notification, sqs_record
from functions.errors import PoisonEvent, SettingsError
from functions.events import objects_in
from functions.settings import DispatchSettings, load
from pipeline import queues
from pipeline.instructions import Approval, SignedInstruction, verify
from pipeline.manifest_io import read_manifest
from pipeline.service import incidents as embedded
from pipeline.shards import missing, parse_shard, shard_of
from pipeline.store import LocalChannel, LocalStore

EVENTS = Path(__file__).parent / "events"
ROOT = Path(__file__).resolve().parent.parent


def _event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture
def home(tmp_path, monkeypatch, policy_file):
    """A fresh embedded default: store dir, keys, policy; the handlers' environment set as Lambda's would be."""
    for k in ("SPOOLSWEEP_STORE", "SPOOLSWEEP_CHANNEL", "SPOOLSWEEP_ENDPOINT_URL", "SPOOLSWEEP_SIGNING_KEY_SECRET"):
        monkeypatch.delenv(k, raising=False)
    root = tmp_path / "home"
    embedded.keys_init(root)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    for k, v in embedded_settings(root, workers=1).items():
        monkeypatch.setenv(f"SPOOLSWEEP_{k.upper()}", str(v))
    reset_handlers()
    embedded.put_policy(LocalStore(root), policy_file.read_bytes())
    yield root
    for k in ("SPOOLSWEEP_STORE", "SPOOLSWEEP_CHANNEL", "SPOOLSWEEP_SIGNING_KEY_FILE", "SPOOLSWEEP_WORKERS"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="module")
def small_incident(corpus, tmp_path_factory):
    from pipeline.generator import generate, write_canonical

    ham, spam = corpus
    out = tmp_path_factory.mktemp("small") / "small.tar.gz"
    write_canonical(generate(ham, spam, n=600, seed=11), out)
    return out


# --- event shapes -------------------------------------------------------------------------------

def test_aws_and_moto_shapes_name_the_same_key():
    aws = objects_in(SQSRecord(_event("aws_sqs_s3_put.json")["Records"][0]))
    moto = objects_in(SQSRecord(_event("moto_sqs_s3_put.json")["Records"][0]))
    assert [o.key for o in aws] == [o.key for o in moto] == [
        "incoming/INC-2026-11/mx1.example.org/snapshot.part-0001-of-0002.tar.zst"]
    assert aws[0].size == 1024 and moto[0].etag == "c4ca4238a0b923820dcc509a6f75849b"


def test_test_event_is_skipped_and_junk_is_poison():
    assert objects_in(SQSRecord(_event("aws_sqs_s3_test_event.json")["Records"][0])) == []
    with pytest.raises(PoisonEvent, match="not JSON"):
        objects_in(SQSRecord(sqs_record("{nope", "q")))
    with pytest.raises(PoisonEvent, match="no Records"):
        objects_in(SQSRecord(sqs_record('{"hello": 1}', "q")))


def test_keys_are_decoded_with_unquote_plus():
    body = s3_notification("b", "incoming/a b/c+d/e f.tar", 1, "x")
    assert body["Records"][0]["s3"]["object"]["key"] == "incoming/a+b/c%2Bd/e+f.tar"
    assert objects_in(SQSRecord(sqs_record(json.dumps(body), "q")))[0].key == "incoming/a b/c+d/e f.tar"


def test_shard_names_and_fan_in_arithmetic():
    assert shard_of("mx1", "snap.part-0002-of-0003.tar.zst") == parse_shard("mx1.snap.part-0002-of-0003")
    assert parse_shard("mx1.snap.part-0002-of-0003").parts == 3
    assert parse_shard("mx1.whole").parts == 1
    assert missing(["mx1.whole"]) == []
    assert missing(["h.s.part-0003-of-0003", "h.s.part-0001-of-0003"]) == ["h.s.part-0002-of-0003"]


def test_settings_are_validated(monkeypatch, tmp_path):
    monkeypatch.delenv("SPOOLSWEEP_STORE", raising=False)
    with pytest.raises(SettingsError, match="SPOOLSWEEP_STORE"):
        load(DispatchSettings)
    monkeypatch.setenv("SPOOLSWEEP_STORE", str(tmp_path))
    monkeypatch.setenv("SPOOLSWEEP_TTL_HOURS", "-1")
    with pytest.raises(SettingsError, match="TTL_HOURS"):
        load(DispatchSettings)


# --- the handlers on the embedded default ---------------------------------------------------------

def _rec(root: Path, key: str, mid: str | None = None) -> dict:
    p = root / key
    body = json.dumps(s3_notification("spoolsweep-local", key, p.stat().st_size, "e"))
    return sqs_record(body, "q", message_id=mid)


@pytest.mark.slow
def test_captured_aws_event_drives_the_parse_handler(home, small_incident):
    store = LocalStore(home)
    key = "incoming/INC-2026-11/mx1.example.org/snapshot.part-0001-of-0002.tar.zst"
    store.put(key, small_incident.read_bytes())
    event = _event("aws_sqs_s3_put.json")
    out = invoke("parse", event["Records"])
    assert out.done == [event["Records"][0]["messageId"]], out.failed
    parsed = queues.parsed_key("INC-2026-11", "mx1.example.org.snapshot.part-0001-of-0002")
    first = (home / parsed).read_bytes()
    # the same event again (at-least-once) leaves the same bytes, and moto's shape is accepted too
    assert invoke("parse", _event("moto_sqs_s3_put.json")["Records"]).done
    assert (home / parsed).read_bytes() == first
    # one of two parts: triage waits
    assert invoke("triage", [_rec(home, parsed)]).done
    assert not store.exists(queues.manifest_key("INC-2026-11"))


@pytest.mark.slow
def test_poison_is_reported_per_record_and_dead_lettered(home, small_incident):
    store = LocalStore(home)
    good = queues.incoming_key("inc", "mx1", "small.tar.gz")
    store.put(good, small_incident.read_bytes())
    bad = sqs_record('{"Records": "oops"}', "q", message_id="bad-1")
    out = invoke("parse", [bad, _rec(home, good, "good-1")])
    assert out.done == ["good-1"] and "bad-1" in out.failed and "Records" in out.failed["bad-1"]
    runner = LocalRunner(home, settle=0)
    for _ in range(names.MAX_RECEIVES):
        runner.deliver("parse", [bad])
    [dead] = runner.dead()
    assert dead["step"] == "parse" and "PoisonEvent" in dead["reason"] and dead["record"]["messageId"] == "bad-1"


def test_unreadable_snapshot_is_kept_and_named(home):
    store = LocalStore(home)
    key = queues.incoming_key("broken", "mx1", "snap.tar.gz")
    store.put(key, b"this is not a tarball")
    runner = LocalRunner(home, settle=0)
    runner.run_until_idle()
    m = read_manifest(store, "broken")
    assert m.totals.messages == 0 and any("snap.tar.gz" in d for d in m.archive_defects)
    assert store.exists(key) and store.exists("corrupt/broken/mx1.snap.json")


def test_up_says_what_a_manifest_holds_and_what_could_not_be_read(tmp_path):
    # `up --once` printed "ok" for each step of a snapshot that is no archive, and nothing else: the admin saw
    # three ok lines for an incident whose manifest holds no message.
    store = LocalStore(tmp_path / "data")
    store.put(queues.incoming_key("broken", "mx1", "snap.tar.gz"), b"this is not a tarball")
    r = subprocess.run([sys.executable, "-m", "spoolsweep", "up", "--once", "--store", str(tmp_path / "data")],
                       cwd=ROOT, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
                                      "COLUMNS": "80"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln.strip() for ln in r.stdout.splitlines()]
    at = lines.index("blocklist manifests/broken/manifest.json  ok")
    assert lines[at + 1] == "broken: 0 messages, valid 0, spam 0, review 0"
    assert lines[at + 2].startswith("archive: incoming/broken/mx1/snap.tar.gz: The snapshot cannot be read: ")
    assert lines[at + 2].endswith("snap.tar.gz: not a tar archive (truncated header)")


@pytest.mark.slow
def test_sharded_duplicated_reordered_and_concurrent_events_give_one_manifest(home, small_incident, policy):
    from pipeline.triage import triage

    store = LocalStore(home)
    keys = embedded.upload(store, small_incident, "inc7", "mx1", shard_size=150, policy=policy)
    assert len(keys) == 4
    random.seed(3)
    for k in random.sample(keys, len(keys)) + keys[:2]:  # reordered and duplicated
        assert invoke("parse", [_rec(home, k)]).done
    parsed = sorted(str(p.relative_to(home)) for p in (home / "parsed/inc7").iterdir())
    events = [_rec(home, k, f"m{i}") for i, k in enumerate(parsed * 2)]
    random.shuffle(events)
    assert not invoke("triage", events).failed  # one batch: duplicated and reordered
    # racing invocations (separate Lambda containers) on the write-once claim: exactly one triages
    from pipeline.service.triage import triage_incident

    (home / queues.manifest_key("inc7")).unlink()
    # the handler ran the workflow (its steps journaled, no claim); a direct triage_incident claims
    assert not (home / "state/inc7/triage.claim").exists()
    results: list[str] = []
    threads = [threading.Thread(target=lambda i=i: results.append(triage_incident(store, "inc7", policy, f"c{i}")
                                                                  .summary)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum("messages from 4 shard(s)" in r for r in results) == 1, results
    assert all(r.startswith(("skipped: triage already claimed", "already triaged")) for r in results
               if "messages from" not in r), results
    assert (home / "state/inc7/triage.claim").exists()
    m = read_manifest(store, "inc7")
    whole = triage(small_incident, policy, workers=1)
    assert m.totals == whole.totals
    assert {x.id: x.verdict for x in m.messages} == {x.id: x.verdict for x in whole.messages}


@pytest.mark.slow
def test_a_big_whole_snapshot_is_split_by_the_parse_step(home, small_incident, policy, monkeypatch):
    from pipeline.triage import triage

    monkeypatch.setenv("SPOOLSWEEP_SPLIT_BYTES", "1000")
    monkeypatch.setenv("SPOOLSWEEP_SHARD_SIZE", "200")
    reset_handlers()
    store = LocalStore(home)
    [whole] = embedded.upload(store, small_incident, "big", "mx1", shard_size=0)  # as the agent uploads it
    runner = LocalRunner(home, settle=0)
    runner.run_until_idle()
    assert not runner.dead()
    incoming = sorted(store.list("incoming/big/mx1/"))
    assert whole in incoming and len(incoming) == 4  # the evidence, and its three parts
    assert sorted(store.list("parsed/big/")) == [
        f"parsed/big/mx1.small.part-000{i}-of-0003.parquet" for i in (1, 2, 3)]
    m = read_manifest(store, "big")
    assert {x.id: x.verdict for x in m.messages} == {x.id: x.verdict for x in triage(small_incident, policy,
                                                                                      workers=1).messages}
    # a duplicate of the whole snapshot's event writes no new part and parses nothing twice
    rec = _rec(home, whole, "again")
    assert not invoke("parse", [rec]).failed
    assert sorted(store.list("incoming/big/mx1/")) == incoming


@pytest.mark.slow
def test_triage_claimant_retry_completes_after_a_crash(home, small_incident, policy):
    from pipeline.queues import claim_key
    from pipeline.service.triage import triage_incident

    store = LocalStore(home)
    embedded.upload(store, small_incident, "inc8", "mx1", shard_size=0)
    LocalRunner(home, settle=0).run_until_idle()
    store_manifest = home / queues.manifest_key("inc8")
    # simulate: a claimant of triage_incident died after claiming, before writing the manifest
    claimant = "claimant-that-died"
    assert store.put_if_absent(claim_key("inc8"), claimant.encode())
    store_manifest.unlink()
    assert triage_incident(store, "inc8", policy, "someone-else").summary.startswith("skipped")
    assert not store_manifest.exists()
    assert "messages" in triage_incident(store, "inc8", policy, claimant).summary
    assert store_manifest.exists()


@pytest.mark.slow
def test_approve_dispatch_signs_once_and_verifies(home, small_incident, policy):
    store = LocalStore(home)
    embedded.upload(store, small_incident, "inc9", "mx1", shard_size=200, policy=policy)
    runner = LocalRunner(home, settle=0)
    runner.run_until_idle()
    assert store.exists(queues.blocklist_key("inc9"))
    key, _, new = embedded.approve(store, "inc9", by="alice")
    approval = Approval.model_validate_json(store.get(key))
    assert new and not embedded.approve(store, "inc9", by="alice")[2]  # immutable, same id
    runner.run_until_idle()
    dup = sqs_record(json.dumps(s3_notification("b", key, 1, "e")), "q")
    assert invoke("dispatch", [dup, dup | {"messageId": "again"}]).done  # duplicates re-send the same copy
    channel = LocalChannel(home / "channel")
    msgs = channel.receive("mx1", max_messages=10)
    copies = sorted(store.list("instructions/mx1/"))
    assert len(msgs) == len(copies) == 2  # 600 messages: over one SQS message's 256 KiB
    pub = (home / "keys/signing.pub.pem").read_bytes()
    parts = [verify(SignedInstruction.model_validate_json(m.body), pub, "mx1", datetime.now(UTC)) for m in msgs]
    replay = {m.id for p in parts for m in p.replay}
    assert replay == {m.id for m in approval.replay} and {m.id for p in parts for m in p.purge}
    assert not replay & {m.id for m in approval.hold}
    assert sorted(store.get(k) for k in copies) == sorted(m.body.encode() for m in msgs)


@pytest.mark.slow
def test_big_approvals_are_split_into_signed_parts_that_fit_sqs(home, small_incident):
    from pipeline.service.dispatch import dispatch

    store = LocalStore(home)
    embedded.upload(store, small_incident, "inc12", "mx1", shard_size=0)
    LocalRunner(home, settle=0).run_until_idle()
    key, _, _ = embedded.approve(store, "inc12", by="dave")
    approval = Approval.model_validate_json(store.get(key))
    channel = LocalChannel(home / "channel")
    pem = (home / "keys/signing.pem").read_bytes()
    results = {dispatch(store, channel, key, pem, "k1", budget=40_000).summary for _ in range(2)}  # 2nd: a duplicate
    [result] = results
    n = int(result.split(" in ")[1].split(" part")[0])
    msgs = channel.receive("mx1", max_messages=100)
    assert n >= 5 and len(msgs) == n
    assert all(30_000 < len(m.body) <= 40_000 for m in msgs[:-1]), [len(m.body) for m in msgs]
    pub = (home / "keys/signing.pub.pem").read_bytes()
    parts = [verify(SignedInstruction.model_validate_json(m.body), pub, "mx1", datetime.now(UTC)) for m in msgs]
    assert len({p.instruction_id for p in parts}) == len(parts)
    assert sorted(m.id for p in parts for m in p.replay) == sorted(m.id for m in approval.replay)
    assert sorted(m.id for p in parts for m in p.purge) == sorted(m.id for m in approval.purge)


@pytest.mark.slow
def test_dispatch_refuses_an_approval_of_another_manifest(home, small_incident):
    store = LocalStore(home)
    embedded.upload(store, small_incident, "inc10", "mx1", shard_size=0)
    runner = LocalRunner(home, settle=0)
    runner.run_until_idle()
    key, _, _ = embedded.approve(store, "inc10", by="bob")
    mkey = queues.manifest_key("inc10")
    store.put(mkey, store.get(mkey) + b" ")  # the manifest changed after review
    runner.max_receives = 1
    runner.run_until_idle()
    [dead] = runner.dead()
    assert dead["step"] == "dispatch" and "other than" in dead["reason"]
    assert LocalChannel(home / "channel").receive("mx1") == []


@pytest.mark.slow
def test_runner_resumes_after_restart(home, small_incident):
    store = LocalStore(home)
    embedded.upload(store, small_incident, "inc11", "mx1", shard_size=300)
    first = LocalRunner(home, settle=0)
    mine = [first.record(s, k, n, e) for s, k, n, e in first.pending() if s == "parse"]
    first.deliver("parse", mine[:1])  # then the process dies
    second = LocalRunner(home, settle=0)
    assert [k for s, k, _, _ in second.pending() if s == "parse"] == [json.loads(r["body"])["Records"][0]["s3"][
        "object"]["key"] for r in mine[1:]]
    second.run_until_idle()
    assert store.exists(queues.manifest_key("inc11"))
    assert LocalRunner(home, settle=0).pending() == []


@pytest.mark.slow
def test_cli_upload_up_approve(tmp_path, small_incident, policy_file):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    store = str(tmp_path / "data")

    def cli(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "spoolsweep", *args, "--store", store], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert "part-0002-of-0002" in cli("upload", str(small_incident), "--incident", "cli1", "--host", "mx1",
                                      "--shard-size", "300")
    out = cli("up", "--once", "--policy", str(policy_file))
    assert "manifests/cli1/manifest.json  ok" in out
    out = cli("approve", "cli1", "--by", "carol")
    assert out.startswith("approved: approvals/cli1/") and "by carol" in out
    assert "dispatch" in cli("up", "--once")
    assert len(list((tmp_path / "data/channel/mx1").glob("*.msg"))) == len(
        list((tmp_path / "data/instructions/mx1").glob("*.json"))) >= 1


@pytest.mark.slow
def test_logs_and_metrics_are_powertools_json(tmp_path):
    """Run a handler as Lambda would (a fresh process) and read what it prints: JSON logs and EMF metrics."""
    code = ("from adapters.runtime import invoke, sqs_record; "
            "print('OUTCOME', invoke('parse', [sqs_record('not json', 'q', message_id='p-1')]).failed)")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "SPOOLSWEEP_STORE": str(tmp_path),
           "POWERTOOLS_METRICS_DISABLED": "false", "POWERTOOLS_TRACE_DISABLED": "true"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    log = next(x for x in lines if x.get("message", "").startswith("poison event"))
    assert log["service"] == "spoolsweep-parse" and log["message_id"] == "p-1" and "not JSON" in log["reason"]
    assert log["function_name"] == names.function_name("parse") and log["level"] == "ERROR"
    emf = next(x for x in lines if "_aws" in x)
    assert emf["PoisonEvents"] == [1.0] and emf["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "spoolsweep"
    assert "OUTCOME {'p-1': 'PoisonEvent:" in r.stdout


@pytest.mark.slow
def test_a_handler_that_dies_half_way_is_retried_and_completes(home, small_incident, monkeypatch):
    """Crash parse after its shard metadata, and dispatch after signing but before sending: retries finish."""
    from functions import dispatch_approval, parse_snapshot

    store = LocalStore(home)
    [key] = embedded.upload(store, small_incident, "crash", "mx1", shard_size=0)

    class Dies(LocalStore):
        armed = True

        def put(self, k: str, data: bytes) -> None:
            if self.armed and k.startswith(("parsed/", "instructions/")):
                Dies.armed = False
                raise OSError("killed")
            super().put(k, data)

        def put_if_absent(self, k: str, data: bytes) -> bool:
            ok = super().put_if_absent(k, data)
            if self.armed and k.startswith("instructions/"):
                Dies.armed = False
                raise OSError("killed after the write-once copy, before the send")
            return ok

    monkeypatch.setattr(parse_snapshot, "build_store", lambda url, cloud: Dies(home))
    parse_snapshot.handler.reset()
    rec = _rec(home, key, "p1")
    assert "killed" in invoke("parse", [rec]).failed["p1"]
    assert not store.exists("parsed/crash/mx1.small.parquet")
    assert invoke("parse", [rec]).done == ["p1"]
    LocalRunner(home, settle=0).run_until_idle()
    akey = embedded.approve(store, "crash", by="fay").key

    Dies.armed = True
    monkeypatch.setattr(dispatch_approval, "build_store", lambda url, cloud: Dies(home))
    dispatch_approval.handler.reset()
    arec = _rec(home, akey, "d1")
    assert "killed" in invoke("dispatch", [arec]).failed["d1"]
    channel = LocalChannel(home / "channel")
    assert channel.receive("mx1") == []
    assert invoke("dispatch", [arec]).done == ["d1"]
    msgs = channel.receive("mx1", max_messages=50)
    copies = sorted(store.list("instructions/mx1/"))
    assert len(msgs) == len(copies) >= 1
    assert sorted(m.body.encode() for m in msgs) == sorted(store.get(k) for k in copies)
    assert sum(len(SignedInstruction.model_validate_json(m.body).payload) for m in msgs) > 0
