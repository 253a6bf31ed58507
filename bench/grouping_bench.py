"""Benchmark campaign grouping against spamware: per technique and all together, at several sizes and seeds.

    python bench/grouping_bench.py --sizes 2000 20000 --seeds 1 2 3 4 5 [--techniques all greeting ...]
                                   [--json bench-out/grouping.json]

Each incident is generated (spoolsweep's spamware generator, ground truth beside it), then in the
same process the tarfile+sha256 floor is measured (the standard library streams the archive and
hashes every member) and triage runs on it. Per run: homogeneity and completeness of the campaigns
triage found against the true ones (scikit-learn's metrics; a message triage left out of every
campaign counts as a campaign of its own), homogeneity again with the runs built from one source text
counted as one (the truth records each run's source: past the corpus's distinct spams, later runs
reuse a text, and two runs of one text and link paths are one run to any reader, the truth's split of
them none the grouping could find), completeness over the true campaigns of >= 20 copies,
the share of campaign copies left ungrouped, the share of backscatter put in the campaign its
quoted copy's siblings went to (and, as for homogeneity, in that of any run of the same source text:
a bounce quoting a few lines of one text cannot say which run of it sent them), and the share called
spam, the triage outcome (valid lost, junk
replayed, review) and the time of each stage. The JSON adds, per technique, the ungrouped share of
the copies that used it, and per way of quoting, the share of bounces with their campaign.

With --format eml the incident is an IIS pickup folder of .eml files instead, and the floor reads
and hashes each file.

A "technique set" is `all` (every technique at its usual share of campaigns), `none` (spamware
rendering without variation), `plain` (the original generator) or one technique's name (that
technique alone, used by every campaign unless --technique-rate says otherwise). Prints a markdown
table (mean over seeds, worst seed in brackets where it matters) and writes every run as JSON.
Timings on a shared machine are noisy: compare ratios to the floor, measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tarfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BIG = 20  # completeness is also reported over the true campaigns of at least this many copies


def truth_of(snap: Path) -> Path:
    """The ground truth the generator wrote beside a snapshot (NAME.tar.gz) or a queue folder (NAME)."""
    return snap.with_name(snap.name.split(".")[0] + ".truth.jsonl")


def floor_seconds(snap: Path) -> tuple[int, float]:
    """The bare cost of reading the snapshot: the standard library's tarfile streams it, sha256 hashes each member
    (a queue folder: each file read and hashed)."""
    t0 = time.perf_counter()
    n = 0
    if snap.is_dir():
        for p in sorted(snap.iterdir()):
            hashlib.sha256(p.read_bytes()).digest()
            n += 1
        return n, time.perf_counter() - t0
    with tarfile.open(snap, "r|*") as tf:
        for ti in tf:
            fh = tf.extractfile(ti) if ti.isfile() else None
            if fh is not None:
                hashlib.sha256(fh.read()).digest()
                n += 1
    return n, time.perf_counter() - t0


def grouping_figures(manifest_messages: list, truth: dict[str, dict]) -> dict:
    """Homogeneity, completeness (all, and campaigns >= BIG copies), ungrouped share, backscatter with its campaign.

    Scored over campaign copies (a bounce is scored apart: it should land in the campaign its
    quoted copy's siblings landed in). Also, in detail: the ungrouped share of the copies that used
    each technique, and per way of quoting, the share of bounces with their campaign."""
    from sklearn.metrics import completeness_score, homogeneity_score

    pred_of = {m.path: m for m in manifest_messages}

    def is_copy(t: dict) -> bool:
        return bool(t.get("campaign")) and not t["kind"].startswith(("backscatter", "local_bounce"))

    sizes = Counter(t["campaign"] for t in truth.values() if is_copy(t))
    true_l: list[str] = []
    pred_l: list[str] = []
    text_l: list[str] = []  # the run's source text where the truth records it (else the run)
    source_of: dict[str, str] = {}  # a true campaign -> its source text (else itself)
    big_true: list[str] = []
    big_pred: list[str] = []
    ungrouped = copies = 0
    found_as: dict[str, Counter] = defaultdict(Counter)  # true campaign -> the campaigns triage put its copies in
    by_tech: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # technique -> [copies, ungrouped]
    for path, t in truth.items():
        m = pred_of.get(path)
        if m is None or not is_copy(t):
            continue
        cid = t["campaign"]
        copies += 1
        if m.campaign is None:
            ungrouped += 1
            p = f"alone:{path}"  # a message in no campaign is a cluster of its own
        else:
            p = str(m.campaign)
            found_as[cid][m.campaign] += 1
        for x in t.get("techniques") or ["(none)"]:
            by_tech[x][0] += 1
            by_tech[x][1] += m.campaign is None
        true_l.append(cid)
        pred_l.append(p)
        text_l.append(source_of.setdefault(cid, t.get("source") or cid))
        if sizes[cid] >= BIG:
            big_true.append(cid)
            big_pred.append(p)
    bs = with_campaign = with_text = bs_spam = 0
    homes_of_text: dict[str, set] = defaultdict(set)  # a source text -> where its runs' copies mostly went
    for cid, found in found_as.items():
        homes_of_text[source_of[cid]].add(found.most_common(1)[0][0])
    by_way: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # way of quoting -> [bounces, with campaign]
    for path, t in truth.items():
        m = pred_of.get(path)
        if m is None or not t["kind"].startswith("backscatter") or not t.get("campaign"):
            continue
        bs += 1
        bs_spam += m.verdict.value == "spam"
        home = found_as.get(t["campaign"])
        hit = bool(home) and m.campaign is not None and m.campaign == home.most_common(1)[0][0]
        with_campaign += hit
        with_text += hit or (m.campaign is not None
                             and m.campaign in homes_of_text.get(source_of.get(t["campaign"], ""), ()))
        for x in t.get("techniques") or ["(plain)"]:
            by_way[x][0] += 1
            by_way[x][1] += hit
    return {"campaign_copies": copies, "true_campaigns": len(sizes),
            "largest_campaign": max(sizes.values(), default=0),
            "homogeneity": homogeneity_score(true_l, pred_l) if true_l else 1.0,
            "homogeneity_text": homogeneity_score(text_l, pred_l) if true_l else 1.0,
            "runs_sharing_text": _runs_sharing_text(truth),
            "completeness": completeness_score(true_l, pred_l) if true_l else 1.0,
            "completeness_big": completeness_score(big_true, big_pred) if big_true else 1.0,
            "ungrouped_share": ungrouped / max(1, copies),
            "backscatter": bs, "backscatter_with_campaign_share": with_campaign / bs if bs else 1.0,
            "backscatter_with_text_share": with_text / bs if bs else 1.0,
            "backscatter_spam_share": bs_spam / bs if bs else 1.0,
            "ungrouped_by_technique": {k: {"copies": n, "ungrouped_share": u / n} for k, (n, u) in
                                       sorted(by_tech.items())},
            "backscatter_with_campaign_by_way": {k: {"bounces": n, "with_campaign_share": w / n} for k, (n, w) in
                                                 sorted(by_way.items())}}


def _runs_sharing_text(truth: dict[str, dict]) -> int:
    """How many runs were built from a source text another run of the incident also used."""
    runs: dict[str, set[str]] = defaultdict(set)
    for t in truth.values():
        if t.get("source"):
            runs[t["source"]].add(t["campaign"])
    return sum(len(r) for r in runs.values() if len(r) > 1)


def run_one(snap: Path, policy_path: Path, workers: int) -> dict:
    """Floor, then triage, of one snapshot, in this process; the figures of that run."""
    from pipeline.generator import score
    from pipeline.policy import load_policy
    from pipeline.triage import triage

    n_floor, floor_s = floor_seconds(snap)
    policy = load_policy(policy_path)
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    last = [t0]

    def progress(stage: str, done: int, total: int | None) -> None:
        now = time.perf_counter()
        stages[stage] = stages.get(stage, 0.0) + now - last[0]
        last[0] = now

    m = triage(snap, policy, workers=workers, progress=progress)
    seconds = time.perf_counter() - t0
    stages["manifest build"] = stages.get("manifest build", 0.0) + seconds - (last[0] - t0)
    truth_path = truth_of(snap)
    truth = {}
    with open(truth_path, encoding="utf-8") as fh:
        for line in fh:
            t = json.loads(line)
            truth[t["path"]] = t
    s = score(m.messages, truth_path)
    by_kind = s.pop("by_kind")
    n_valid = sum(1 for t in truth.values() if t["label"] == "valid")
    size = sum(f.stat().st_size for f in snap.iterdir()) if snap.is_dir() else snap.stat().st_size
    return {"messages": m.totals.messages, "mb": size / 2**20, "floor_messages": n_floor,
            "floor_seconds": floor_s, "triage_seconds": seconds, "ratio_to_floor": seconds / floor_s,
            "msgs_per_s": m.totals.messages / seconds, "stages": stages, "campaigns_found": m.totals.campaigns,
            "valid_lost": s["valid_as_spam"], "valid_lost_share": s["valid_as_spam"] / max(1, n_valid),
            "junk_replayed_share": s["spam_as_valid_share"], "review_share": s["review_share"],
            **grouping_figures(m.messages, truth), "by_kind": by_kind}


def make_incident(snap: Path, n: int, seed: int, tech: str, rate: float | None, ham_spam: list) -> float:
    """Generate the incident of one run (cached); the seconds it took, 0 when it was there already."""
    from pipeline.generator import find_corpus, iter_incident, load_corpus, write_canonical, write_eml_folder
    from pipeline.spamware import TECHNIQUES

    if snap.exists() and truth_of(snap).exists():
        return 0.0
    if not ham_spam:
        ham_spam.extend(load_corpus(find_corpus()))
    ham, spam = ham_spam
    t0 = time.perf_counter()
    if tech == "plain":
        it = iter_incident(ham, spam, n=n, seed=seed, style="plain")
    else:
        techniques = list(TECHNIQUES) if tech == "all" else [] if tech == "none" else tech.split("+")
        # one technique alone: every campaign uses it, so its row shows what it does
        r = rate if rate is not None else (None if tech == "all" else 1.0)
        it = iter_incident(ham, spam, n=n, seed=seed, style="spamware", techniques=techniques, technique_rate=r)
    if snap.suffix:
        write_canonical(it, snap)
    else:  # an IIS pickup folder of .eml files
        write_eml_folder(it, snap)
    return time.perf_counter() - t0


def _fmt_share(vals: list[float], worst: float) -> str:
    return f"{mean(vals):.2%}" + (f" ({worst:.2%})" if len(vals) > 1 else "")


def _share(rs: list[dict], key: str) -> str:
    """Mean over seeds, and the lowest in brackets (for shares where more is better)."""
    return _fmt_share([r[key] for r in rs], min(r[key] for r in rs))


def _worst(rs: list[dict], key: str) -> str:
    """Mean over seeds and the lowest in brackets, of a score runs made before it existed may lack."""
    vals = [r[key] for r in rs if key in r]
    return f"{mean(vals):.3f} ({min(vals):.3f})" if vals else "-"


def table(rows: list[dict]) -> str:
    """Markdown: one line per technique set and size, mean over seeds (worst seed in brackets)."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["techniques"], r["size"])].append(r)
    head = ("| techniques | messages | seeds | homogeneity | homogeneity, runs of one text as one | "
            "runs sharing a text | completeness | completeness ≥20 | ungrouped | "
            "valid lost | junk replayed | review | backscatter with campaign / with a run of its text / spam | "
            "triage s | floor s | × floor | "
            "stages (s) |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for (tech, size), rs in groups.items():
        stages: dict[str, list[float]] = defaultdict(list)
        for r in rs:
            for k, v in r["stages"].items():
                stages[k].append(v)
        out.append(
            f"| {tech} | {size:,} | {len(rs)} | {mean(r['homogeneity'] for r in rs):.3f} "
            f"({min(r['homogeneity'] for r in rs):.3f}) | {_worst(rs, 'homogeneity_text')} | "
            f"{mean(r.get('runs_sharing_text', 0) for r in rs):.0f} "
            f"({max(r.get('runs_sharing_text', 0) for r in rs)}) | "
            f"{mean(r['completeness'] for r in rs):.3f} "
            f"({min(r['completeness'] for r in rs):.3f}) | {mean(r['completeness_big'] for r in rs):.3f} "
            f"({min(r['completeness_big'] for r in rs):.3f}) | "
            f"{_fmt_share([r['ungrouped_share'] for r in rs], max(r['ungrouped_share'] for r in rs))} | "
            f"{sum(r['valid_lost'] for r in rs)} | "
            f"{_fmt_share([r['junk_replayed_share'] for r in rs], max(r['junk_replayed_share'] for r in rs))} | "
            f"{_fmt_share([r['review_share'] for r in rs], max(r['review_share'] for r in rs))} | "
            f"{_share(rs, 'backscatter_with_campaign_share')} / {_share(rs, 'backscatter_with_text_share')} / "
            f"{_share(rs, 'backscatter_spam_share')}"
            f" | {mean(r['triage_seconds'] for r in rs):.1f} | {mean(r['floor_seconds'] for r in rs):.2f} | "
            f"{mean(r['ratio_to_floor'] for r in rs):.0f}× ({max(r['ratio_to_floor'] for r in rs):.0f}×) | "
            + ", ".join(f"{k} {mean(v):.1f}" for k, v in stages.items()) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    from pipeline.generator import POLICY_TOML
    from pipeline.spamware import TECHNIQUES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--techniques", nargs="+", default=["all", "each"],
                    help="technique sets: all, none, plain, each (every technique alone), a technique name, "
                         f"or names joined by + (known: {', '.join(TECHNIQUES)})")
    ap.add_argument("--technique-rate", type=float, default=None,
                    help="share of campaigns that use each technique (default: usual shares for 'all', "
                         "every campaign for a single technique)")
    ap.add_argument("--format", choices=["canonical", "eml"], default="canonical",
                    help="a canonical snapshot (.tar.gz), or an IIS queue folder of .eml files")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=ROOT / "bench-out" / "grouping")
    ap.add_argument("--json", type=Path, default=None, help="write every run here (default DIR/grouping.json)")
    ap.add_argument("--keep", action="store_true", help="keep the generated incidents (they are deleted after use)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="generate the incidents first, this many at a time in processes of their own, then measure")
    ap.add_argument("--generate-only", action="store_true", help="generate the incidents (with --jobs) and stop")
    a = ap.parse_args(argv)
    sets: list[str] = []
    for t in a.techniques:
        if t == "each":
            sets.extend(x for x in TECHNIQUES if x not in sets)
        elif t in ("all", "none", "plain") or all(x in TECHNIQUES for x in t.split("+")):
            if t not in sets:
                sets.append(t)
        else:
            ap.error(f"unknown technique set {t!r} (known: all, none, plain, each, {', '.join(TECHNIQUES)})")
    a.dir.mkdir(parents=True, exist_ok=True)
    policy = a.dir / "site.toml"
    policy.write_text(POLICY_TOML)
    rows: list[dict] = []
    ham_spam: list = []
    out_json = a.json or a.dir / "grouping.json"
    runs = [(a.dir / (f"{tech}-{size}-{seed}" + (".tar.gz" if a.format == "canonical" else "-eml")), size, seed, tech)
            for size in a.sizes for tech in sets for seed in a.seeds]
    gen_seconds: dict[Path, float] = {}
    if a.jobs > 1 or a.generate_only:
        # every incident first, a process each (one incident stays one seeded stream: the same bytes);
        # then the measurements one at a time, so they do not compete with each other
        todo = [r for r in runs if not (r[0].exists() and truth_of(r[0]).exists())]
        with ProcessPoolExecutor(max_workers=max(1, a.jobs)) as ex:
            futures = {ex.submit(make_incident, snap, size, seed, tech, a.technique_rate, []): snap
                       for snap, size, seed, tech in todo}
            for f in as_completed(futures):
                gen_seconds[futures[f]] = f.result()
                print(f"generated {futures[f].name} in {gen_seconds[futures[f]]:.1f}s", file=sys.stderr, flush=True)
        if a.generate_only:
            return
    for snap, size, seed, tech in runs:
        gen_s = gen_seconds.get(snap) or make_incident(snap, size, seed, tech, a.technique_rate, ham_spam)
        row = {"techniques": tech, "size": size, "seed": seed, "generate_seconds": gen_s,
               "generate_msgs_per_s": size / gen_s if gen_s else None,
               **run_one(snap, policy, a.workers)}
        rows.append(row)
        print(f"{tech:>14} {size:>7,} seed {seed}: H {row['homogeneity']:.3f} (runs of one text as one "
              f"{row['homogeneity_text']:.3f}, {row['runs_sharing_text']} runs share a text) "
              f"C {row['completeness']:.3f} "
              f"C>={BIG} {row['completeness_big']:.3f} ungrouped {row['ungrouped_share']:.2%} "
              f"valid lost {row['valid_lost']} junk replayed {row['junk_replayed_share']:.2%} "
              f"review {row['review_share']:.2%} triage {row['triage_seconds']:.1f}s "
              f"({row['ratio_to_floor']:.0f}x floor {row['floor_seconds']:.2f}s; generated in "
              f"{gen_s:.1f}s, {row['mb']:.0f} MB); stages "
              + ", ".join(f"{k} {v:.1f}s" for k, v in row["stages"].items()), file=sys.stderr, flush=True)
        if not a.keep:
            if snap.is_dir():
                shutil.rmtree(snap)
            snap.unlink(missing_ok=True)
            truth_of(snap).unlink(missing_ok=True)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(rows, indent=1))  # after every run: a long bench cut off keeps its rows
    print(table(rows))


if __name__ == "__main__":
    main()
