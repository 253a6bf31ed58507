"""The manifest as a summary plus message parts: the same content as one file, read part by part, refused whole
when a part is missing or changed, and a manifest of one file still read everywhere."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from pipeline import queues
from pipeline.errors import ManifestError, PoisonEvent
from pipeline.instructions import Approval, approval_from_manifest, effective_verdicts, generate_keypair
from pipeline.manifest_io import ManifestReader, manifest_bytes, put_manifest, read_manifest, write_manifest
from pipeline.models import (
    Campaign,
    Envelope,
    Manifest,
    ManifestMessage,
    Reason,
    ReasonCode,
    SnapshotInfo,
    Spread,
    Totals,
    Verdict,
)
from pipeline.service.dispatch import dispatch
from pipeline.service.incidents import approve
from pipeline.store import LocalChannel, LocalStore

INC, HOST = "inc-parts", "mx1"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
_VERDICTS = [Verdict.valid, Verdict.spam, Verdict.spam, Verdict.review]


def _msg(i: int) -> ManifestMessage:
    v = _VERDICTS[i % 4]
    env = Envelope(mail_from=f"s{i}@example.net", rcpt_to=[f"r{i % 3}@example.org"], client_address=f"192.0.2.{i % 5}",
                   arrival_time=T0 + timedelta(minutes=i) if i % 6 else None)
    return ManifestMessage(id=f"id{i:04d}", path=f"messages/{i}.eml", sha256=hashlib.sha256(b"%d" % i).hexdigest(),
                           size=100 + i, format="eml", queue_id=f"Q{i}", envelope=env, subject=f"Sübject {i} \"x\"",
                           campaign=7 if v is Verdict.spam else None, verdict=v, confidence=0.9,
                           reasons=[Reason(code=ReasonCode.relayed, text="why", weight="info")],
                           review_group=1 if v is Verdict.review else None)


def _manifest(n: int = 11) -> Manifest:
    msgs = [_msg(i) for i in range(n)]
    count = {v: sum(1 for m in msgs if m.verdict is v) for v in Verdict}
    spread = Spread(distinct=0, top=[])
    camp = Campaign(id=7, size=count[Verdict.spam], label="x", sample_subjects=[], sender_domains=spread,
                    recipient_domains=spread, client_ips=spread, accounts=spread, verdict=Verdict.spam,
                    confidence=0.9, reasons=[])
    return Manifest(incident=INC, snapshot=SnapshotInfo(source="x", format="eml", hosts=[HOST]),
                    policy_sha256="0" * 64, totals=Totals(messages=n, valid=count[Verdict.valid],
                                                          spam=count[Verdict.spam], review=count[Verdict.review],
                                                          bytes=sum(m.size for m in msgs), campaigns=1),
                    campaigns=[camp], accounts=[], sources=[], messages=msgs)


def test_summary_plus_parts_is_the_manifest_of_one_file(tmp_path) -> None:
    m = _manifest()
    store = LocalStore(tmp_path / "s")
    key = put_manifest(store, m, per_part=3)
    assert key == queues.manifest_key(INC)
    parts = sorted(k for k in store.list(f"manifests/{INC}/") if k != key)
    assert parts == [f"manifests/{INC}/messages-{i:05d}.parquet" for i in range(4)]
    # the summary is the one file without `messages`, `parts` in their place: its content is the manifest's
    summary = json.loads(store.get(key))
    whole = json.loads(manifest_bytes(m))
    assert [p["messages"] for p in summary.pop("parts")["items"]] == [3, 3, 3, 2]
    assert summary == {k: v for k, v in whole.items() if k != "messages"}
    assert read_manifest(store, INC) == m
    assert manifest_bytes(read_manifest(store, INC)) == manifest_bytes(m)
    # the same manifest writes the same bytes (a re-run of the step rewrites them unchanged)
    before = {k: store.get(k) for k in store.list("manifests/")}
    put_manifest(store, m, per_part=3)
    assert {k: store.get(k) for k in store.list("manifests/")} == before


def test_parts_written_from_tables_of_any_lengths_are_the_same_bytes(tmp_path) -> None:
    """The summary step hands the parts' rows over as Arrow tables of whatever lengths its merge cuts them into:
    the parts are the same files as written row by row (the writer's pages follow its input's chunks)."""
    import pyarrow as pa

    from pipeline.manifest_io import part_row, rows_table, split_manifest, write_manifest_rows, write_manifest_tables

    summary, messages = split_manifest(_manifest(23))
    rows = [part_row(m) for m in messages]
    a, b = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    write_manifest_rows(a, summary, rows, per_part=5)
    cuts = [0, 1, 4, 4, 11, 12, 23]  # an empty table, one row, a table across two parts, ...
    tables = [rows_table(rows[i:j]) for i, j in zip(cuts, cuts[1:], strict=False)]
    assert sum(map(len, tables)) == 23 and isinstance(tables[0], pa.Table)
    write_manifest_tables(b, summary, tables, per_part=5)
    keys = sorted(a.list("manifests/"))
    assert len(keys) == 6 and keys == sorted(b.list("manifests/"))
    assert all(a.get(k) == b.get(k) for k in keys)
    with pytest.raises(ValueError, match="at least one message"):
        write_manifest_tables(b, summary, tables, per_part=0)


def test_a_summary_is_never_read_as_a_manifest_without_messages(tmp_path) -> None:
    store = LocalStore(tmp_path)
    put_manifest(store, _manifest(), per_part=4)
    with pytest.raises(ValueError, match="ManifestReader"):
        Manifest.model_validate_json(store.get(queues.manifest_key(INC)))


def test_reader_pages_finds_and_streams(tmp_path) -> None:
    m = _manifest(23)
    write_manifest(m, tmp_path / "out", per_part=5)  # the CLI's layout: a folder
    for r in (ManifestReader(tmp_path / "out"), _inline(tmp_path, m)):
        assert [x.id for x in r.iter_messages()] == [x.id for x in m.messages]
        spam = [x for x in m.messages if x.verdict is Verdict.spam]
        total, page = r.page(verdict="spam", offset=4, limit=5)
        assert (total, page) == (len(spam), spam[4:9])
        total, page = r.page(campaign=-1, review_group=1, offset=0, limit=100)
        assert page == [x for x in m.messages if x.review_group == 1]
        assert r.get("id0017") == m.messages[17]
        assert r.get("nope") is None
        assert r.at([22, 0, 11]) == [m.messages[22], m.messages[0], m.messages[11]]


def _inline(tmp_path, m: Manifest) -> ManifestReader:
    """A manifest written as one file, before parts."""
    store = LocalStore(tmp_path / "old")
    store.put(queues.manifest_key(INC), manifest_bytes(m))
    r = ManifestReader(store, INC)
    assert not r.parted
    return r


@pytest.fixture
def parted(tmp_path):
    m = _manifest(13)
    store = LocalStore(tmp_path / "s")
    put_manifest(store, m, per_part=4)
    return store, m


def test_approve_and_dispatch_over_parts(parted, tmp_path) -> None:
    store, m = parted
    changes = [{"kind": "group", "target": "1", "verdict": "spam", "by": "a", "at": "t"}]
    ov = effective_verdicts(ManifestReader(store, INC), changes)
    assert ov == effective_verdicts(m, changes) and len(ov) == 3
    done = approve(store, INC, "alice", overrides=ov, changes=changes)
    assert (done.approval.replay, done.approval.purge, done.approval.hold) == (4, 9, 0)
    assert done.approval.manifest_sha256 == hashlib.sha256(store.get(queues.manifest_key(INC))).hexdigest()
    a = Approval.model_validate_json(store.get(done.key))  # written as a stream: the same approval as made whole
    assert store.get(done.key) == Approval.__pydantic_serializer__.to_json(approval_from_manifest(
        m, a.manifest_sha256, HOST, "alice", a.approved_at, a.approval_id, changes=changes))
    store.put(queues.decisions_key(INC), json.dumps({"log": changes}).encode())
    priv, _ = generate_keypair()
    chan = LocalChannel(tmp_path / "chan")
    assert "4 replay, 9 purge" in dispatch(store, chan, done.key, priv, "k").summary
    assert len(chan.receive(HOST)) == 1


@pytest.mark.parametrize("harm", ["missing", "changed"])
def test_a_bad_part_refuses_the_approval_naming_it(parted, harm) -> None:
    store, _ = parted
    key = f"manifests/{INC}/messages-00002.parquet"
    if harm == "missing":
        (store.root / key).unlink()
    else:
        data = bytearray(store.get(key))
        data[len(data) // 2] ^= 1
        store.put(key, bytes(data))
    with pytest.raises(ManifestError) as e:
        approve(store, INC, "alice")
    assert key in str(e.value) and "\n" not in str(e.value)
    assert list(store.list(queues.approvals_prefix(INC))) == []


def test_dispatch_refuses_an_approval_whose_manifest_lost_a_part(parted, tmp_path) -> None:
    store, _ = parted
    done = approve(store, INC, "alice")
    key = f"manifests/{INC}/messages-00001.parquet"
    (store.root / key).unlink()
    chan = LocalChannel(tmp_path / "chan")
    with pytest.raises(PoisonEvent, match=key):
        dispatch(store, chan, done.key, generate_keypair()[0], "k")
    assert chan.receive(HOST) == []


def test_a_summary_whose_parts_do_not_add_up_is_refused(parted) -> None:
    store, _ = parted
    key = queues.manifest_key(INC)
    s = json.loads(store.get(key))
    s["parts"]["items"].pop()
    store.put(key, json.dumps(s).encode())
    with pytest.raises(ManifestError, match="holds 12 messages; its totals say 13"):
        ManifestReader(store, INC)


TOKEN = "t0ken-for-parts"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _console(root):
    from starlette.testclient import TestClient

    from console.app import create_app

    return TestClient(create_app(root, TOKEN, warm=False))


def test_console_pages_and_approves_over_parts(tmp_path) -> None:
    m = _manifest(29)
    put_manifest(LocalStore(tmp_path), m, per_part=4)  # 8 parts
    c = _console(tmp_path)
    base = f"/api/incidents/{INC}"
    spam = [x.id for x in m.messages if x.verdict is Verdict.spam]
    d = c.get(f"{base}/messages?verdict=spam&page=2&per_page=5", headers=AUTH).json()
    assert d["total"] == len(spam) and [x["id"] for x in d["messages"]] == spam[5:10]
    d = c.get(f"{base}/messages?q=s%C3%BCbject%2017", headers=AUTH).json()  # searched in the parts' text
    assert [x["id"] for x in d["messages"]] == ["id0017"]
    assert c.get(f"{base}/messages/id0021", headers=AUTH).json()["subject"] == m.messages[21].subject
    d = c.get(f"{base}/review-groups/1/messages?per_page=3&page=2", headers=AUTH).json()
    assert [x["id"] for x in d["messages"]] == [x.id for x in m.messages if x.review_group == 1][3:6]
    detail = c.get(base, headers=AUTH).json()
    assert detail["totals"]["spam"] == len(spam)
    s = c.get(f"{base}/approval-summary", headers=AUTH).json()
    assert (s["replay"], s["purge"], s["hold"]) == (m.totals.valid, m.totals.spam, m.totals.review)
    assert s["recipients"] == len({r for x in m.messages if x.verdict is Verdict.valid for r in x.envelope.rcpt_to})
    csrf = c.get("/api/session", headers=AUTH).json()["csrf"]
    r = c.post(f"{base}/approve", headers={**AUTH, "X-CSRF-Token": csrf}, json={"digest": s["digest"], "by": "al"})
    assert r.status_code == 201, r.text
    [key] = list(LocalStore(tmp_path).list(queues.approvals_prefix(INC)))
    a = json.loads(LocalStore(tmp_path).get(key))
    assert (len(a["replay"]), len(a["purge"]), len(a["hold"])) == (m.totals.valid, m.totals.spam, m.totals.review)


def test_console_says_which_part_is_missing(tmp_path) -> None:
    put_manifest(LocalStore(tmp_path), _manifest(), per_part=4)
    key = f"manifests/{INC}/messages-00001.parquet"
    (tmp_path / key).unlink()
    c = _console(tmp_path)
    r = c.get(f"/api/incidents/{INC}/messages", headers=AUTH)
    assert r.status_code == 500 and key in r.json()["error"]
    [row] = c.get("/api/incidents", headers=AUTH).json()["incidents"]
    assert row["status"] == "unreadable manifest" and key in row["error"]


def test_dispatch_cuts_the_same_instructions_as_a_whole_approval(parted, tmp_path) -> None:
    """Streamed, an approval of many messages becomes the same signed parts as the whole one did; an honest
    approval in an older layout (indented) is still read whole and signed."""
    from pipeline.instructions import instruction_from_approval
    from pipeline.service.dispatch import split

    store, m = parted
    done = approve(store, INC, "alice")
    a = Approval.model_validate_json(store.get(done.key))
    now = datetime(2026, 3, 2, tzinfo=UTC)
    want = split(instruction_from_approval(a, issued_at=now, ttl=timedelta(hours=48)), budget=4_000)
    assert len(want) > 2
    priv, _ = generate_keypair()
    for layout in ("canonical", "indented"):
        if layout == "indented":
            store.put(done.key, a.model_dump_json(indent=1).encode())
            for k in list(store.list("instructions/")):
                (store.root / k).unlink()
        chan = LocalChannel(tmp_path / layout)
        r = dispatch(store, chan, done.key, priv, "k", now=now, budget=4_000)
        assert f"in {len(want)} part(s)" in r.summary
        got = [json.loads(json.loads(x.body)["payload"]) for x in chan.receive(HOST, max_messages=100)]
        assert sorted(got, key=lambda x: x["instruction_id"]) == [json.loads(x.model_dump_json()) for x in want]
