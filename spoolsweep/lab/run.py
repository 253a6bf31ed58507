"""The demo's story, step by step: the incident, the MTA (private Postfix or a pickup folder), the pipeline's own
commands, the replay into a sink and the tally against the ground truth."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pipeline.generator import POLICY_TOML, Incident, find_corpus, generate, load_corpus, score, write_eml_folder
from pipeline.instructions import Receipt
from spoolsweep.console_out import out, summary_table
from spoolsweep.lab.mtas import LabMta, every_500
from spoolsweep.lab.postfix import PostfixInstance, private_postfix
from spoolsweep.lab.sink import Sink, free_port
from spoolsweep.lab.story import HOST, INCIDENT, Story, message_id, password_of, push_smtp, save_sink, tally, wait_sink


def say(msg: str) -> None:
    out.print(msg, highlight=False)


def step(n: int, title: str) -> None:
    say(f"\n[bold cyan]{n}. {title}[/]")


def run_story(workdir: Path, n: int, seed: int, corpus: Path | None, yes: bool, spool: str, console: bool,
              wait_approval: float = 0) -> bool:
    """The whole story; True when the tally checks out (or when it stopped, as asked, before approval)."""
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / "truth.jsonl").exists():
            raise SystemExit(f"{workdir} is not empty and not an earlier demo's folder; give another --workdir")
        shutil.rmtree(workdir)  # a demo starts clean: its store, journal and queue are its own
    workdir.mkdir(parents=True, exist_ok=True)
    st = Story(workdir, say)
    t0 = time.monotonic()
    step(1, f"generating an incident of {n:,} messages from the SpamAssassin public corpus")
    ham, spam = load_corpus(corpus or find_corpus())
    inc = demo_incident(ham, spam, n, seed)
    (workdir / "site.toml").write_text(POLICY_TOML)
    kinds = Counter(m.kind for m in inc.messages)
    say("   " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    with (workdir / "truth.jsonl").open("w") as fh:
        for m in inc.messages:
            fh.write(json.dumps({"message_id": message_id(m.data), "label": m.label, "kind": m.kind}) + "\n")
    if spool == "postfix":
        with _postfix_incident(st, inc) as pf:
            return _after_snapshot(st, inc, yes, console, pf, t0, wait_approval)
    if spool in ("exim", "sendmail"):
        from spoolsweep.lab.mtas import exim_incident, sendmail_incident

        with (exim_incident if spool == "exim" else sendmail_incident)(st, inc, step, say, INCIDENT, HOST) as lab:
            return _after_snapshot(st, inc, yes, console, lab, t0, wait_approval)
    _pickup_incident(st, inc)
    return _after_snapshot(st, inc, yes, console, None, t0, wait_approval)


def demo_incident(ham: list[bytes], spam: list[bytes], n: int, seed: int) -> Incident:
    """The demo's incident: the generated one plus the organisation's web shop on an address missing from
    trusted_networks (real mail that looks relayed: the engine holds it for review, and the demo shows it
    stays queued and on hold after the replay)."""
    return generate(ham, spam, n=n, seed=seed, shop=max(6, n // 50))


@contextlib.contextmanager
def _postfix_incident(st: Story, inc: Incident) -> Iterator[PostfixInstance]:
    users = {m.envelope.sasl_username: password_of(m.envelope.sasl_username)
             for m in inc.messages if m.envelope.sasl_username}
    with private_postfix(users=users) as pf:
        step(2, "the mail server: a private Postfix on 127.0.0.1, misconfigured as an open relay")
        say(f"   smtpd 127.0.0.1:{pf.port}, config {pf.etc}, queue {pf.spool}; SMTP AUTH for {len(users)} "
            f"accounts; the relayhost is down, so everything piles up in the queue")
        step(3, "the incident: spammers, a stolen password and the organisation's own mail, over SMTP")
        t = time.monotonic()
        ways = push_smtp(pf, inc.messages, progress=every_500(say))
        queued = pf.wait_queued(len(inc.messages), timeout=120 + len(inc.messages) / 20)
        say(f"   {len(inc.messages):,} messages accepted in {time.monotonic() - t:.1f} s "
            f"({', '.join(f'{k} {v}' for k, v in sorted(ways.items()))}); "
            f"queue: {dict(Counter(q['queue_name'] for q in queued))}")
        step(4, "stop the bleeding: close the relay")
        before = pf.relay_probe()
        pf.close_relay()
        say("   postconf -e 'smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated "
            "reject_unauth_destination'; postfix reload")
        after = pf.relay_probe()
        say(f"   relaying for 203.0.113.9 to victim@example.com: before {before[0]}, now {after[0]} {after[1]}")
        if after[0] < 500:
            raise RuntimeError(f"the relay is still open: {after}")
        step(5, "the agent freezes the queue and snapshots it into the embedded store")
        st.spoolsweep("agent", "snapshot", "--mta", "postfix", "--postfix-config", str(pf.etc), "--to", str(st.store),
                      "--incident", INCIDENT, "--host", HOST, "--state-dir", str(st.state))
        held = Counter(q["queue_name"] for q in pf.postqueue_json())
        say(f"   queue now: {dict(held)} (frozen: nothing leaves until an approved instruction says so)")
        yield pf


def _pickup_incident(st: Story, inc: Incident) -> None:
    q = st.workdir / "Mailroot" / "Queue"
    step(2, f"the mail server: an IIS-style pickup-folder spool at {q} (no root or no Postfix here)")
    step(3, "the incident: spammers, a stolen password and the organisation's own mail, as .eml files")
    write_eml_folder(inc, q)
    say(f"   {len(inc.messages):,} .eml files with x-sender/x-receiver envelopes")
    step(4, "stop the bleeding: (on a real server) stop the SMTP service's relaying; here nothing more arrives")
    step(5, "the agent freezes the folder (Queue -> Queue.old) and snapshots it into the embedded store")
    st.spoolsweep("agent", "snapshot", "--mta", "pickup-dir", "--dir", str(q), "--to", str(st.store),
                  "--incident", INCIDENT, "--host", HOST, "--state-dir", str(st.state))


def _after_snapshot(st: Story, inc: Incident, yes: bool, console: bool, pf: PostfixInstance | LabMta | None,
                    t0: float, wait_approval: float) -> bool:
    step(6, "the pipeline (the same functions as on AWS, here on one machine): parse, triage, blocklists")
    with _blocklist_dns(st):
        st.spoolsweep("up", "--store", str(st.store), "--policy", str(st.workdir / "site.toml"), "--once")
    manifest = st.manifest()
    summary_table(manifest)
    s = score(manifest.messages, _truth_by_path(st, inc, manifest))
    say(f"   against the ground truth: valid marked spam {s['valid_as_spam']}, spam marked valid "
        f"{s['spam_as_valid']}, review {s['review']}")
    _say_blocklists(st)
    step(7, "review")
    proc = _open_console(st) if console else None
    if proc is not None and not yes and wait_approval <= 0:
        wait_approval = 3600.0  # the console is open for the review: wait for its Approve
    try:
        if not yes:
            if wait_approval > 0:
                if not _await_approval(st, wait_approval):
                    say(f"   [red]no approval within {wait_approval:.0f} s[/]; the queue stays frozen")
                    return False
                yes = True
            elif sys.stdin.isatty() and _confirm():
                yes = True
            else:
                say(f"   stopping before approval. Manifest: {st.store}/manifests/{INCIDENT}/manifest.json. "
                    "Run `./run demo --yes` to approve the engine's verdicts and finish the story.")
                return True
        return _approve_and_replay(st, inc, pf, t0)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)


def _await_approval(st: Story, seconds: float) -> bool:
    """Wait for an approval written elsewhere: the console's Approve button, or `spoolsweep approve` by hand."""
    folder = st.store / "approvals" / INCIDENT
    say(f"   waiting up to {seconds:.0f} s for an approval (in the console, or `spoolsweep approve {INCIDENT} "
        f"--store {st.store}`)")
    (st.workdir / "awaiting-approval").write_text(str(st.store) + "\n")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if folder.is_dir() and any(p.suffix == ".json" for p in folder.iterdir()):
            say("   approval found")
            return True
        time.sleep(0.5)
    return False


