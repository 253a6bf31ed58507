"""S3/SQS adapters and the functions end to end over HTTP against moto's server mode (or real AWS, if given).

Real AWS: set SPOOLSWEEP_AWS_TEST_BUCKET (an existing bucket of a deployed stack) and AWS credentials;
only the adapter tests run there, under a unique key prefix. moto cannot run Lambda code without
Docker, so SqsRunner plays Lambda's SQS poller: the notifications are real, the handlers are called.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from datetime import UTC, datetime

import boto3
import pytest

from adapters import names
from adapters.aws import S3Store, SqsChannel
from adapters.runtime import SqsRunner, reset_handlers
from functions.provision import provision
from pipeline import queues
from pipeline.errors import StoreError
from pipeline.instructions import Approval, SignedInstruction, verify
from pipeline.manifest_io import read_manifest
from pipeline.service import incidents as embedded

HOST = "mx1"
BUCKET = "spoolsweep-test-evidence"


@pytest.fixture
def aws_env(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def stack(moto_url, aws_env, tmp_path, monkeypatch, policy_file):
    """A fresh bucket and queues on moto (unique name prefix), handlers configured for them."""
    prefix = "ss" + uuid.uuid4().hex[:8]
    bucket = f"{prefix}-evidence"
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
    urls = provision(s3, sqs, bucket, [HOST], prefix=prefix, visibility=30)
    embedded.keys_init(tmp_path)
    env = {"SPOOLSWEEP_STORE": f"s3://{bucket}", "SPOOLSWEEP_CHANNEL": "sqs://", "SPOOLSWEEP_ENDPOINT_URL": moto_url,
           "SPOOLSWEEP_NAME_PREFIX": prefix, "SPOOLSWEEP_SIGNING_KEY_FILE": str(tmp_path / "keys/signing.pem"),
           "SPOOLSWEEP_WORKERS": "1", "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_TRACE_DISABLED": "true"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reset_handlers()
    store = S3Store(bucket, s3)
    embedded.put_policy(store, policy_file.read_bytes())
    yield {"s3": s3, "sqs": sqs, "bucket": bucket, "prefix": prefix, "urls": urls, "store": store,
           "channel": SqsChannel(sqs, prefix=prefix), "keys": tmp_path / "keys"}
    reset_handlers()


def _drain(sqs, url) -> list[dict]:
    out = []
    while msgs := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"]).get("Messages"):
        out += msgs
        for m in msgs:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return out


# --- the adapters, on moto or on a real bucket ----------------------------------------------------

@pytest.fixture(params=["moto", "aws"])
def adapter_store(request, moto_url, monkeypatch):
    if request.param == "aws":
        bucket = os.environ.get("SPOOLSWEEP_AWS_TEST_BUCKET")
        if not bucket:
            pytest.skip("no SPOOLSWEEP_AWS_TEST_BUCKET: real-AWS run skipped")
        return S3Store(bucket, boto3.client("s3")), f"spoolsweep-test/{uuid.uuid4().hex}/"
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(k, "testing")
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    bucket = "adapters-" + uuid.uuid4().hex[:8]
    s3.create_bucket(Bucket=bucket)
    return S3Store(bucket, s3), "state/t/"


def test_s3_store_port(adapter_store):
    store, base = adapter_store
    store.put(base + "a/1.json", b"one")
    store.put(base + "a/2 x+y.json", b"two")
    assert store.get(base + "a/1.json") == b"one"
    assert store.exists(base + "a/2 x+y.json") and not store.exists(base + "a/3.json")
    assert sorted(store.list(base + "a/")) == [base + "a/1.json", base + "a/2 x+y.json"]
    assert store.put_if_absent(base + "claim", b"me") is True
    assert store.put_if_absent(base + "claim", b"you") is False
    assert store.get(base + "claim") == b"me"
    with pytest.raises(StoreError, match="no object"):
        store.get(base + "missing")


def test_sqs_channel_port(stack):
    ch = stack["channel"]
    ch.send(HOST, '{"n": 1}', dedup_id="i1")
    ch.send(HOST, '{"n": 1}', dedup_id="i1")  # FIFO deduplication: a resend is not a second message
    ch.send(HOST, '{"n": 2}', dedup_id="i2")
    got = ch.receive(HOST, max_messages=10)
    assert [m.body for m in got] == ['{"n": 1}', '{"n": 2}']
    for m in got:
        ch.delete(HOST, m.receipt)
    assert ch.receive(HOST) == []
    with pytest.raises(StoreError, match="no instruction queue"):
        ch.send("unknown-host", "{}", dedup_id="x")


def test_s3_notifications_land_in_the_step_queues(stack):
    s3, sqs, urls = stack["s3"], stack["sqs"], stack["urls"]
    s3.put_object(Bucket=stack["bucket"], Key="incoming/inc 1/mx1/snap.tar", Body=b"x")
    s3.put_object(Bucket=stack["bucket"], Key="receipts/inc/mx1/r.json", Body=b"{}")  # no step listens here
    bodies = [json.loads(m["Body"]) for m in _drain(sqs, urls["parse"])]
    assert any(b.get("Event") == "s3:TestEvent" for b in bodies)
    [rec] = [r for b in bodies for r in b.get("Records", [])]
    assert rec["s3"]["object"]["key"] != "incoming/inc 1/mx1/snap.tar"  # moto encodes it...
    from urllib.parse import unquote_plus

    assert unquote_plus(rec["s3"]["object"]["key"]) == "incoming/inc 1/mx1/snap.tar"  # ...and we decode it
    others = [json.loads(m["Body"]) for s in ("triage", "blocklist", "dispatch") for m in _drain(sqs, urls[s])]
    assert others and all(b.get("Event") == "s3:TestEvent" for b in others)


def test_poison_message_is_redriven_to_the_dlq(stack):
    sqs = stack["sqs"]
    runner = SqsRunner(sqs, prefix=stack["prefix"])
    _drain(sqs, stack["urls"]["parse"])
    sqs.send_message(QueueUrl=stack["urls"]["parse"], MessageBody="not json at all")
    runner.run_until_idle(quiet_rounds=2)
    dlq = sqs.get_queue_url(QueueName=names.dead_letter_queue("parse", stack["prefix"]))["QueueUrl"]
    assert [m["Body"] for m in _drain(sqs, dlq)] == ["not json at all"]


# --- end to end -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_end_to_end_sharded_with_duplicates_and_reordering(stack, incident_tar, policy):
    s3, sqs, store, prefix = stack["s3"], stack["sqs"], stack["store"], stack["prefix"]
    runner = SqsRunner(sqs, prefix=prefix)
    keys = embedded.upload(store, incident_tar, "e2e", HOST, shard_size=400, policy=policy)
    assert len(keys) == 4

    # the parse queue, reordered, with every notification delivered twice
    batch = runner.poll("parse") + runner.poll("parse")
    batch = [r for r in batch if "Records" in json.loads(r["body"])] + \
            [r for r in batch if "Records" not in json.loads(r["body"])]
    assert len([r for r in batch if "Records" in json.loads(r["body"])]) == 4
    random.seed(5)
    random.shuffle(batch)
    twins = [r | {"messageId": r["messageId"] + "-dup"} for r in batch]
    out = runner.deliver("parse", batch)
    assert not out.failed
    from adapters.runtime import invoke

    assert not invoke("parse", twins).failed  # duplicates: already parsed, same objects

    # triage events also arrive twice: replay each body onto the queue again
    for m in runner.poll("triage") + runner.poll("triage"):
        sqs.send_message(QueueUrl=runner.urls["triage"], MessageBody=m["body"])
        sqs.change_message_visibility(QueueUrl=runner.urls["triage"], ReceiptHandle=m["receiptHandle"],
                                      VisibilityTimeout=0)
    runner.run_until_idle(quiet_rounds=2)
    manifest = read_manifest(store, "e2e")
    assert manifest.totals.messages == 1500 and manifest.snapshot.hosts == [HOST]
    assert store.exists(queues.blocklist_key("e2e"))
    versions = s3.list_object_versions(Bucket=stack["bucket"], Prefix=queues.manifest_key("e2e"))["Versions"]
    assert len(versions) == 1  # triage ran once although every shard event came at least twice

    key, _, _ = embedded.approve(store, "e2e", by="alice")
    approval = Approval.model_validate_json(store.get(key))
    # the approval's notification, plus a duplicate of it
    runner.run_until_idle(quiet_rounds=2)
    rec = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                        "s3": {"bucket": {"name": stack["bucket"]}, "object": {"key": key}}}]}
    sqs.send_message(QueueUrl=runner.urls["dispatch"], MessageBody=json.dumps(rec))
    runner.run_until_idle(quiet_rounds=2)

    msgs = _drain(sqs, stack["urls"][f"host:{HOST}"])
    copies = list(store.list(f"{queues.INSTRUCTIONS}/{HOST}/"))
    assert len(msgs) == len(copies) >= 2, "one SQS message per part; the duplicate dispatch added none"
    pub = (stack["keys"] / "signing.pub.pem").read_bytes()
    parts = [verify(SignedInstruction.model_validate_json(m["Body"]), pub, HOST, datetime.now(UTC)) for m in msgs]
    assert all(len(m["Body"]) < 256 * 1024 for m in msgs)
    assert {p.incident for p in parts} == {"e2e"} and {p.approval_id for p in parts} == {approval.approval_id}
    replay = [m.id for p in parts for m in p.replay]
    purge = [m.id for p in parts for m in p.purge]
    assert sorted(replay) == sorted(m.id for m in approval.replay) and len(set(replay)) == len(replay)
    assert sorted(purge) == sorted(m.id for m in approval.purge) and len(set(purge)) == len(purge)
    dlqs = [sqs.get_queue_url(QueueName=names.dead_letter_queue(s, prefix))["QueueUrl"] for s in names.STEPS]
    assert all(_drain(sqs, u) == [] for u in dlqs)


@pytest.mark.slow
def test_cli_drives_the_stack_queues_like_localstack(stack, tmp_path, policy_file):
    """`spoolsweep upload/up/approve --store s3://...`: the LocalStack path, here against moto over HTTP."""
    import subprocess
    import sys
    from pathlib import Path

    from pipeline.generator import find_corpus, generate, load_corpus, write_canonical

    root = Path(__file__).resolve().parent.parent
    snap = tmp_path / "snap.tar.gz"
    write_canonical(generate(*load_corpus(find_corpus()), n=300, seed=2), snap)
    env = {**os.environ, "PYTHONPATH": str(root)}
    store = f"s3://{stack['bucket']}"

    def cli(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "spoolsweep", *args, "--store", store], cwd=root, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    cli("upload", str(snap), "--incident", "cli2", "--host", HOST, "--shard-size", "100")
    cli("up", "--once", "--step", "parse")
    assert list(stack["store"].list("parsed/cli2/")) and not stack["store"].exists(queues.manifest_key("cli2"))
    out = cli("up", "--once")
    assert stack["store"].exists(queues.manifest_key("cli2")), out
    assert "approved" in cli("approve", "cli2", "--by", "erin")
    cli("up", "--once")
    msgs = _drain(stack["sqs"], stack["urls"][f"host:{HOST}"])
    assert msgs and all(SignedInstruction.model_validate_json(m["Body"]) for m in msgs)
