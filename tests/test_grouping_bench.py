"""The grouping benchmark scores groupings right and runs end to end on a small incident."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bench.grouping_bench import grouping_figures, main
from pipeline.models import Verdict


def _truth(spec: list[tuple[str, str | None, str]]) -> dict[str, dict]:
    return {p: {"path": p, "label": "spam", "kind": kind, "campaign": c} for p, c, kind in spec}


def _manifest(pred: dict[str, int | None], verdict: dict[str, Verdict] | None = None) -> list[SimpleNamespace]:
    return [SimpleNamespace(path=p, campaign=c, verdict=(verdict or {}).get(p, Verdict.spam)) for p, c in pred.items()]


TRUTH = _truth([*((f"a{i}", "c1", "relayed_spam") for i in range(25)), *((f"b{i}", "c2", "relayed_spam")
               for i in range(5)), ("x", None, "inbound"), ("bs", "c1", "backscatter")])


def test_perfect_grouping():
    pred = {p: (1 if t["campaign"] == "c1" else 2 if t["campaign"] == "c2" else None) for p, t in TRUTH.items()}
    pred["bs"] = None  # backscatter is not scored as a copy: it follows by verdict
    f = grouping_figures(_manifest(pred), TRUTH)
    assert f["homogeneity"] == pytest.approx(1) and f["completeness"] == pytest.approx(1)
    assert f["completeness_big"] == pytest.approx(1) and f["ungrouped_share"] == 0
    assert f["campaign_copies"] == 30 and f["true_campaigns"] == 2 and f["largest_campaign"] == 25
    assert f["backscatter_with_campaign_share"] == 0 and f["backscatter_spam_share"] == 1  # the bounce is alone
    pred["bs"] = 1
    f = grouping_figures(_manifest(pred), TRUTH)
    assert f["backscatter_with_campaign_share"] == 1


def test_ungrouped_and_merged():
    alone = {p: None for p in TRUTH}
    f = grouping_figures(_manifest(alone, {"bs": Verdict.valid}), TRUTH)
    assert f["ungrouped_share"] == 1 and f["completeness"] < 0.5 and f["homogeneity"] == pytest.approx(1)
    assert f["backscatter_with_campaign_share"] == 0 and f["backscatter_spam_share"] == 0
    merged = {p: 1 for p in TRUTH}
    g = grouping_figures(_manifest(merged), TRUTH)
    assert g["homogeneity"] < 0.5 and g["completeness"] == pytest.approx(1) and g["ungrouped_share"] == 0
    # the big campaign split in two: completeness over campaigns >= 20 copies says so
    split = {p: (1 if p.startswith("a") and int(p[1:]) < 12 else 3 if p.startswith("a") else 2) for p in TRUTH}
    assert grouping_figures(_manifest(split), TRUTH)["completeness_big"] < 0.8


def test_runs_of_one_text_merged():
    """Two runs built from one source text, grouped as one: homogeneity counts the merge, the score with
    runs of one text as one does not; two runs of two texts merged count in both."""
    truth = {p: dict(t, source="s1") if t["campaign"] in ("c1", "c2") else t for p, t in TRUTH.items()}
    truth["bs"].pop("source")
    merged = {p: 1 for p in truth}
    f = grouping_figures(_manifest(merged), truth)
    assert f["homogeneity"] < 0.5 and f["homogeneity_text"] == pytest.approx(1) and f["runs_sharing_text"] == 2
    truth.update({p: dict(t, source="s2") for p, t in truth.items() if t["campaign"] == "c2" and "source" in t})
    g = grouping_figures(_manifest(merged), truth)
    assert g["homogeneity_text"] < 0.5 and g["runs_sharing_text"] == 0
    # without sources in the truth (the original generator), the two scores agree
    h = grouping_figures(_manifest(merged), TRUTH)
    assert h["homogeneity_text"] == pytest.approx(h["homogeneity"]) and h["runs_sharing_text"] == 0


def test_a_bounce_in_the_group_of_another_run_of_its_text():
    """Two runs of one source text grouped apart: a bounce quoting the first, placed with the second, is not
    with its campaign, but is with a run of its text; placed with a run of another text, it is neither."""
    truth = {p: dict(t, source="s1") for p, t in TRUTH.items() if t["campaign"] in ("c1", "c2")}
    truth["x"] = TRUTH["x"]
    truth.update({f"d{i}": {"path": f"d{i}", "label": "spam", "kind": "relayed_spam", "campaign": "c3",
                            "source": "s2"} for i in range(5)})
    pred = {p: {"c1": 1, "c2": 2, "c3": 3}.get(t["campaign"]) for p, t in truth.items()}
    pred["bs"] = 2
    f = grouping_figures(_manifest(pred), truth)
    assert f["backscatter_with_campaign_share"] == 0 and f["backscatter_with_text_share"] == 1
    pred["bs"] = 3
    g = grouping_figures(_manifest(pred), truth)
    assert g["backscatter_with_campaign_share"] == 0 and g["backscatter_with_text_share"] == 0
    # without sources in the truth, the two shares agree
    assert grouping_figures(_manifest({**pred, "bs": 2}), TRUTH)["backscatter_with_text_share"] == 0


def test_detail_by_technique_and_way_of_quoting():
    truth = {p: dict(t, techniques=["leet"] if t["campaign"] == "c2" else ["greeting"]) for p, t in TRUTH.items()}
    truth["bs"]["techniques"] = ["quoted_gone", "truncated"]
    pred = {p: (1 if t["campaign"] == "c1" else None) for p, t in truth.items()}
    f = grouping_figures(_manifest(pred), truth)
    assert f["ungrouped_by_technique"]["leet"] == {"copies": 5, "ungrouped_share": 1.0}
    assert f["ungrouped_by_technique"]["greeting"]["ungrouped_share"] == 0
    assert f["backscatter_with_campaign_by_way"]["truncated"] == {"bounces": 1, "with_campaign_share": 1.0}


@pytest.mark.slow  # three small incidents generated and triaged
def test_bench_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "g.json"
    main(["--sizes", "200", "--seeds", "1", "--techniques", "none", "greeting", "--dir", str(tmp_path), "--json",
          str(out), "--workers", "1"])
    rows = json.loads(out.read_text())
    assert [(r["techniques"], r["size"], r["seed"]) for r in rows] == [("none", 200, 1), ("greeting", 200, 1)]
    for r in rows:
        assert r["messages"] == 200 and r["floor_messages"] == 202  # + the snapshot's index and metadata
        assert 0 <= r["homogeneity"] <= 1 and 0 <= r["completeness"] <= 1 and r["floor_seconds"] > 0
        assert r["ratio_to_floor"] == pytest.approx(r["triage_seconds"] / r["floor_seconds"])
    table = capsys.readouterr().out
    assert table.startswith("| techniques |") and "| none | 200 | 1 |" in table and "| greeting | 200 |" in table
    assert not list(tmp_path.glob("*.tar.gz"))  # incidents are deleted unless --keep
    # an IIS pickup folder: the floor reads and hashes each file
    main(["--sizes", "150", "--seeds", "2", "--techniques", "plain", "--format", "eml", "--dir", str(tmp_path),
          "--json", str(out), "--workers", "1", "--keep"])
    (row,) = json.loads(out.read_text())
    assert row["messages"] == 150 and row["floor_messages"] == 150 and row["mb"] > 0.1
    assert (tmp_path / "plain-150-2-eml").is_dir() and (tmp_path / "plain-150-2-eml.truth.jsonl").exists()
    with pytest.raises(SystemExit):
        main(["--techniques", "bogus", "--dir", str(tmp_path)])