# The blocklist fixture: our server's address is listed on one zone, as after a real spam run. Served by a DNS
# server on 127.0.0.1 (no query leaves the machine); the policy checks only these zones.
DEMO_ZONES = ("bl.spamcop.net", "zen.spamhaus.org")
DEMO_LISTED = {"25.2.0.192.bl.spamcop.net": (["127.0.0.2"], ["Blocked - see https://www.spamcop.net/bl.shtml"]),
               # every working list lists its test entry 127.0.0.2; the check distrusts a zone that does not
               **{f"2.0.0.127.{z}": (["127.0.0.2"], ["test entry"]) for z in DEMO_ZONES}}


@contextlib.contextmanager
def _blocklist_dns(st: Story) -> Iterator[None]:
    policy = st.workdir / "site.toml"
    if importlib.util.find_spec("pipeline.blocklist") is None or importlib.util.find_spec("dnslib") is None:
        policy.write_text(policy.read_text() + "blocklist_zones = []\n")  # no fixture: ask no real list either
        say("   blocklists: no DNS fixture here (dnslib missing), so no zone is checked")
        yield
        return
    from spoolsweep.lab.dns import LocalDNS, ZoneResolver

    policy.write_text(policy.read_text() + f"blocklist_zones = {list(DEMO_ZONES)!r}\n".replace("'", '"'))
    with LocalDNS(ZoneResolver(dict(DEMO_LISTED), set(), set(), set())) as dns:
        say(f"   blocklist zones {', '.join(DEMO_ZONES)} served by a DNS fixture on {dns.nameserver}")
        st.env["SPOOLSWEEP_NAMESERVER"] = dns.nameserver  # the blocklist function's setting, for `spoolsweep up`
        try:
            yield
        finally:
            st.env.pop("SPOOLSWEEP_NAMESERVER", None)


