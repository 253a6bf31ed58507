"""`spoolsweep demo --mta exim|sendmail --yes`: the whole story on a private Exim or Sendmail, its tally checked here
from the raw results (what reached the sink, what the MTA still holds, the agent's receipt) against the generator's
ground truth."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipeline.instructions import Receipt
from pipeline.manifest_io import read_manifest
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
    manifest = read_manifest(workdir / "store/manifests/demo")
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


# where the lab keeps things that a real host has in their default places: the private MTA's configuration file,
# the agent's state folder; and the demo's short poll. Nothing else may differ from the README's commands.
LAB_ONLY = {"--exim-config", "--sendmail-config", "--state-dir", "--wait"}


def readme_commands(title: str) -> list[list[str]]:
    """The `spoolsweep …` commands of the README walkthrough `### title` (continued lines joined, comments cut)."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n### {title}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    cmds: list[list[str]] = []
    cur = ""
    for line in section.splitlines():
        s = line.strip()
        if not cur and not s.startswith("spoolsweep "):
            continue
        cur = f"{cur} {s.removesuffix(chr(92))}".strip()
        if not s.endswith("\\"):
            cmds.append(shlex.split(cur, comments=True))
            cur = ""
    return cmds


def shape(cmd: list[str]) -> tuple[str, frozenset[str], str]:
    """(sub-command, option names, --mta value) of a spoolsweep command line."""
    words = cmd[1:]
    sub = words[:2] if words[0] == "agent" else words[:1]  # not the positional arguments (`approve INCIDENT`)
    opts = frozenset(w for w in words if w.startswith("--"))
    mta = words[words.index("--mta") + 1] if "--mta" in words else ""
    return " ".join(sub), opts, mta


def check_walkthrough(workdir: Path, title: str) -> None:
    """The README's walkthrough for this MTA is the commands the demo ran: each of its commands was run with the
    same options (and the lab's own paths besides), and each command the demo ran is in it (or, for the steps it
    says are "as for Postfix", in the Postfix walkthrough)."""
    ran = [shape(shlex.split(line)) for line in (workdir / "commands.txt").read_text().splitlines()]
    mine = [shape(c) for c in readme_commands(title)]
    assert mine, f"no spoolsweep command in the README's {title} walkthrough"
    for sub, opts, mta in mine:
        assert any(r[0] == sub and r[2] == mta and opts <= r[1] and r[1] - opts <= LAB_ONLY for r in ran), \
            f"README ({title}): `spoolsweep {sub} {' '.join(sorted(opts))}` is not what the demo ran: {ran}"
    postfix = [shape(c) for c in readme_commands("Postfix")]
    for sub, opts, mta in ran:
        assert any(m[0] == sub and m[2] == mta and m[1] <= opts and opts - m[1] <= LAB_ONLY
                   for m in (mine if mta else mine + postfix)), \
            f"the demo ran `spoolsweep {sub} {' '.join(sorted(opts))}`, which the README's {title} walkthrough lacks"


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
    check_walkthrough(tmp_path / "demo", "Exim")


@pytest.mark.slow
@pytest.mark.sendmail
def test_demo_on_sendmail(tmp_path, mail_corpus):
    """Sendmail 8.17 has no XCLIENT: each client connects from its own loopback address, and the engine reads
    those addresses from the queue files against the policy's networks moved the same way; the authenticated ones
    log in (SMTP AUTH against a private sasldb) and their accounts are read back from the qf files."""
    if why := lab_sendmail.available():
        pytest.skip(why)
    cp = run_demo(tmp_path / "demo", "sendmail")
    assert cp.returncode == 0 and "PASS" in cp.stdout
    check(tmp_path / "demo", mail_corpus)
    check_walkthrough(tmp_path / "demo", "Sendmail")
    site = (tmp_path / "demo/site.toml").read_text()
    assert "127.0.0.0/8" not in site and '"127.0.0.0/24"' in site, "the clients' loopback addresses are not all trusted"
    manifest = read_manifest(tmp_path / "demo/store/manifests/demo")
    clients = {m.envelope.client_address for m in manifest.messages if m.envelope.client_address}
    assert len(clients) > 20 and all(c.startswith("127.") for c in clients), "the clients were told apart"
    ham, spam = mail_corpus
    accounts = {message_id(m.data): m.envelope.sasl_username for m in demo_incident(ham, spam, N, SEED).messages}
    assert {m.message_id: m.envelope.sasl_username for m in manifest.messages} == accounts, \
        "each message's SMTP AUTH account read back from the qf file (the A line of an authenticated session)"
