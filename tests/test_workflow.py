"""The triage workflow: its definition is valid and the template's, it runs its steps in order here and on moto.

moto's Step Functions stores the state machine and its executions but cannot run Lambda code without
Docker, so the test plays the service: it reads the definition and the execution's input back from moto
and runs them with adapters/workflow.py's interpreter, each Task calling the step's real handler on S3.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import boto3
import pytest

from adapters import names
from adapters.aws import S3Store
from adapters.runtime import handler_for, invoke, reset_handlers
from adapters.workflow import Interpreter, WorkflowError, definition, lint, path, run_locally, step_of
from functions.provision import provision
from functions.triage_incident import start
from pipeline import queues
from pipeline.manifest_io import ManifestReader
from pipeline.service import incidents as embedded
from pipeline.service.parse import Incoming, ParseOptions, parse_object
from pipeline.service.triage import triage_incident
from pipeline.store import LocalStore

HOST = "mx1"
N, PER_SHARD = 300, 100  # three shards


@pytest.fixture(scope="module")
def small_tar(corpus, tmp_path_factory) -> Path:
    from pipeline.generator import generate, write_canonical

    ham, spam = corpus
    out = tmp_path_factory.mktemp("wf") / "incident.tar.gz"
    write_canonical(generate(ham, spam, n=N, seed=11), out)
    return out


# ---- the definition ------------------------------------------------------------------------------

def test_definition_lints_clean_and_the_lint_sees_what_breaks_it():
    assert lint(definition()) == []
    broken = copy.deepcopy(definition())
    broken["States"]["Decide"]["Next"] = "Nowhere"
    assert "Decide: Next 'Nowhere' is not a state" in lint(broken)
    broken = copy.deepcopy(definition())
    del broken["States"]["Summary"]["End"]
    assert any("exactly one of Next and End" in p for p in lint(broken))
    broken = copy.deepcopy(definition())
    broken["States"]["Facts"]["ItemProcessor"]["ProcessorConfig"]["Mode"] = "WIDE"
    broken["States"]["Verdicts"]["ItemSelector"]["shard.$"] = "Map.Item.Value"
    assert len(lint(broken)) == 2
    broken = copy.deepcopy(definition())
    broken["States"]["Plan"]["Next"] = "Decide"  # Facts is skipped
    assert lint(broken) == ["Facts: not reachable from StartAt"]


@pytest.mark.slow  # cfn-lint loads its schemas: ~10 s
def test_definition_passes_cfn_lints_states_language_schema():
    from cfnlint.api import ManualArgs
    from cfnlint.api import lint as cfn_lint

    def problems(machine: dict) -> list[str]:
        subs = {names.triage_step_resource(s): f"arn:aws:lambda:us-east-1:123456789012:function:{s}"
                for s in names.TRIAGE_STEPS}
        tpl = {"AWSTemplateFormatVersion": "2010-09-09", "Resources": {"M": {
            "Type": "AWS::StepFunctions::StateMachine",
            "Properties": {"RoleArn": "arn:aws:iam::123456789012:role/r", "Definition": machine,
                           "DefinitionSubstitutions": subs}}}}
        return [str(m) for m in cfn_lint(json.dumps(tpl), config=ManualArgs(regions=["us-east-1"]))]

    assert problems(definition()) == []
    broken = copy.deepcopy(definition())
    del broken["States"]["Summary"]["End"]
    assert any("E3601" in p for p in problems(broken))


def test_interpreter_follows_the_definition_and_its_items_path():
    calls: list[tuple[str, str | None]] = []

    def call(function: str, payload: dict) -> dict:
        step = step_of(function)
        calls.append((step, payload.get("shard")))
        return {"shards": ["a", "b", "c"]} if step == "plan" else {"message": step, "count": 7}

    run = Interpreter(call, parallel=2)
    out = run.run(definition(), {"incident": "inc1"})
    assert out == {"incident": "inc1", "plan": {"shards": ["a", "b", "c"]},
                   "summary": {"message": "summary", "count": 7}}
    assert calls[0] == ("plan", None) and calls[-1] == ("summary", None)
    assert sorted(calls[1:4]) == [("facts", "a"), ("facts", "b"), ("facts", "c")]
    assert calls[4] == ("decide", None)
    assert sorted(calls[5:8]) == [("verdicts", "a"), ("verdicts", "b"), ("verdicts", "c")]
    # a wrong items path is an error, not an empty map
    broken = copy.deepcopy(definition())
    broken["States"]["Facts"]["ItemsPath"] = "$.plan.shard"
    with pytest.raises(WorkflowError, match="plan.shard"):
        Interpreter(call).run(broken, {"incident": "inc1"})
    assert path({"a": {"b": 1}}, "$.a.b") == 1 and path({}, "$$.Map.Item.Value", {"Map": {"Item": {"Value": 3}}}) == 3


# ---- on one machine ------------------------------------------------------------------------------

def _parsed(store, small_tar: Path, policy, incident: str, shard_size: int) -> list[str]:
    keys = embedded.upload(store, small_tar, incident, HOST, shard_size=shard_size, policy=policy)
    for k in keys:
        parse_object(store, Incoming(k), policy, ParseOptions())
    return keys


def _settings(root: Path) -> dict[str, object]:
    return {"store": str(root), "log_level": "WARNING", "metrics": False}


def _tampered(small_tar: Path, out: Path) -> tuple[str, str]:
    """small_tar with what a reader must tell: a message whose bytes are not those its index line names, one
    the index does not list, and a line of the index that is no entry. The two messages are valid ones."""
    import io
    import tarfile

    with tarfile.open(small_tar) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()]  # type: ignore[union-attr]
    lines = next(data for m, data in members if m.name == "index.jsonl").decode().splitlines()
    valid = [json.loads(ln)["path"] for ln in lines if b"Subject: Re:" in next(
        data for m, data in members if m.name == json.loads(ln)["path"])][:2]
    assert len(valid) == 2
    index = []
    for ln in lines:
        e = json.loads(ln)
        if e["path"] == valid[1]:
            continue
        if e["path"] == valid[0]:
            e["sha256"] = "0" * 64
        index.append(json.dumps(e))
    index.insert(3, '{"path": 12}')
    with tarfile.open(out, "w:gz") as tf:
        for m, data in members:
            if m.name == "index.jsonl":
                data = ("\n".join(index) + "\n").encode()
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return valid[0], valid[1]


def test_a_snapshot_cut_into_parts_triages_as_it_would_whole(tmp_path, small_tar, policy, policy_file):
    # The upload cuts a big snapshot into parts (as the parse function does with one too big to parse
    # whole). The parts kept each message's bytes and envelope but not what the reader had found wrong
    # with it: a message whose bytes differ from the index, or that the index does not list, came out
    # `valid` from the parts, `review` from the whole; the index's bad line was not told at all, and the
    # manifest named the parts, not the snapshot uploaded.
    snap = tmp_path / "tampered.tar.gz"
    altered, unlisted = _tampered(small_tar, snap)
    stores = {}
    for how, size in (("whole", 0), ("cut", PER_SHARD)):
        store = stores[how] = LocalStore(tmp_path / how)
        embedded.put_policy(store, policy_file.read_bytes())
        keys = _parsed(store, snap, policy, "cut1", size)
        assert len(keys) == (1 if size == 0 else 3)
        triage_incident(store, "cut1", embedded.load_site_policy(store), "test", queues.POLICY_KEY)
    reader = ManifestReader(stores["cut"], "cut1")
    told = {m.path: (m.verdict.value, m.defects) for m in reader.iter_messages() if m.path in (altered, unlisted)}
    assert told[altered][0] == "review" and told[altered][1][0].startswith("sha256 differs from index.jsonl")
    assert told[unlisted] == ("review", ["not listed in index.jsonl: envelope unknown"])
    summary = reader.summary
    assert [d for d in summary.archive_defects if "bad index entry" in d] and summary.snapshot.source == snap.name
    # the same manifest, byte for byte, message parts and summary alike
    base = queues.manifest_key("cut1").rsplit("/", 1)[0] + "/"
    whole, cut = ({k[len(base):]: s.get(k) for k in s.list(base)} for s in (stores["whole"], stores["cut"]))
    assert whole.keys() == cut.keys() and whole == cut


def test_a_second_snapshot_of_the_same_name_is_refused_not_ignored(tmp_path, small_tar, corpus, policy):
    # Uploaded into an incident that already held a snapshot of that name, another snapshot overwrote its objects
    # under incoming/; the parse found them parsed already and went on, so the manifest still described the first
    # one and nothing said so (and parts of another count would have been triaged beside the first's).
    from pipeline.errors import StoreError
    from pipeline.generator import generate, write_canonical

    store = LocalStore(tmp_path / "store")
    keys = embedded.upload(store, small_tar, "re1", HOST, shard_size=PER_SHARD, policy=policy)
    # the same snapshot again (an upload retried): the same objects
    assert embedded.upload(store, small_tar, "re1", HOST, shard_size=PER_SHARD, policy=policy) == keys
    other = write_canonical(generate(*corpus, n=50, seed=12), tmp_path / "other" / small_tar.name)
    before = {k: store.get(k) for k in store.list("incoming/")}
    for size in (PER_SHARD, 30, 0):
        with pytest.raises(StoreError, match="already holds a snapshot of that name from mx1"):
            embedded.upload(store, other, "re1", HOST, shard_size=size, policy=policy)
    assert {k: store.get(k) for k in store.list("incoming/")} == before
    assert len(embedded.upload(store, other, "re2", HOST, shard_size=PER_SHARD, policy=policy)) == 1
    # a whole snapshot the parse cut into parts beside it, uploaded again: put again, not refused
    [whole] = embedded.upload(store, small_tar, "re3", HOST, shard_size=0, policy=policy)
    parse_object(store, Incoming(whole, size=small_tar.stat().st_size), policy,
                 ParseOptions(split_bytes=1, shard_size=PER_SHARD))
    assert len(list(store.list("incoming/re3/"))) == 4
    assert embedded.upload(store, small_tar, "re3", HOST, shard_size=0, policy=policy) == [whole]


def test_an_event_for_an_object_changed_since_it_was_parsed_is_refused(tmp_path, small_tar, corpus, policy):
    # Written over by hand (an `aws s3 cp` past the upload's check), an object already parsed was taken as done:
    # its event found the shard parsed, and triage went on with the old object, nothing said.
    from pipeline.errors import PoisonEvent
    from pipeline.generator import generate, write_canonical

    store = LocalStore(tmp_path / "store")
    other = write_canonical(generate(*corpus, n=50, seed=12), tmp_path / "other" / small_tar.name).read_bytes()
    [key] = embedded.upload(store, small_tar, "ch1", HOST, shard_size=0, policy=policy)
    parse_object(store, Incoming(key), policy, ParseOptions())
    assert parse_object(store, Incoming(key), policy, ParseOptions()).summary.startswith("already parsed")
    store.put(key, other)
    with pytest.raises(PoisonEvent, match="changed after it was parsed"):
        parse_object(store, Incoming(key), policy, ParseOptions())
    # a whole snapshot the parse cuts into parts: the same, once its parts are there
    [key] = embedded.upload(store, small_tar, "ch2", HOST, shard_size=0, policy=policy)
    split = ParseOptions(split_bytes=1, shard_size=PER_SHARD)
    parse_object(store, Incoming(key, size=small_tar.stat().st_size), policy, split)
    parse_object(store, Incoming(key, size=small_tar.stat().st_size), policy, split)  # a duplicate event: done
    store.put(key, other)
    with pytest.raises(PoisonEvent, match="changed after it was cut into parts"):
        parse_object(store, Incoming(key, size=len(other)), policy, split)


def test_a_part_whose_cut_cannot_be_read_is_described_as_itself(tmp_path, small_tar, policy):
    import io
    import tarfile

    import zstandard

    from pipeline.shards import ShardMeta, shard_of

    store = LocalStore(tmp_path / "store")
    key = embedded.upload(store, small_tar, "cut2", HOST, shard_size=PER_SHARD, policy=policy)[0]
    with tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompress(store.get(key), 1 << 28))) as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]  # type: ignore[union-attr]
    meta = json.loads(members[0][1])
    assert members[0][0] == "spoolsweep-snapshot.json" and meta["cut"]["source"] == small_tar.name
    # a hand-made part: its "cut" names no file, and claims a format its `mta` does not
    meta["cut"], meta["mta"] = {"source": 5, "format": "postfix"}, "exim"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in [("spoolsweep-snapshot.json", json.dumps(meta).encode()), *members[1:]]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    store.put(key, zstandard.ZstdCompressor().compress(buf.getvalue()))
    parse_object(store, Incoming(key), policy, ParseOptions())
    shard = shard_of(HOST, key.rsplit("/", 1)[-1]).shard
    m = ShardMeta.model_validate_json(store.get(queues.shard_meta_key("cut2", shard)))
    assert m.snapshot is None and m.source == key and m.format == "canonical"
    assert [d for d in m.defects if d.startswith('spoolsweep-snapshot.json: its "cut" is not readable')]


@pytest.mark.slow
def test_embedded_runs_the_workflow_once_and_resumes_after_a_crash(tmp_path, small_tar, policy, policy_file):
    root = tmp_path / "store"
    store = LocalStore(root)
    embedded.put_policy(store, policy_file.read_bytes())
    keys = _parsed(store, small_tar, policy, "wf1", PER_SHARD)
    assert len(keys) == 3
    first = run_locally(store, "wf1", _settings(root), workers=1)
    done = [(r.step, r.shard) for r in first.steps]
    assert done[0] == ("plan", None) and done[-1] == ("summary", None) and len(done) == 1 + 3 + 1 + 3 + 1
    manifest = store.get(queues.manifest_key("wf1"))
    assert ManifestReader(store, "wf1").summary.totals.messages == N

    # the same incident triaged the old way, in one call, has the same manifest
    other = LocalStore(tmp_path / "other")
    embedded.put_policy(other, policy_file.read_bytes())
    _parsed(other, small_tar, policy, "wf1", PER_SHARD)
    triage_incident(other, "wf1", embedded.load_site_policy(other), "test", queues.POLICY_KEY)
    assert other.get(queues.manifest_key("wf1")) == manifest

    # a crash before the summary: a second run redoes only what was not journaled
    (root / queues.manifest_key("wf1")).unlink()
    (root / queues.workflow_journal_key("wf1", "summary")).unlink()
    (root / queues.workflow_journal_key("wf1", "verdicts", first.output["plan"]["shards"][1])).unlink()
    again = run_locally(store, "wf1", _settings(root), workers=1)
    assert sorted((r.step, r.shard) for r in again.steps if not r.resumed) == sorted(
        [("verdicts", first.output["plan"]["shards"][1]), ("summary", None)])
    assert store.get(queues.manifest_key("wf1")) == manifest


@pytest.mark.slow
def test_fan_in_waits_for_the_last_shard_then_runs_the_workflow_here(tmp_path, small_tar, policy):
    root = tmp_path / "store"
    store = LocalStore(root)
    keys = embedded.upload(store, small_tar, "wf2", HOST, shard_size=PER_SHARD, policy=policy)
    handler = handler_for("triage", _settings(root))
    from adapters.runtime import LocalRunner

    runner = LocalRunner(root, settle=0.0, settings=_settings(root))
    parse_object(store, Incoming(keys[0]), policy, ParseOptions())
    shard = queues.parsed_key("wf2", "mx1." + Path(keys[0]).name.removesuffix(".tar.zst"))
    rec = runner.record("triage", shard, 1, "x")
    assert not invoke("triage", [rec], handler).failed
    assert not store.exists(queues.manifest_key("wf2"))
    for k in keys[1:]:
        parse_object(store, Incoming(k), policy, ParseOptions())
    assert not invoke("triage", [rec], handler).failed
    assert ManifestReader(store, "wf2").summary.totals.messages == N


@pytest.mark.slow  # starts two worker processes
def test_embedded_pool_runs_each_step_in_a_worker_and_measures_it(tmp_path, small_tar, policy):
    import os

    root = tmp_path / "store"
    store = LocalStore(root)
    _parsed(store, small_tar, policy, "wf3", PER_SHARD)
    run = run_locally(store, "wf3", _settings(root), workers=2)
    assert {r.pid for r in run.steps} - {os.getpid()} == {r.pid for r in run.steps}
    assert all(r.peak_rss_mb and r.peak_rss_mb > 20 for r in run.steps)
    assert store.exists(queues.manifest_key("wf3"))


# ---- on moto: the state machine, started once by the last shard ----------------------------------

@pytest.fixture
def aws(moto_url, monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_REGION": "us-east-1", "POWERTOOLS_TRACE_DISABLED": "true",
                 "POWERTOOLS_METRICS_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    prefix = "wf" + uuid.uuid4().hex[:8]
    kw = {"endpoint_url": moto_url, "region_name": "us-east-1"}
    s3, sqs, sfn = boto3.client("s3", **kw), boto3.client("sqs", **kw), boto3.client("stepfunctions", **kw)
    provision(s3, sqs, f"{prefix}-evidence", [HOST], prefix=prefix, visibility=30)
    reset_handlers()
    yield {"s3": s3, "sfn": sfn, "bucket": f"{prefix}-evidence", "prefix": prefix, "url": moto_url}
    reset_handlers()


def _template_definition() -> str:
    from cfnlint.decode import decode

    tpl, problems = decode(str(Path(__file__).resolve().parent.parent / "infra" / "template.yaml"))
    assert not problems
    props = tpl["Resources"]["TriageStateMachine"]["Properties"]
    text = json.dumps(props["Definition"])
    for var, ref in props["DefinitionSubstitutions"].items():
        fn = ref["Fn::GetAtt"][0]
        step = next(s for s in names.TRIAGE_STEPS if names.triage_step_resource(s) == fn)
        text = text.replace(f"${{{var}}}", f"arn:aws:lambda:us-east-1:123456789012:function:"
                                           f"{names.triage_step_function(step)}")
    return text


@pytest.mark.slow  # three shards parsed, five steps on moto
def test_last_shard_starts_the_state_machine_once_and_its_steps_run_in_order(aws, small_tar, policy):
    s3, sfn, bucket, prefix = aws["s3"], aws["sfn"], aws["bucket"], aws["prefix"]
    store = S3Store(bucket, s3)
    arn = sfn.create_state_machine(name=names.state_machine(prefix), definition=_template_definition(),
                                   roleArn="arn:aws:iam::123456789012:role/triage")["stateMachineArn"]
    settings = {"store": f"s3://{bucket}", "endpoint_url": aws["url"], "name_prefix": prefix, "metrics": False,
                "log_level": "WARNING"}
    fan_in = handler_for("triage", {**settings, "state_machine_arn": arn})
    keys = embedded.upload(store, small_tar, "sfn1", HOST, shard_size=PER_SHARD, policy=policy)
    from adapters.runtime import s3_notification, sqs_record

    def event(key: str) -> dict:
        return sqs_record(json.dumps(s3_notification(bucket, key, 1, "e")), "q")

    parse_object(store, Incoming(keys[0]), policy, ParseOptions())
    first_shard = next(store.list(queues.parsed_prefix("sfn1")))
    assert not invoke("triage", [event(first_shard)], fan_in).failed
    assert sfn.list_executions(stateMachineArn=arn)["executions"] == []  # not before the last shard
    for k in keys[1:]:
        parse_object(store, Incoming(k), policy, ParseOptions())
    shards = list(store.list(queues.parsed_prefix("sfn1")))
    # every shard's event, each twice: one execution, under the incident's name
    assert not invoke("triage", [event(k) for k in shards + shards], fan_in).failed
    [execution] = sfn.list_executions(stateMachineArn=arn)["executions"]
    assert execution["name"] == names.execution_name("sfn1")
    # Step Functions answers a start of an open execution with the same name and input with that execution
    assert start(sfn, arn, "sfn1").summary == f"started {execution['executionArn']}"

    # play Step Functions: the stored definition and the execution's input, each Task calling its function
    machine = json.loads(sfn.describe_state_machine(stateMachineArn=arn)["definition"])
    doc = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    handlers: dict = {}
    calls: list[tuple[str, str | None]] = []

    def call(function: str, payload: dict) -> dict:
        step = step_of(function.rsplit(":", 1)[-1])
        calls.append((step, payload.get("shard")))
        import importlib

        h = handlers.get(step) or importlib.import_module(names.TRIAGE_STEPS[step]).handler.configured(**settings)
        handlers[step] = h
        from adapters.runtime import LocalContext

        return h(payload, LocalContext(function_name=names.triage_step_function(step, prefix)))

    out = Interpreter(call, parallel=2).run(machine, doc)
    parsed = sorted(queues.shard_of_parsed_key(k) for k in shards)
    assert [c for c in calls if c[1] is None] == [("plan", None), ("decide", None), ("summary", None)]
    assert sorted(calls[1:4]) == [("facts", s) for s in parsed] and calls[4] == ("decide", None)
    assert sorted(calls[5:8]) == [("verdicts", s) for s in parsed]
    assert out["summary"]["count"] == N
    assert ManifestReader(store, "sfn1").summary.totals.messages == N
    # and a start of a closed one with ExecutionAlreadyExists: never a second run
    sfn.stop_execution(executionArn=execution["executionArn"])
    assert "already started" in start(sfn, arn, "sfn1").summary
    assert len(sfn.list_executions(stateMachineArn=arn)["executions"]) == 1


@pytest.mark.slow  # triages the small incident twice
def test_cli_triage_in_shards_decides_as_in_one_process(tmp_path, small_tar, policy_file):
    from typer.testing import CliRunner

    from spoolsweep.cli import app

    one, sharded = tmp_path / "one", tmp_path / "sharded"
    base = ["triage", str(small_tar), "--policy", str(policy_file), "-q", "--workers", "1"]
    assert CliRunner().invoke(app, [*base, "--out", str(one)]).exit_code == 0
    r = CliRunner().invoke(app, [*base, "--out", str(sharded), "--shard-size", str(PER_SHARD)])
    assert r.exit_code == 0, r.output
    # the messages are the same bytes, part for part; the summary differs only in the host the parts name
    parts = sorted(p.name for p in one.glob("messages-*.parquet"))
    assert parts and parts == sorted(p.name for p in sharded.glob("messages-*.parquet"))
    assert all((one / p).read_bytes() == (sharded / p).read_bytes() for p in parts)
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (one, sharded))
    assert a["totals"]["messages"] == N and "messages" not in b
    assert {k for k in a if a[k] != b[k]} <= {"snapshot"}
    assert {k: v for k, v in a["snapshot"].items() if k != "hosts"} == \
        {k: v for k, v in b["snapshot"].items() if k != "hosts"}