def _say_blocklists(st: Story) -> None:
    report = st.store / "blocklists" / INCIDENT / "report.json"
    if not report.exists():
        say("   blocklists: no report written")
        return
    data = json.loads(report.read_text())
    if data.get("why") and not data.get("results"):
        say(f"   blocklists: {data['why']}")
        return
    listed = [r for r in data["results"] if r["status"] == "listed"]
    say(f"   blocklists: {len(data['results'])} checks, listed on {len(listed)}: " + "; ".join(
        f"{r['target']} on {r['zone']} (delist: {r.get('delist_url') or '-'})" for r in listed))


def _confirm() -> bool:
    import typer

    return bool(typer.confirm("   approve the engine's verdicts (replay valid, purge spam, hold review)?"))


def _open_console(st: Story) -> subprocess.Popen | None:
    """The review console on 127.0.0.1, when the `console` package (spoolsweep console) is installed.

    Hook for the browser approval: the e2e test's `browser_approve` drives this same URL with Playwright."""
    if importlib.util.find_spec("console") is None:
        say(f"   console: not installed here; review {st.store}/manifests/{INCIDENT}/manifest.json, "
            f"then `spoolsweep approve {INCIDENT} --store {st.store}`")
        return None
    import secrets

    port, token = free_port(), secrets.token_urlsafe(24)
    proc = subprocess.Popen([sys.executable, "-m", "spoolsweep", "console", "--data", str(st.store),
                             "--port", str(port), "--token", token], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/?token={token}"
    # the address is told (and console.url written) only once the console answers: on a busy machine its
    # imports take seconds, and a browser sent there earlier finds nothing listening
    if not _listening(proc, port, 60):
        proc.terminate()
        proc.wait(10)
        say(f"   console: did not start (it exited, or did not answer within 60 s); review "
            f"{st.store}/manifests/{INCIDENT}/manifest.json, then `spoolsweep approve {INCIDENT} --store {st.store}`")
        return None
    say(f"   console: {url} (incident {INCIDENT} ready to review)")
    (st.workdir / "console.url").write_text(url + "\n")
    return proc


def _listening(proc: subprocess.Popen, port: int, seconds: float) -> bool:
    """Whether 127.0.0.1:port accepts a connection within `seconds`, while `proc` is still running."""
    import socket

    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
        time.sleep(0.1)
    return False


def _truth_by_path(st: Story, inc: Incident, manifest) -> Path:
    """The generator's truth keyed by the manifest's paths (the queue gave the messages new names)."""
    label = {message_id(m.data): m for m in inc.messages}
    p = st.workdir / "truth-by-path.jsonl"
    with p.open("w") as fh:
        for m in manifest.messages:
            g = label.get(m.message_id)
            if g is not None:
                fh.write(json.dumps({"path": m.path, "label": g.label, "kind": g.kind}) + "\n")
    return p


def _approve_and_replay(st: Story, inc: Incident, pf: PostfixInstance | LabMta | None, t0: float) -> bool:
    step(8, "approve the engine's verdicts; the pipeline signs an instruction for the agent")
    folder = st.store / "approvals" / INCIDENT
    if not (folder.is_dir() and any(folder.iterdir())):
        st.spoolsweep("approve", INCIDENT, "--by", "demo-admin", "--store", str(st.store))
    st.spoolsweep("up", "--store", str(st.store), "--once")
    manifest = st.manifest()
    n_valid = sum(1 for m in manifest.messages if m.verdict.value == "valid")
    with Sink() as sink:
        step(9, f"the agent replays the valid mail into a local SMTP sink (127.0.0.1:{sink.port}) and purges the spam")
        common = ["--host", HOST, "--state-dir", str(st.state), "--store", str(st.store),
                  "--public-key", str(st.store / "keys" / "signing.pub.pem"), "--once", "--wait", "2"]
        if isinstance(pf, LabMta):
            pf.relay_to(sink.port)
            say(f"   {pf.name} now relays to 127.0.0.1:{sink.port} (the sink stands in for the real next hop)")
            st.spoolsweep("agent", "run", *pf.agent_args, *common)
        elif pf is not None:
            pf.relay_to(sink.port)
            say(f"   postconf -e 'relayhost = [127.0.0.1]:{sink.port}'; postfix reload  (the sink stands in for "
                f"the real next hop)")
            st.spoolsweep("agent", "run", "--mta", "postfix", "--postfix-config", str(pf.etc), *common)
        else:
            q = st.workdir / "Mailroot" / "Queue"
            st.spoolsweep("agent", "run", "--mta", "pickup-dir", "--dir", str(q),
                          "--deliver", f"smtp://127.0.0.1:{sink.port}", *common)
        wait_sink(sink, n_valid, pf.flush if pf else None)
        save_sink(sink, st.workdir / "sink")
        left = _left(st, manifest, pf)
        if isinstance(pf, LabMta):  # what the MTA itself says is left, for checks that do not trust the demo's reading
            (st.workdir / "queue-after.json").write_text(json.dumps([{"queue_id": q} for q in pf.queued_ids()]))
        elif pf is not None:
            (st.workdir / "queue-after.json").write_text(json.dumps(pf.postqueue_json()))
        purged = sum(Receipt.model_validate_json(p.read_bytes()).counts()["purged"]
                     for p in (st.store / "receipts" / INCIDENT / HOST).glob("*.json") if ".refused-" not in p.name)
        t = tally(inc, manifest, sink, left, purged)
    t["seconds"] = round(time.monotonic() - t0, 1)
    t["spool"] = pf.name if isinstance(pf, LabMta) else "postfix" if pf else "pickup"
    (st.workdir / "tally.json").write_text(json.dumps(t, indent=1))
    step(10, "the tally, checked against the ground truth")
    _print_tally(t)
    say(f"   tally written to {st.workdir / 'tally.json'}; what the sink got: {st.workdir / 'sink'}/")
    return bool(t["ok"])


def _left(st: Story, manifest, pf: PostfixInstance | LabMta | None) -> set[str]:
    """Message-IDs of what is still queued after the replay (should be exactly the review ones)."""
    if isinstance(pf, LabMta):
        by_qid = {m.queue_id: m.message_id for m in manifest.messages}
        return {by_qid.get(q, q) for q in pf.queued_ids()}
    if pf is not None:
        by_qid = {m.queue_id: m.message_id for m in manifest.messages}
        return {by_qid.get(q["queue_id"], q["queue_id"]) for q in pf.postqueue_json()}
    aside = st.workdir / "Mailroot" / "Queue.old"
    return {message_id(p.read_bytes()) for p in aside.rglob("*") if p.is_file()} if aside.exists() else set()


def _print_tally(t: dict) -> None:
    def mark(good: bool) -> str:
        return "[green]✓[/]" if good else "[red]✗[/]"

    say(f"   {t['messages']:,} messages: {t['valid']:,} valid, {t['spam']:,} spam (ground truth)")
    say(f"   {mark(not t['valid_lost'])} valid delivered {t['valid_delivered']:,}, held for review "
        f"{t['valid_held_for_review']:,}, lost {len(t['valid_lost'])}")
    say(f"   {mark(not t['spam_delivered'])} spam purged {t['spam_purged']:,}, held for review "
        f"{t['spam_held_for_review']:,}, delivered {len(t['spam_delivered'])}")
    say(f"   {mark(t['nothing_lost'])} nothing lost: every message delivered, purged or still held "
        f"(agent's receipt: purged {t['purged_receipt']:,} of {t['engine_spam']:,} marked spam)")
    say(f"   {mark(not t['delivered_twice'])} nothing twice: {len(t['delivered_twice'])} delivered more than once")
    say(f"   {mark(not t['bytes_differ'] and not t['envelope_differs'])} delivered byte for byte (apart from "
        f"trace headers) to the original recipients: {len(t['bytes_differ'])} differ")
    say(f"   {mark(not t['left_not_review'])} left in the queue: {t['queue_left']:,}, all marked review")
    say(f"   [bold]{'PASS' if t['ok'] else 'FAIL'}[/] in {t['seconds']} s")
