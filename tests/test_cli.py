"""The command line as a user runs it: exit codes, manifest on disk, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.manifest_io import manifest_bytes, read_manifest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spoolsweep", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_triage_writes_manifest_and_summary(incident_tar: Path, policy_file: Path, tmp_path: Path) -> None:
    r = run("triage", str(incident_tar), "--policy", str(policy_file), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout and "spam" in r.stdout and "campaigns" in r.stdout
    m = json.loads(manifest_bytes(read_manifest(tmp_path / "o")))
    assert m["totals"]["messages"] == 1500


@pytest.mark.slow
def test_bad_policy_names_key(incident_tar: Path, tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('local_domains = "example.org"\n')
    r = run("triage", str(incident_tar), "--policy", str(p), "--out", str(tmp_path / "o"))
    assert r.returncode == 1
    assert "local_domains" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_missing_snapshot(tmp_path: Path) -> None:
    r = run("triage", str(tmp_path / "nope.tar.gz"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "no such file" in r.stderr


@pytest.mark.slow
def test_damaged_archive_exit_2(incident_tar: Path, policy_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.tar.gz"
    data = incident_tar.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    r = run("triage", str(cut), "--policy", str(policy_file), "--out", str(tmp_path / "o"), "-q")
    assert r.returncode == 2, r.stderr
    m = json.loads(manifest_bytes(read_manifest(tmp_path / "o")))
    assert m["archive_defects"]
    # the index names every message, so those cut off are still listed, as review
    assert m["totals"]["messages"] == 1500
    missing = [x for x in m["messages"] if any("missing" in d for d in x["defects"])]
    assert missing and all(x["verdict"] == "review" for x in missing)


@pytest.mark.slow
def test_the_campaign_table_reads_as_its_messages_do(incident_tar: Path, policy_file: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from collections import Counter, defaultdict

    from spoolsweep import console_out

    r = run("triage", str(incident_tar), "--policy", str(policy_file), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    m = read_manifest(tmp_path / "o")
    by: dict[int | None, Counter] = defaultdict(Counter)
    for x in m.messages:
        by[x.campaign][x.verdict] += 1
    uniform = [c for c in m.campaigns if len(by[c.id]) == 1]
    # a campaign whose messages all have one verdict shows that one, not `review` for a campaign nothing holds
    assert all(c.verdict == next(iter(by[c.id])) for c in uniform)
    assert any(c.reasons[0].code == "mixed" and c.reasons[0].text.startswith("members' verdicts: valid")
               for c in uniform)  # the case is here: held by the campaign rules, each message valid by its own
    # the table shows what a person reads (subjects, phrases), not the search label's placeholders
    assert "ztokz" not in r.stdout and "zurlz" not in r.stdout
    # and a subject as text: a list's tag in brackets is no markup
    m.campaigns[0].subject = "[zzzzteana] Which Muppet Are You?"
    capsys.readouterr()
    width, console_out.out.width = console_out.out.width, 200
    try:
        console_out.summary_table(m)
    finally:
        console_out.out.width = width
    assert "[zzzzteana] Which Muppet Are You?" in capsys.readouterr().out


def test_relay_test_of_a_server_it_cannot_reach_is_not_an_open_relay(tmp_path: Path) -> None:
    # A refused connection, or a server that hangs up at once, ended in a traceback with exit status 1,
    # which relay-test's scripts read as "open relay".
    import socket
    import threading

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = closed.getsockname()[1]  # bound, never listening: refused
        with socket.create_server(("127.0.0.1", 0)) as srv:
            def hang_up() -> None:
                conn, _ = srv.accept()
                conn.close()

            t = threading.Thread(target=hang_up, daemon=True)
            t.start()
            cases = ((refused, "Connection refused"), (srv.getsockname()[1], "Connection unexpectedly closed"))
            for port, why in cases:
                r = run("relay-test", f"127.0.0.1:{port}", "--local-domain", "example.org")
                assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
                line = f"error: The relay test could not run: 127.0.0.1:{port}: {why}"
                assert r.stderr.strip().splitlines()[-1].startswith(line), r.stderr
            t.join(5)


def test_what_aws_says_is_one_line(tmp_path: Path) -> None:
    # Every command that reaches S3 or SQS ended a failed call in a traceback of botocore's and urllib3's frames.
    import io
    import os
    import socket
    import tarfile

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1", HOME=str(tmp_path),
                   AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
        snap = tmp_path / "s.tar"
        with tarfile.open(snap, "w") as tf:
            body = b"From: a@example.net\r\nSubject: hi\r\n\r\nhello\r\n"
            ti = tarfile.TarInfo("a.eml")
            ti.size = len(body)
            tf.addfile(ti, io.BytesIO(body))
        cases = [
            ({"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"},
             ("upload", str(snap), "--incident", "i", "--host", "h", "--store", "s3://bkt"),
             f'error: The AWS call failed: Could not connect to the endpoint URL: "{endpoint}/bkt?'),
            ({}, ("approve", "i", "--store", "s3://bkt"), "error: The AWS call failed: Unable to locate credentials"),
        ]
        for extra, args, want in cases:
            r = subprocess.run([sys.executable, "-m", "spoolsweep", *args], cwd=ROOT, capture_output=True, text=True,
                               timeout=120, env={**env, **extra})
            assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
            assert r.stderr.strip().startswith(want) and len(r.stderr.strip().splitlines()) == 1, r.stderr
