"""`spoolsweep demo --mta exim|sendmail --yes`: the whole story on a private Exim or Sendmail, its tally checked here
from the raw results (what reached the sink, what the MTA still holds, the agent's receipt) against the generator's
ground truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipeline.instructions import Receipt
from pipeline.models import Manifest
from spoolsweep.lab import exim as lab_exim
from spoolsweep.lab import sendmail as lab_sendmail
from spoolsweep.lab.run import demo_incident
from spoolsweep.lab.sink import body_of
from spoolsweep.lab.story import message_id
from tests.support import agent as support

mail_corpus = support.mail_corpus
ROOT = Path(__file__).resolve().parent.parent
N, SEED = 100, 3


def check(workdir: Path, corpus) -> None:
    ham, spam = corpus
    truth = {message_id(m.data): m for m in demo_incident(ham, spam, N, SEED).messages}
    manifest = Manifest.model_validate_json((workdir / "store/manifests/demo/manifest.json").read_bytes())
    verdict = {m.message_id: m.verdict.value for m in manifest.messages}
    sink = [json.loads(line) for line in (workdir / "sink/envelopes.jsonl").read_text().splitlines()]
    got = Counter(e["message_id"] for e in sink)
    assert set(got.values()) == {1}, f"delivered twice: {[k for k, c in got.items() if c > 1]}"
    assert set(got) == {k for k, v in verdict.items() if v == "valid"}, "exactly what was marked valid is delivered"
    assert not [k for k in got if truth[k].label == "spam"], "no spam delivered"
    valid = {k for k, m in truth.items() if m.label == "valid"}
    left = {m.message_id for m in manifest.messages if m.queue_id in
            {q["queue_id"] for q in json.loads((workdir / "queue-after.json").read_text())}}
    assert valid <= set(got) | left, "no valid message lost: delivered or still held"
    assert left == {k for k, v in verdict.items() if v == "review"}, "what stays queued is what is marked review"
    for e in sink:  # byte for byte but for trace headers, to the original recipients
        orig = truth[e["message_id"]]
        sent = b"".join(ln for ln in orig.data.splitlines(True) if not ln.startswith(b"Return-Path:"))
        assert body_of((workdir / "sink" / e["file"]).read_bytes()) == body_of(sent), e["message_id"]
        assert sorted(e["rcpt_to"]) == sorted(orig.envelope.rcpt_to)
    receipts = [Receipt.model_validate_json(p.read_bytes()) for p in (workdir / "store/receipts/demo/mx1").glob("*")]
    assert [r.refused for r in receipts] == [None]
    assert receipts[0].counts()["purged"] == sum(1 for v in verdict.values() if v == "spam")
    assert json.loads((workdir / "tally.json").read_text())["ok"]


def run_demo(wd: Path, mta: str) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run([sys.executable, "-m", "spoolsweep", "demo", "-n", str(N), "--seed", str(SEED), "--workdir",
                         str(wd), "--no-console", "--yes", "--mta", mta], cwd=ROOT, capture_output=True, text=True,
                        timeout=900, env={**os.environ, "COLUMNS": "160"})
    print(cp.stdout[-5000:], cp.stderr[-2000:])
    return cp


@pytest.mark.slow
@pytest.mark.exim
def test_demo_on_exim(tmp_path, mail_corpus):
    if why := lab_exim.available():
        pytest.skip(why)
    cp = run_demo(tmp_path / "demo", "exim")
    assert cp.returncode == 0 and "PASS" in cp.stdout
    assert "relay not permitted" in cp.stdout, "the relay was closed before the snapshot"
    check(tmp_path / "demo", mail_corpus)


@pytest.mark.slow
@pytest.mark.sendmail
def test_demo_on_sendmail(tmp_path, mail_corpus):
    """Sendmail 8.17 has no XCLIENT: each client connects from its own loopback address, and the engine reads
    those addresses from the queue files against the policy's networks moved the same way."""
    if why := lab_sendmail.available():
        pytest.skip(why)
    cp = run_demo(tmp_path / "demo", "sendmail")
    assert cp.returncode == 0 and "PASS" in cp.stdout
    check(tmp_path / "demo", mail_corpus)
    site = (tmp_path / "demo/site.toml").read_text()
    assert "192.0.2.0/24" not in site and '"127.0.0.0/24"' in site, "trusted_networks on the loopback side"
    manifest = Manifest.model_validate_json((tmp_path / "demo/store/manifests/demo/manifest.json").read_bytes())
    clients = {m.envelope.client_address for m in manifest.messages if m.envelope.client_address}
    assert len(clients) > 20 and all(c.startswith("127.") for c in clients), "the clients were told apart"
