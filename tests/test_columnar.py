"""Parsed shards as columns: records round-trip exactly, and the plan step gives prepare's order and
ids, the effective policy and the grouping labels, however the incident is cut into shards."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline import columnar
from pipeline.archive import ArchiveReport
from pipeline.campaigns import attach_quoted, client_codes, client_evidence, features_of
from pipeline.clusterer import CampaignClusterer
from pipeline.errors import ShardError
from pipeline.generator import generate, write_canonical
from pipeline.models import Envelope, ParsedRecord, RawMessage, ReceivedHop
from pipeline.parse import parse_found
from pipeline.plan import COLUMNS, apply, load_plan, plan_step, rows_bytes, summary_bytes, write_plan
from pipeline.policy import SitePolicy
from pipeline.readers import read_snapshot
from pipeline.readers.base import Found
from pipeline.sitepolicy import effective_policy
from pipeline.store import LocalStore
from pipeline.triage import parse_all, prepare


@pytest.fixture(scope="module")
def corpus_records(corpus, policy) -> list[ParsedRecord]:
    """The packaged corpus's 600 real messages, parsed."""
    ham, spam = corpus
    out = []
    for kind, msgs in (("ham", ham), ("spam", spam)):
        for i, data in enumerate(msgs):
            found = Found(RawMessage(path=f"{kind}/{i:04d}.eml"), data, hashlib.sha256(data).hexdigest(), len(data))
            out.append(parse_found(found, policy))
    return out


@pytest.fixture(scope="module")
def spamware(corpus, policy, tmp_path_factory) -> list[ParsedRecord]:
    """A 2,000-message spamware incident (campaigns, bounces, a stolen account), parsed in archive order."""
    ham, spam = corpus
    tar = write_canonical(generate(ham, spam, n=2000, seed=3, style="spamware"),
                          tmp_path_factory.mktemp("sw") / "sw.tar.gz")
    _, found, _ = read_snapshot(tar, policy.limits, report=ArchiveReport())
    return parse_all(found, policy, workers=1)


