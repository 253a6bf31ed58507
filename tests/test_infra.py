"""infra/ and localstack/ stay in lockstep with adapters/names.py, and the SAM template lints clean."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import boto3
import pytest

from adapters import names
from tests.support.moto import moto_server

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "infra" / "template.yaml"
SCRIPT = ROOT / "localstack" / "init" / "ready.d" / "10-spoolsweep.sh"
STEP_RESOURCE = {"parse": "Parse", "triage": "Triage", "blocklist": "Blocklist", "dispatch": "Dispatch"}
# the triage workflow's step functions, invoked by the state machine (not by a queue)
WORKFLOW_RESOURCE = {f"triage-{s}": names.triage_step_resource(s).removesuffix("Function") for s in names.TRIAGE_STEPS}


@pytest.fixture(scope="module")
def template() -> dict:
    from cfnlint.decode import decode

    tpl, problems = decode(str(TEMPLATE))
    assert not problems, problems
    return tpl


def _sub(value, params: dict[str, str]) -> str:
    """Resolve a !Sub of parameters only (the names do not depend on account or region)."""
    text = value["Fn::Sub"] if isinstance(value, dict) else value
    return re.sub(r"\$\{(\w+)\}", lambda m: params[m.group(1)], text)


def _params(tpl: dict) -> dict[str, str]:
    return {k: str(v.get("Default", "")) for k, v in tpl["Parameters"].items()}


@pytest.mark.slow
def test_cfn_lint_is_clean():
    exe = shutil.which("cfn-lint")
    if exe is None:
        pytest.skip("cfn-lint not installed")
    r = subprocess.run([exe, str(TEMPLATE)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_checkov_is_clean_with_justified_skips():
    exe = shutil.which("checkov") or os.environ.get("CHECKOV")
    if not exe:
        pytest.skip("checkov not installed (pip install checkov; or CHECKOV=/path/to/checkov)")
    r = subprocess.run([exe, "-f", str(TEMPLATE), "--framework", "cloudformation", "--compact", "--quiet",
                        "--skip-download"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:]
    skips = re.findall(r"- id: (CKV\S+)\n\s+comment: (\S.{20,})", TEMPLATE.read_text())
    assert skips and all(len(why) > 20 for _, why in skips)


def test_template_names_match_functions_names(template):
    res, p = template["Resources"], _params(template)
    assert p["NamePrefix"] == names.PREFIX
    for step, title in STEP_RESOURCE.items():
        props = res[f"{title}Events"]["Properties"]
        assert _sub(props["QueueName"], p) == names.event_queue(step)
        assert _sub(res[f"{title}DLQ"]["Properties"]["QueueName"], p) == names.dead_letter_queue(step)
        assert props["RedrivePolicy"]["maxReceiveCount"] == names.MAX_RECEIVES
        fn = res[f"{title}Function"]["Properties"]
        assert _sub(fn["FunctionName"], p) == names.function_name(step)
        assert fn["ImageConfig"]["Command"] == [names.STEPS[step][1] + ".handler"]
        [event] = fn["Events"].values()
        assert event["Properties"]["Queue"] == {"Fn::GetAtt": [f"{title}Events", "Arn"]}
        assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    host = p["AgentHost"]
    assert _sub(res["InstructionQueue"]["Properties"]["QueueName"], p) == names.instruction_queue(host)
    assert _sub(res["InstructionDLQ"]["Properties"]["QueueName"], p) == names.instruction_dlq(host)


def test_notifications_route_each_prefix_to_its_step(template):
    configs = template["Resources"]["EvidenceBucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    routed = {c["Filter"]["S3Key"]["Rules"][0]["Value"]: c["Queue"]["Fn::GetAtt"][0] for c in configs}
    assert routed == {f"{prefix}/": f"{STEP_RESOURCE[step]}Events" for step, (prefix, _) in names.STEPS.items()}


def test_bucket_is_locked_down(template):
    b = template["Resources"]["EvidenceBucket"]["Properties"]
    assert b["VersioningConfiguration"]["Status"] == "Enabled"
    assert all(b["PublicAccessBlockConfiguration"].values())
    assert b["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"][
        "SSEAlgorithm"] == "aws:kms"
    expiring = {r.get("Prefix") for r in b["LifecycleConfiguration"]["Rules"] if "ExpirationInDays" in r}
    assert expiring == {"parsed/", "state/", "blocklists/"}  # never incoming/, manifests/ or approvals/
    stmts = template["Resources"]["EvidenceBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert any(s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false"
               for s in stmts if "Condition" in s)


def _table() -> dict[str, tuple[set[str], set[str]]]:
    rows = {}
    for line in (ROOT / "infra" / "permissions.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and (cells[0] in STEP_RESOURCE or cells[0] in WORKFLOW_RESOURCE):
            grab = lambda c: set(re.findall(r"`([^`]+)`", c))  # noqa: E731
            rows[cells[0]] = (grab(cells[2]), grab(cells[3]))
    return rows


def test_function_grants_are_the_permissions_table(template):
    table = _table()
    assert set(table) == set(STEP_RESOURCE) | set(WORKFLOW_RESOURCE)
    for step, title in {**STEP_RESOURCE, **WORKFLOW_RESOURCE}.items():
        stmts = template["Resources"][f"{title}Function"]["Properties"]["Policies"][0]["Statement"]
        grants: dict[str, set[str]] = {"s3:GetObject": set(), "s3:PutObject": set()}
        for s in stmts:
            if isinstance(s["Action"], str) and s["Action"] in grants:
                res = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
                grants[s["Action"]] |= {r["Fn::Sub"].split("}/", 1)[1] for r in res}
            else:
                assert "s3:PutObject" not in str(s["Action"]) and "s3:*" not in str(s["Action"])
        assert grants["s3:GetObject"] == table[step][0], step
        assert grants["s3:PutObject"] == table[step][1], step


@pytest.mark.slow  # the init script runs the aws CLI a few dozen times
def test_localstack_init_creates_what_the_functions_expect(tmp_path, policy_file):
    """Run the LocalStack init script for real, with `awslocal` pointed at a moto server."""
    if shutil.which("aws") is None:
        pytest.skip("aws CLI not installed")
    with moto_server() as url:
        shim = tmp_path / "bin" / "awslocal"
        shim.parent.mkdir()
        shim.write_text(f'#!/bin/sh\nexec aws --endpoint-url {url} "$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
        env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}", "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "SPOOLSWEEP_HOSTS": "mx1 mx2"}
        r = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        sqs = boto3.client("sqs", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                           aws_secret_access_key="test")
        have = {u.rsplit("/", 1)[1] for u in sqs.list_queues(QueueNamePrefix=f"{names.PREFIX}-")["QueueUrls"]}
        want = {f(s) for s in names.STEPS for f in (names.event_queue, names.dead_letter_queue)}
        want |= {f(h) for h in ("mx1", "mx2") for f in (names.instruction_queue, names.instruction_dlq)}
        assert have == want
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
        bucket = f"{names.PREFIX}-evidence-000000000000-us-east-1"
        cfg = s3.get_bucket_notification_configuration(Bucket=bucket)["QueueConfigurations"]
        routed = {c["Filter"]["Key"]["FilterRules"][0]["Value"]: c["QueueArn"].rsplit(":", 1)[1] for c in cfg}
        assert routed == {f"{p}/": names.event_queue(s) for s, (p, _) in names.STEPS.items()}
        attrs = sqs.get_queue_attributes(QueueUrl=sqs.get_queue_url(QueueName=names.event_queue("parse"))["QueueUrl"],
                                         AttributeNames=["RedrivePolicy"])["Attributes"]
        assert '"maxReceiveCount": 3' in attrs["RedrivePolicy"].replace('"3"', "3")


# -- who can do what: the grants evaluated as IAM does (`*` matches any run of characters, `/` included) ----

BUCKET = "arn:aws:s3:::evidence"


def _res(value, params: dict[str, str]) -> str:
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return BUCKET if value["Fn::GetAtt"] == ["EvidenceBucket", "Arn"] else "arn:" + ".".join(value["Fn::GetAtt"])
    if isinstance(value, dict) and "Ref" in value:
        return "arn:" + value["Ref"]
    text = value["Fn::Sub"] if isinstance(value, dict) else value
    return re.sub(r"\$\{([\w.]+)\}", lambda m: BUCKET if m.group(1) == "EvidenceBucket.Arn" else params[m.group(1)],
                  text)


def _matches(pattern: str, value: str) -> bool:
    return re.fullmatch(".*".join(re.escape(p).replace(r"\?", ".") for p in pattern.split("*")), value) is not None


def _allowed(stmts: list[dict], action: str, key: str, params: dict[str, str]) -> bool:
    """Allowed by some Allow and by no Deny (conditions ignored: they only narrow an Allow)."""
    def hits(s: dict) -> bool:
        acts = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        res = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        return any(_matches(a, action) for a in acts) and any(_matches(_res(r, params), f"{BUCKET}/{key}")
                                                              for r in res)
    return any(hits(s) for s in stmts if s["Effect"] == "Allow") and not any(
        hits(s) for s in stmts if s["Effect"] == "Deny")


def test_agent_grants_do_not_reach_across_a_slash(template):
    p = _params(template)
    stmts = template["Resources"]["AgentPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    host = p["AgentHost"]
    for key in (f"incoming/inc1/{host}/snapshot.tar.zst", f"receipts/inc1/{host}/abc.json"):
        assert _allowed(stmts, "s3:PutObject", key, p), key
    for key in (f"incoming/inc1/mx2/{host}/x", f"receipts/inc1/mx2/{host}/x.json", f"incoming/{host}/{host}/a/b",
                "manifests/inc1/manifest.json", "state/policy.toml", f"approvals/inc1/{host}/a.json"):
        assert not _allowed(stmts, "s3:PutObject", key, p), key
    listing = [s for s in stmts if s["Action"] == "s3:ListBucket"]
    assert listing and all("s3:prefix" in s["Condition"]["StringLike"] for s in listing)


def test_console_cannot_write_the_site_policy(template):
    p = _params(template)
    stmts = template["Resources"]["ConsoleFunction"]["Properties"]["Policies"][0]["Statement"]
    assert _allowed(stmts, "s3:PutObject", "state/inc1/decisions.json", p)
    assert _allowed(stmts, "s3:PutObject", "approvals/inc1/a1.json", p)
    for key in ("state/policy.toml", "state/blocklists/watch.json", "manifests/inc1/manifest.json"):
        assert not _allowed(stmts, "s3:PutObject", key, p), key


def test_only_dispatch_reads_the_signing_key(template):
    res = template["Resources"]
    [policy] = [r["Properties"] for r in res.values() if r["Type"] == "AWS::SecretsManager::ResourcePolicy"]
    assert policy["SecretId"] == {"Ref": "SigningKeySecret"}
    dispatch_role = {"Fn::GetAtt": ["DispatchFunctionRole", "Arn"]}
    [deny] = [s for s in policy["ResourcePolicy"]["Statement"] if s["Effect"] == "Deny"]
    assert deny["Principal"] == "*" and "secretsmanager:GetSecretValue" in deny["Action"]
    assert deny["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": dispatch_role}}
    for s in policy["ResourcePolicy"]["Statement"]:
        if s["Effect"] == "Allow":
            assert s["Principal"] == {"AWS": dispatch_role}
    # nobody else's IAM grants name the secret
    for name, r in res.items():
        if name != "DispatchFunction" and "SigningKeySecret" in str(r.get("Properties", {}).get("Policies", "")):
            raise AssertionError(f"{name} is granted the signing key")


def test_the_key_is_used_only_through_services_and_for_this_account(template):
    stmts = template["Resources"]["DataKey"]["Properties"]["KeyPolicy"]["Statement"]
    crypto = ("kms:*", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Encrypt")
    for s in stmts:
        acts = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        principal = s["Principal"]
        if "AWS" in principal:
            assert "kms:*" not in acts, s["Sid"]
            if any(a in crypto for a in acts):
                assert "kms:ViaService" in s["Condition"]["StringEquals"], s["Sid"]
        elif any(a in crypto or a.startswith("kms:GenerateDataKey") for a in acts):
            cond = s.get("Condition", {})
            assert "aws:SourceAccount" in str(cond) or "kms:EncryptionContext:aws:logs:arn" in str(cond), s["Sid"]


# -- the triage workflow: the state machine the last parsed shard starts -------------------------------

def test_state_machine_is_the_runners_definition_over_the_step_functions(template):
    from adapters.workflow import definition

    res, p = template["Resources"], _params(template)
    sm = res["TriageStateMachine"]["Properties"]
    assert _sub(sm["Name"], p) == names.state_machine()
    assert sm["Definition"] == definition()  # what `spoolsweep up` interprets is what AWS runs
    assert sm["DefinitionSubstitutions"] == {names.triage_step_resource(s): {"Fn::GetAtt": [
        names.triage_step_resource(s), "Arn"]} for s in names.TRIAGE_STEPS}
    for step, module in names.TRIAGE_STEPS.items():
        fn = res[names.triage_step_resource(step)]["Properties"]
        assert _sub(fn["FunctionName"], p) == names.triage_step_function(step)
        assert fn["ImageConfig"]["Command"] == [module + ".handler"]
        assert fn["MemorySize"] <= 3008 and "Events" not in fn  # invoked by the state machine only
    assert sm["Logging"]["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"] == {
        "Fn::GetAtt": ["TriageWorkflowLogs", "Arn"]}
    alarm = res["TriageWorkflowAlarm"]["Properties"]
    assert {m["MetricStat"]["Metric"]["MetricName"] for m in alarm["Metrics"] if "MetricStat" in m} >= {
        "ExecutionsFailed"}
    assert all(m["MetricStat"]["Metric"]["Dimensions"][0]["Value"] == {"Ref": "TriageStateMachine"}
               for m in alarm["Metrics"] if "MetricStat" in m)


def test_state_machine_and_fan_in_hold_only_their_own_rights(template):
    res = template["Resources"]
    stmts = res["TriageStateMachine"]["Properties"]["Policies"][0]["Statement"]
    invoke = [s for s in stmts if s["Action"] == "lambda:InvokeFunction"]
    assert len(invoke) == 1 and invoke[0]["Resource"] == [
        {"Fn::GetAtt": [names.triage_step_resource(s), "Arn"]} for s in names.TRIAGE_STEPS]
    starts = [s for s in stmts if "states:StartExecution" in str(s["Action"])]
    assert len(starts) == 1 and starts[0]["Resource"]["Fn::Sub"].endswith(":stateMachine:${NamePrefix}-triage")
    wide = [s for s in stmts if s["Resource"] == "*"]
    assert all(a.startswith(("logs:", "xray:")) for s in wide for a in s["Action"])
    fan_in = res["TriageFunction"]["Properties"]
    assert fan_in["Environment"]["Variables"]["SPOOLSWEEP_STATE_MACHINE_ARN"] == {"Ref": "TriageStateMachine"}
    states = [s for s in fan_in["Policies"][0]["Statement"] if str(s["Action"]).startswith("states:")]
    assert states == [{"Effect": "Allow", "Action": "states:StartExecution", "Resource": {"Ref": "TriageStateMachine"}}]
    for other in ("Parse", "Blocklist", "Dispatch", "Console"):
        assert "states:" not in str(res[f"{other}Function"]["Properties"]["Policies"])


def test_execution_name_is_one_per_incident_and_always_valid():
    assert names.execution_name("inc1") == "triage-inc1"
    long_a, long_b = "a" * 100 + "x", "a" * 100 + "y"
    assert names.execution_name(long_a) != names.execution_name(long_b)
    assert all(len(names.execution_name(i)) <= 80 for i in (long_a, long_b, "b" * 128))
    assert names.execution_name(long_a) == names.execution_name(long_a)
