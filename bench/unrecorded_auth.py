"""Triage generated incidents with every SMTP AUTH account stripped, as a queue that records none holds them.

    python bench/unrecorded_auth.py [--messages 2000] [--seeds 1 2 3] [--styles plain spamware] [--shop 0]
                                    [--keep-accounts]

Sendmail 8.17 keeps no ${auth_authen}, and many configurations record no account: the organisation's
authenticated mail then looks relayed. Per incident this prints the figures that matter: valid messages
decided `spam` (must be 0), junk decided `valid` (replayed), `review`; and, for each valid message purged,
its kind and the reason that purged it. `--shop 40` with seed 1 is the demo's 2,040-message incident.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.generator import (  # noqa: E402
    POLICY_TOML,
    find_corpus,
    generate,
    load_corpus,
    without_account,
    write_canonical,
)
from pipeline.models import Verdict  # noqa: E402
from pipeline.policy import load_policy  # noqa: E402
from pipeline.triage import triage  # noqa: E402


def run(ham: list[bytes], spam: list[bytes], n: int, seed: int, style: str, shop: int, strip: bool,
        work: Path) -> dict[str, object]:
    inc = generate(ham, spam, n=n, seed=seed, style=style, shop=shop)
    msgs = [without_account(m) for m in inc.messages] if strip else inc.messages
    tar = write_canonical(msgs, work / f"{style}-{seed}.tar.gz")
    lines = tar.with_name(f"{style}-{seed}.truth.jsonl").read_text().splitlines()
    truth = {t["path"]: t for t in map(json.loads, lines)}
    policy_file = work / "site.toml"
    policy_file.write_text(POLICY_TOML)
    m = triage(tar, load_policy(policy_file), workers=1)
    purged = [(truth[x.path]["kind"], x.reasons[0].code.value) for x in m.messages
              if truth[x.path]["label"] == "valid" and x.verdict is Verdict.spam]
    return {"style": style, "seed": seed, "messages": len(m.messages), "valid_as_spam": len(purged),
            "junk_replayed": sum(1 for x in m.messages
                                 if truth[x.path]["label"] == "spam" and x.verdict is Verdict.valid),
            "review": m.totals.review, "valid": m.totals.valid, "spam": m.totals.spam,
            "purged_valid": dict(Counter(purged))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--styles", nargs="+", default=["plain", "spamware"])
    ap.add_argument("--shop", type=int, default=0)
    ap.add_argument("--keep-accounts", action="store_true", help="do not strip the accounts (the baseline)")
    ap.add_argument("--corpus", type=Path, default=None)
    a = ap.parse_args(argv)
    ham, spam = load_corpus(find_corpus(a.corpus))
    print("| style | seed | messages | valid→spam | junk replayed | review | valid | spam |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for style in a.styles:
            for seed in a.seeds:
                r = run(ham, spam, a.messages, seed, style, a.shop, not a.keep_accounts, Path(tmp))
                purged = f" {r['purged_valid']}" if r["purged_valid"] else ""
                print(f"| {style} | {seed} | {r['messages']} | {r['valid_as_spam']} | {r['junk_replayed']} | "
                      f"{r['review']} | {r['valid']} | {r['spam']} |{purged}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