def _same(a: list[ParsedRecord], b: list[ParsedRecord]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.model_dump() == y.model_dump(), x.path


def test_records_round_trip_exactly(corpus_records) -> None:
    data = columnar.shard_bytes(corpus_records)
    assert columnar.is_parquet(data) and columnar.num_rows(data) == len(corpus_records)
    _same(columnar.read_records(data), corpus_records)
    # some rows, in the order asked
    assert [r.path for r in columnar.read_records(data, [5, 2])] == [corpus_records[5].path, corpus_records[2].path]
    # the bytes depend on the records only
    assert columnar.shard_bytes(corpus_records) == data


@pytest.mark.slow
def test_spamware_records_round_trip_exactly(spamware) -> None:
    _same(columnar.read_records(columnar.shard_bytes(spamware)), spamware)


def test_odd_values_round_trip() -> None:
    """A sketch that is not a standard one stays in the record; quotes, newlines, non-ASCII, nulls."""
    base = dict(path='q/"x"\n\u00e9', sha256="0" * 64, size=1, format="eml", envelope=Envelope(mail_from=""))
    recs = [ParsedRecord(**base, sketch=[1, 2, 3], text="caf\u00e9 \U0001f600 \\ \"", keys=["u:a", "u:a"]),
            ParsedRecord(**base, sketch=[2**32 - 1] * 64, received=[ReceivedHop(by=None)]),
            ParsedRecord(**{**base, "path": "m2"})]
    _same(columnar.read_records(columnar.shard_bytes(recs)), recs)
    assert columnar.read_records(columnar.shard_bytes([])) == []


def test_shards_written_before_are_read(corpus_records) -> None:
    legacy = zstandard.ZstdCompressor().compress(b"".join(r.model_dump_json().encode() + b"\n"
                                                          for r in corpus_records[:50]))
    _same(columnar.read_records(legacy), corpus_records[:50])
    new = columnar.read_columns(columnar.shard_bytes(corpus_records[:50]), columnar.SCHEMA.names)
    assert columnar.read_columns(legacy, columnar.SCHEMA.names).equals(new)


def test_shards_written_before_the_client_columns_are_read(spamware, policy) -> None:
    """A Parquet shard written before the client columns and `bounce` (an upgrade while an incident is
    triaged): they are worked out from its records, the same as a new shard stores them, and the plan is the
    same."""
    def without_clients(data: bytes) -> bytes:
        t = pq.read_table(pa.BufferReader(data))
        return columnar.parquet_bytes(t.drop_columns(list(columnar.LATER)))

    fresh = _cut(spamware, 3)
    old = {s: without_clients(d) for s, d in fresh.items()}
    some = next(iter(fresh))
    assert "client" not in pq.read_schema(pa.BufferReader(old[some])).names
    for cols, rows in ((columnar.LATER, None), (["path", "quoted_hops", "client", "bounce"], [5, 1, 2])):
        assert columnar.read_columns(old[some], cols, rows).equals(columnar.read_columns(fresh[some], cols, rows))
    assert _plan_per_id(old, policy)[1] == _plan_per_id(fresh, policy)[1]


def test_the_plans_grouping_knows_the_bounces(spamware) -> None:
    """The clusterer counts a copy and the bounces quoting it as one copy: the plan's grouping, read from
    the shards' columns, says which messages are bounces, as the records do."""
    tables = [columnar.read_columns(columnar.shard_bytes(spamware[a:b]), columnar.GROUPING)
              for a, b in ((0, 700), (700, len(spamware)))]
    g = columnar.grouping(tables)
    assert g.bounce is not None and g.bounce.tolist() == [r.bounce for r in spamware] and g.bounce.any()


def test_a_bad_shard_is_named() -> None:
    with pytest.raises(ShardError, match="parsed shard cannot be read"):
        columnar.read_records(b"PAR1 not really")
    with pytest.raises(ShardError, match="parsed shard cannot be read"):
        columnar.read_records(b"junk")


def test_sketches_and_digests_come_back_as_arrays(corpus_records) -> None:
    t = columnar.read_columns(columnar.shard_bytes(corpus_records), ["sketch", "digest"], rows=range(10, 40))
    S, has = columnar.sketch_matrix(t.column("sketch"))
    for i, r in enumerate(corpus_records[10:40]):
        assert has[i] == bool(r.sketch) and (not r.sketch or S[i].tolist() == r.sketch)
    assert len(set(columnar.digests(t.column("digest")).tolist())) == len({(r.text, tuple(r.keys), r.shape,
                                                                             tuple(r.sketch))
                                                                            for r in corpus_records[10:40]})


def _cut(records: list[ParsedRecord], n: int) -> dict[str, bytes]:
    step = -(-len(records) // n)
    return {f"mx1.s.part-{i + 1:04d}-of-{n:04d}": columnar.shard_bytes(records[i * step:(i + 1) * step])
            for i in range(n)}


def _plan_per_id(shards: dict[str, bytes], policy: SitePolicy):
    plan = plan_step("inc", list(shards), shards.__getitem__, policy)
    out = {}
    for s, data in shards.items():
        recs = columnar.read_records(data)
        rows = plan.rows[s]
        apply(recs, rows)
        for r, pos, lab, camp in zip(recs, rows.position.tolist(), rows.label.tolist(), rows.campaign.tolist(),
                                     strict=True):
            out[r.id] = (pos, lab, camp, r.defects)
    return plan, out


def _partition(labels_by_id: dict[str, int]) -> set[frozenset[str]]:
    groups = defaultdict(set)
    for i, lab in labels_by_id.items():
        groups[lab].add(i)
    return {frozenset(g) for g in groups.values()}


@pytest.mark.slow
def test_plan_is_prepare_and_the_clusterer_however_cut(spamware, policy) -> None:
    records = [r.model_copy(deep=True) for r in spamware]
    # two members under one name, and one member stored twice: prepare's duplicate flags and ids
    records.append(records[7].model_copy(update={"sha256": "f" * 64}))
    records.append(records[9].model_copy(deep=True))
    plan1, one = _plan_per_id(_cut(records, 1), policy)
    plan5, five = _plan_per_id(_cut(records, 5), policy)
    assert one == five
    assert plan1.campaign_sizes == plan5.campaign_sizes and plan1.policy_info == plan5.policy_info

    ref = [r.model_copy(deep=True) for r in records]
    prepare(ref)
    assert len(one) == len(ref) == len(records)
    for pos, r in enumerate(ref):
        assert one[r.id][0] == pos and one[r.id][3] == r.defects
    assert sum("duplicate member name" in " ".join(d) for *_, d in one.values()) == 4
    used, info = effective_policy(policy, None, None, ref)
    assert plan1.policy == used and plan1.policy_info == info
    labels = CampaignClusterer(threshold=used.thresholds.campaign_similarity).fit(
        [features_of(r) for r in ref]).labels_
    # then the bounces quoting too few words follow the client they quote
    clients, hops, quoted = zip(*map(client_evidence, ref), strict=True)
    moved = attach_quoted(labels, *client_codes(clients, hops, quoted, used))
    assert (moved != labels).any()  # this incident has such bounces
    labels = moved
    assert {r.id: one[r.id][1] for r in ref} == {r.id: int(lab) for r, lab in zip(ref, labels, strict=True)}
    # campaigns: the groups of at least campaign_min_size, numbered by size
    sizes = np.bincount(labels)
    assert plan1.campaign_sizes == sorted(sizes[sizes >= used.thresholds.campaign_min_size].tolist(), reverse=True)
    assert len(_partition({i: v[1] for i, v in one.items()})) == len(set(labels.tolist()))


def test_the_plan_is_stored_and_loaded(corpus_records, policy, tmp_path) -> None:
    shards = _cut(corpus_records, 3)
    plan = plan_step("inc", list(shards), shards.__getitem__, policy, "site.toml")
    store = LocalStore(tmp_path)
    keys = write_plan(store, plan)
    assert keys[-1] == "state/inc/triage/plan.json"
    back = load_plan(store, "inc")
    assert (back.shards, back.messages, back.policy, back.policy_info, back.campaign_sizes) == (
        plan.shards, plan.messages, plan.policy, plan.policy_info, plan.campaign_sizes)
    assert back.policy.digest() == plan.policy.digest()
    for s in shards:
        a, b = plan.rows[s], back.rows[s]
        assert a.ids() == b.ids() and all((getattr(a, f) == getattr(b, f)).all()
                                          for f in ("position", "names", "label", "campaign"))
    # records held in memory, as tables of the plan's columns: the same plan
    tables = {s: columnar.table_of(columnar.read_records(d), COLUMNS) for s, d in shards.items()}
    mem = plan_step("inc", list(shards), tables.__getitem__, policy, "site.toml")
    assert summary_bytes(mem) == summary_bytes(plan) and all(rows_bytes(mem.rows[s]) == rows_bytes(plan.rows[s])
                                                             for s in shards)
    one = load_plan(store, "inc", [plan.shards[1]])
    assert list(one.rows) == [plan.shards[1]]
    # written again, the same bytes
    before = {k: store.get(k) for k in keys}
    write_plan(store, plan_step("inc", list(shards), shards.__getitem__, policy, "site.toml"))
    assert {k: store.get(k) for k in keys} == before


def test_a_plan_over_an_empty_shard_and_one_written_before(corpus_records, policy) -> None:
    """An unreadable snapshot's shard holds no record; a shard parsed before is JSON lines: neither changes
    the plan of the others."""
    recs = corpus_records[:120]
    new = _cut(recs, 2)
    legacy = dict(new)
    first = next(iter(legacy))
    legacy[first] = zstandard.ZstdCompressor().compress(b"".join(r.model_dump_json().encode() + b"\n"
                                                                 for r in recs[:60]))
    legacy["mx1.empty"] = columnar.shard_bytes([])
    a = plan_step("inc", list(new), new.__getitem__, policy)
    b = plan_step("inc", list(legacy), legacy.__getitem__, policy)
    assert b.messages == [60, 60, 0] and len(b.rows["mx1.empty"]) == 0
    assert a.campaign_sizes == b.campaign_sizes and a.policy_info == b.policy_info
    for s in new:
        assert rows_bytes(a.rows[s]) == rows_bytes(b.rows[s])
    assert plan_step("inc", [], {}.__getitem__, policy).total == 0


def test_parser_processes_write_the_shards_records_would(corpus, policy, tmp_path, monkeypatch) -> None:
    """The spill's route (pipeline.service.parse.parse_into_shards): parser processes return chunks as
    columns and write the shards' files themselves, the window full across shard ends; each shard is the
    bytes `shard_bytes` makes of the same messages' records, whether on a pool or here."""
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.service import parse
    from pipeline.service.parse import parse_into_shards

    monkeypatch.setattr(parse, "CHUNK", 16)
    ham, spam = corpus

    def found() -> list[Found]:  # afresh for each route: parse_found fills in an inferred envelope in place
        return [Found(RawMessage(path=f"m/{i:04d}.eml"), d, hashlib.sha256(d).hexdigest(), len(d))
                for i, d in enumerate((ham + spam)[::6])]

    size = 40  # shards end inside a chunk, and the last one is short
    records = [parse_found(f, policy) for f in found()]
    expect = [columnar.shard_bytes(records[i:i + size]) for i in range(0, len(records), size)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        (tmp_path / "pool").mkdir()
        on_pool = parse_into_shards(iter(found()), policy, size, tmp_path / "pool", pool, workers=2)
    (tmp_path / "here").mkdir()
    here = parse_into_shards(iter(found()), policy, size, tmp_path / "here")
    for written in (on_pool, here):
        assert [n for _, n in written] == [40, 40, 20]
        assert [p.read_bytes() for p, _ in written] == expect
    (tmp_path / "none").mkdir()
    assert parse_into_shards(iter([]), policy, size, tmp_path / "none") == []


def test_the_spill_parses_and_writes_with_the_collector_paused(corpus, policy, tmp_path, monkeypatch) -> None:
    """A parser process's tasks (a chunk parsed, a shard written) and the reading loop that hands them out
    run with the cyclic collector paused, as the in-memory triage's parser processes do, and leave it as
    they found it."""
    import gc

    from pipeline.service import parse

    seen: list[bool] = []
    real_parse, real_bytes = parse.parse_found, parse.parquet_bytes
    monkeypatch.setattr(parse, "parse_found", lambda f, p: (seen.append(gc.isenabled()), real_parse(f, p))[1])
    monkeypatch.setattr(parse, "parquet_bytes", lambda t: (seen.append(gc.isenabled()), real_bytes(t))[1])
    ham, _ = corpus
    found = [Found(RawMessage(path=f"m/{i:04d}.eml"), d, hashlib.sha256(d).hexdigest(), len(d))
             for i, d in enumerate(ham[:3])]

    def reading() -> Iterator[Found]:  # the snapshot's reader, as the loop pulls it
        for f in found:
            seen.append(gc.isenabled())
            yield f

    assert gc.isenabled()
    ipc = parse.parse_chunk((found, policy))
    assert parse.write_shard(([ipc], str(tmp_path / "a.parquet"))) == 3
    (tmp_path / "b").mkdir()
    assert [n for _, n in parse.parse_into_shards(reading(), policy, 2, tmp_path / "b")] == [2, 1]
    assert gc.isenabled()
    assert len(seen) == 3 + 1 + 3 + 3 + 2 and not any(seen)


def test_a_sketch_is_packed_only_when_standard() -> None:
    """struct packs what the parser makes; anything else goes the slow way, with its old answer."""
    std = [(k * 2654435761) % 2**32 for k in range(64)]
    assert columnar._packed_sketch(std) == np.asarray(std, dtype="<u4").tobytes()
    assert columnar._packed_sketch([True] + std[1:]) == np.asarray([1] + std[1:], dtype="<u4").tobytes()
    for odd in ([-1] + std[1:], [2**32] + std[1:], [2**70] + std[1:], [1.0] + std[1:], [np.uint32(1)] * 64,
                std[:63], []):
        assert columnar._packed_sketch(odd) is None


def test_a_feature_digest_packs_its_sketch_as_before() -> None:
    import hashlib

    from pipeline.campaigns import feature_digest

    def before(text: str, keys: list[str], shape: str, sketch: list) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for part in (text, shape, *keys):
            b = part.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        h.update(len(keys).to_bytes(8, "little"))
        h.update(np.asarray(sketch, dtype="<u8").tobytes())
        return h.digest()

    std = [(k * 2654435761) % 2**32 for k in range(64)]
    for sk in (std, [], std[:5], [True] + std[1:], [np.int64(7)] * 64, [2**64 - 1] * 64, [1.5] * 64):
        assert feature_digest("t\u00e9xt", ["u:a", "k"], "s", sk) == before("t\u00e9xt", ["u:a", "k"], "s", sk)
