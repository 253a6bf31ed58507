"""The verdict tables: the README lists their rules as the engine reads them, and deciding changes no input."""

from __future__ import annotations

from pathlib import Path

from pipeline.models import Envelope, ParsedRecord, ReceivedHop, SnapshotInfo, Verdict
from pipeline.policy import SitePolicy
from pipeline.rules_doc import rules_markdown, section
from pipeline.triage import assign_ids, decide
from pipeline.verdicts import CAMPAIGN_RULES, MESSAGE_RULES

README = Path(__file__).resolve().parent.parent / "README.md"
POLICY = SitePolicy(local_domains=["example.org"], trusted_networks=["192.0.2.0/24", "127.0.0.0/8"],
                    server_names=["mx1.example.org"])


def test_the_readme_lists_the_rules_in_the_engines_order_and_words() -> None:
    assert section(README.read_text(encoding="utf-8")) == rules_markdown(), (
        "regenerate: python -m spoolsweep schema --rules README.md")


def test_each_table_ends_with_a_rule_that_always_holds_and_names_each_rule_once() -> None:
    for table in (CAMPAIGN_RULES, MESSAGE_RULES):
        names = [r.name for r in table]
        assert len(set(names)) == len(names)
        assert table[-1].when(None) is True  # type: ignore[arg-type]  # reads nothing
        assert table[-1].verdict is Verdict.review  # what cannot be settled is held for a human
    # only a message may take its campaign's decision: a campaign has no campaign to defer to
    assert all(r.code is not None and r.verdict is not None and r.then is not None for r in CAMPAIGN_RULES)
    # a rule gives a reason of its own (code and words), or takes its campaign's decision whole
    for r in MESSAGE_RULES:
        assert (r.code is None) == (r.then is None) and not (r.code is None and r.after_campaign), r.name


def _records() -> list[ParsedRecord]:
    # an IIS pickup folder stores no client address: triage reads it from our own Received hop
    hop = ReceivedHop(from_name="pc", from_ip="198.51.100.7", by="mx1.example.org", authenticated=True,
                      auth_user="alice")
    recs = [ParsedRecord(path=f"m{i}.eml", sha256=f"{i:064x}", size=10, format="eml", text=f"minutes of meeting {i}",
                         envelope=Envelope(mail_from="alice@example.org", rcpt_to=[f"b{i}@far.example"]),
                         received=[hop], sketch=[i, i + 1]) for i in range(6)]
    assign_ids(recs)
    return recs


def test_decide_leaves_the_records_it_is_given_as_they_were() -> None:
    recs = _records()
    before = [r.model_dump() for r in recs]
    m = decide(recs, POLICY, "inc", SnapshotInfo(source="x", format="eml"))
    assert [r.model_dump() for r in recs] == before
    # and still settled the origin from our hop, in the manifest
    assert {x.envelope.client_address for x in m.messages} == {"198.51.100.7"}
    assert {x.reasons[0].code for x in m.messages} == {"authenticated"}
    # records the caller gives up may be stripped, with the same manifest
    given = _records()
    assert decide(given, POLICY, "inc", SnapshotInfo(source="x", format="eml"), consume=True) == m
    assert all(r.text == "" and r.sketch == [] for r in given)


def test_the_schema_command_rewrites_the_rules_section_and_refuses_a_file_without_one(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from spoolsweep.cli import app

    text = README.read_text(encoding="utf-8")
    stale = tmp_path / "README.md"
    stale.write_text(text.replace(section(text), section(text).replace("→ `spam`", "→ `valid`")), encoding="utf-8")
    assert stale.read_text(encoding="utf-8") != text
    r = CliRunner().invoke(app, ["schema", "--rules", str(stale)])
    assert r.exit_code == 0, r.output
    assert stale.read_text(encoding="utf-8") == text
    bare = tmp_path / "NOTES.md"
    bare.write_text("# notes\n", encoding="utf-8")
    assert CliRunner().invoke(app, ["schema", "--rules", str(bare)]).exit_code == 1
    assert bare.read_text(encoding="utf-8") == "# notes\n"
