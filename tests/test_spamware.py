"""The spamware generator: each technique does what it says, the truth names every campaign, one seed one incident."""

from __future__ import annotations

import email
import json
import random
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from email import policy as email_policy
from pathlib import Path

import pytest

from pipeline import generator
from pipeline.generator import campaign_sizes, generate, iter_incident, spam_2, write_canonical, write_eml_folder
from pipeline.spamware import TECHNIQUES, SpamCampaign, dictionary, extract_template, parse_techniques, render

ROOT = Path(__file__).resolve().parent.parent
WHEN = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def words(corpus) -> list[str]:
    return dictionary(corpus[0])


@pytest.fixture(scope="module")
def template(corpus):
    """A real spam with several paragraphs, sentences, spinnable words and a link: every technique has work to do."""
    from pipeline.spamware import SYN

    for raw in corpus[1]:
        t = extract_template(raw)
        if (len(t.paragraphs) >= 5 and len(t.sentences) >= 8 and t.urls
                and sum(w.lower().strip(".,!?:;") in SYN for w in t.words) >= 5):
            return t
    pytest.fail("no corpus spam fits")


def _copies(template, words, uses: set[str], n: int = 24, seed: int = 5) -> list[email.message.EmailMessage]:
    c = SpamCampaign.draw("c1", template, frozenset(uses), random.Random(seed), words, rate=1.0)
    assert c.uses == frozenset(uses)
    out = []
    for i in range(n):
        rc = f"{['john', 'mary', 'olga', 'raj'][i % 4]}.doe{i}@example.com"
        copy = render(c, [rc], f"x{i}@example.net", WHEN)
        assert set(copy.techniques) <= set(uses)
        out.append(email.message_from_bytes(copy.data, policy=email_policy.default))
    return out


def _body(m: email.message.EmailMessage, ctype: str) -> str:
    for p in m.walk():
        if p.get_content_type() == ctype and not p.is_attachment():
            return p.get_content()
    return ""


def _html(m) -> str:
    return _body(m, "text/html")


def _visible(m) -> str:
    """What a reader sees: the plain-text part, or the HTML's text."""
    from pipeline.normalise import html_to_text

    return _body(m, "text/plain") or html_to_text(_html(m))


def test_no_technique_means_identical_copies(template, words):
    """The control: without techniques, copies differ only in envelope-ish headers (To, Date, Message-ID)."""
    ms = _copies(template, words, set(), n=6)
    assert len({_html(m) for m in ms}) == 1
    assert len({_visible(m) for m in ms}) == 1
    assert len({m["Subject"] for m in ms}) == 1
    assert len({m.get_boundary() for m in ms}) == 1
    assert len({m["From"].split("<")[0] for m in ms}) == 1
    assert all(len(m.get_all("Received") or []) == 0 for m in ms)
    # realistic size: several KB of HTML, not a few hundred bytes
    assert len(_html(ms[0])) >= 3000


def test_greeting_names_each_recipient(template, words):
    ms = _copies(template, words, {"greeting"})
    for m in ms:
        name = m["To"].split(".")[0].title()
        assert f" {name}," in _visible(m) and f" {name}," in _html(m)
    assert sum(m["To"].split(".")[0].title() in m["Subject"] for m in ms) >= 3  # some subjects too
    assert len({m["Subject"] for m in ms}) > 1


def test_spintax_substitutes_words(template, words):
    from pipeline.spamware import SYN

    base = [_visible(m).split() for m in _copies(template, words, set(), n=1)][0]
    ms = _copies(template, words, {"spintax"})
    texts = [_visible(m).split() for m in ms]
    assert len({" ".join(t) for t in texts}) > 1
    # the same words in number and place: only synonyms of a group swapped
    for t in texts:
        assert len(t) == len(base)
        for a, b in zip(base, t, strict=True):
            if a != b:
                assert b.lower().strip(".,!?:;") in SYN[a.lower().strip(".,!?:;")]


def test_salads_visible_and_hidden(template, words):
    vocab = set(words)
    base = Counter(_visible(_copies(template, words, set(), n=1)[0]).split())
    ms = _copies(template, words, {"salad"})
    for m in ms:
        extra = Counter(_visible(m).split()) - base
        assert sum(extra.values()) >= 20 and all(w in vocab for w in extra)
        assert _visible(m).split()[-1] in vocab  # after the signature
    hs = _copies(template, words, {"hidden_salad"})
    styles = Counter()
    for m in hs:
        h = _html(m)
        hit = re.search(r'(color:#ffffff;background:#ffffff|font-size:1px|display:none|color="#FFFFFF"|font-size:0px)'
                        r'[^>]*>([^<]+)<', h)
        assert hit and len(hit.group(2).split()) >= 30, h[-600:]
        styles[hit.group(1)] += 1
        assert hit.group(2).split()[0] not in _visible(m).split() or _body(m, "text/plain") == ""
    assert len(styles) >= 2


def test_comments_inside_words_and_between_blocks(template, words):
    ms = _copies(template, words, {"comments"})
    for m in ms:
        h = _html(m)
        assert re.search(r"\w<!--[a-z0-9]{3,10}-->\w", h)
    assert any(re.search(r"<!-- [a-z]+( [a-z]+)+ -->", _html(m)) for m in ms)


def test_shuffle_reorders_sentences_and_paragraphs(template, words):
    ms = _copies(template, words, {"shuffle"})
    texts = [_visible(m) for m in ms]
    assert len(set(texts)) > 1
    # the same words, another order
    assert len({tuple(sorted(t.split())) for t in texts}) == 1


def test_subjects_rotate_with_suffixes(template, words):
    ms = _copies(template, words, {"subjects"}, n=40)
    subjects = [m["Subject"] for m in ms]
    assert len(set(subjects)) >= len(subjects) // 2
    base = template.subject
    assert any(s.startswith(base) and s != base for s in subjects)  # a per-copy suffix on the template


def test_url_hosts_and_tokens(template, words):
    def links(m):
        return re.findall(r'href="(http://[^"]+)"', _html(m))

    hosts = {u.split("/")[2] for m in _copies(template, words, {"url_hosts"}, n=40) for u in links(m)}
    assert 2 <= len(hosts) <= 60
    tok = [links(m) for m in _copies(template, words, {"url_tokens"})]
    assert len({u.split("/")[2] for ls in tok for u in ls}) == 1  # one host...
    buttons = [re.findall(r'href="([^"]+)" class="btn"', _html(m))[0] for m in _copies(template, words, {"url_tokens"})]
    assert len(set(buttons)) == len(buttons)  # ...a link of its own per copy
    assert len({re.findall(r'href="([^"]+)" class="btn"', _html(m))[0] for m in _copies(template, words, set())}) == 1


def test_ids_per_copy(template, words):
    ms = _copies(template, words, {"ids"}, n=10)
    multi = _copies(template, words, {"ids", "attachment"}, n=10)  # a multipart skeleton, to have a boundary
    assert len({m.get_boundary() for m in multi}) == 10
    assert len({m.get_boundary() for m in _copies(template, words, {"attachment"}, n=4)}) == 1
    assert len({m["From"].split("<")[0] for m in ms}) > 1
    assert len({m["Message-ID"].split("@")[1] for m in ms}) > 1
    base = _copies(template, words, set(), n=3)
    assert len({m["Message-ID"].split("@")[1] for m in base}) == 1


def test_forged_received_chain(template, words):
    for m in _copies(template, words, {"received"}, n=8):
        hops = m.get_all("Received")
        assert 1 <= len(hops) <= 4 and all(" by " in h and "for <" in h for h in hops)


def test_leet_and_mixed_case(template, words):
    base = _visible(_copies(template, words, set(), n=1)[0]).split()
    ms = _copies(template, words, {"leet"}, n=6)
    for m in ms:
        t = _visible(m).split()
        changed = [(a, b) for a, b in zip(base, t, strict=True) if a != b]
        assert changed and all(a.lower().translate(str.maketrans("4310$57@", "aeiosste")) in (
            b.lower().translate(str.maketrans("4310$57@", "aeiosste")), b.lower()) or a.lower() == b.lower()
            or re.search(r"[4310$57@]", b) for a, b in changed)


def test_zero_width_and_entities(template, words):
    for m in _copies(template, words, {"zero_width"}, n=4):
        assert re.search("[\u200b\u200c\u200d\u2060\ufeff]", _visible(m))
    base = _html(_copies(template, words, set(), n=1)[0])
    for m in _copies(template, words, {"entities"}, n=4):
        h = _html(m)
        assert len(re.findall(r"&#x?[0-9a-f]+;", h)) > len(re.findall(r"&#x?[0-9a-f]+;", base))


def test_image_only_copies(template, words):
    ms = _copies(template, words, {"image_only"}, n=30)
    images = []
    for m in ms:
        for p in m.walk():
            if p.get_content_type() == "image/png":
                data = p.get_content()
                assert data.startswith(b"\x89PNG\r\n\x1a\n")
                images.append(data)
                assert len(_visible(m).split()) < 40  # one line of text
    assert images and len(set(images)) == len(images)


def test_attachment_bytes_differ(template, words):
    ms = _copies(template, words, {"attachment"}, n=8)
    blobs = [p.get_content() for m in ms for p in m.iter_attachments()]
    assert len(blobs) == 8 and len(set(blobs)) == 8
    assert len({m.get_content_type() for m in ms}) == 1 and ms[0].get_content_type() == "multipart/mixed"


def test_encoding_per_copy(template, words):
    def ctes(ms):
        return {p["Content-Transfer-Encoding"] for m in ms for p in m.walk() if p.get_content_maintype() == "text"}

    assert ctes(_copies(template, words, {"encoding"}, n=12)) == {"base64", "quoted-printable"}
    assert len(ctes(_copies(template, words, set(), n=6))) == 1


def test_every_technique_has_a_test():
    names = {n for n in TECHNIQUES if n != "bounce_variants"}
    src = Path(__file__).read_text()
    assert all(f'"{n}"' in src for n in names)


def test_parse_techniques():
    assert parse_techniques() == frozenset(TECHNIQUES)
    assert parse_techniques(["greeting", "leet"], ["leet"]) == {"greeting"}
    assert parse_techniques(["all"], ["ids"]) == frozenset(TECHNIQUES) - {"ids"}
    with pytest.raises(ValueError, match="bogus"):
        parse_techniques(["bogus"])


def test_campaign_sizes_heavy_tailed():
    rng = random.Random(1)
    for total in (7, 1300, 68000, 300000):
        s = campaign_sizes(rng, total)
        assert sum(s) == total and all(5 <= x <= 50000 for x in s)
    s = sorted(campaign_sizes(random.Random(2), 300000))
    assert s[-1] >= 50 * s[len(s) // 2]  # a few huge runs, many small ones


def _truth(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_truth_names_every_copys_campaign(corpus, tmp_path):
    ham, spam = corpus
    out = write_canonical(iter_incident(ham, spam, n=500, seed=3, style="spamware"), tmp_path / "inc.tar.gz")
    truth = _truth(tmp_path / "inc.truth.jsonl")
    assert len(truth) == 500 and out.exists()
    camps = Counter()
    for t in truth:
        if t["kind"] in ("relayed_spam", "stolen_account_spam", "backscatter", "backscatter_local", "newsletter"):
            assert t["campaign"], t
        elif t["kind"] in ("inbound", "outbound", "outbound_trusted", "local_bounce"):
            assert t["campaign"] is None, t
        if t["kind"] in ("relayed_spam", "stolen_account_spam"):
            camps[t["campaign"]] += 1
            assert set(t["techniques"]) <= set(TECHNIQUES)
            assert re.fullmatch(r"s\d+", t["source"]), t  # the corpus text its run was built from
        else:
            assert "source" not in t, t
    # backscatter names a campaign that exists; campaigns have at least 5 copies (stolen: 8 % of the queue)
    assert {t["campaign"] for t in truth if t["kind"].startswith("backscatter")} <= set(camps)
    assert min(camps.values()) >= 5
    used = Counter(x for t in truth for x in t["techniques"])
    assert set(TECHNIQUES) - {"bounce_variants", "image_only", "attachment"} <= set(used)
    assert {"quoted_in_queue", "quoted_gone"} <= set(used)
    assert {"truncated", "headers_only", "reencoded"} & set(used)


def test_eml_folder_truth(corpus, tmp_path):
    ham, spam = corpus
    write_eml_folder(iter_incident(ham, spam, n=100, seed=4, style="spamware"), tmp_path / "Queue")
    truth = _truth(tmp_path / "Queue.truth.jsonl")
    assert len(truth) == 100 and {t["path"] for t in truth} == {p.name for p in (tmp_path / "Queue").iterdir()}
    assert any(t["campaign"] for t in truth)


def test_deterministic_per_seed(corpus):
    ham, spam = corpus
    a = generate(ham, spam, n=150, seed=11, style="spamware").messages
    b = generate(ham, spam, n=150, seed=11, style="spamware").messages
    c = generate(ham, spam, n=150, seed=12, style="spamware").messages
    assert [m.data for m in a] == [m.data for m in b]
    assert [(m.campaign, m.techniques, m.envelope) for m in a] == [(m.campaign, m.techniques, m.envelope) for m in b]
    assert [m.data for m in a] != [m.data for m in c]


@pytest.mark.slow
def test_switch_off_reaches_the_copies(corpus):
    ham, spam = corpus
    on = generate(ham, spam, n=300, seed=2, style="spamware", techniques=["greeting", "leet"], technique_rate=1.0)
    kinds = {x for m in on.messages if m.kind == "relayed_spam" for x in m.techniques}
    assert kinds == {"greeting", "leet"}
    off = generate(ham, spam, n=300, seed=2, style="spamware", techniques=["all"])
    off_less = generate(ham, spam, n=300, seed=2, style="spamware", techniques=parse_techniques(None, ["greeting"]))
    assert any("greeting" in m.techniques for m in off.messages)
    assert not any("greeting" in m.techniques for m in off_less.messages)


@pytest.mark.slow
def test_spamware_copies_parse_and_triage_reads_them(corpus, policy):
    """Every generated copy is mail the pipeline's parser reads without a defect of the generator's making."""
    from pipeline.models import RawMessage
    from pipeline.parse import parse_found
    from pipeline.readers.base import Found

    ham, spam = corpus
    for m in iter_incident(ham, spam, n=120, seed=9, style="spamware"):
        msg = email.message_from_bytes(m.data, policy=email_policy.default)
        assert msg["Subject"] is not None and msg["From"] is not None
        for p in msg.walk():
            if p.get_content_maintype() == "text":
                p.get_content()  # decodes: base64/QP written right
        rec = parse_found(Found(RawMessage(path="x.eml", envelope=m.envelope), m.data, "0" * 64, len(m.data)), policy)
        if m.kind == "relayed_spam":
            assert rec.text, m.techniques


@pytest.mark.slow  # two processes, each loading the corpus
def test_cli_generate(tmp_path):
    r = subprocess.run([sys.executable, "-m", "spoolsweep", "generate", str(tmp_path / "i.tar.gz"), "-n", "120",
                        "-t", "greeting,subjects", "--no-technique", "subjects"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "techniques: greeting" in r.stdout
    used = {x for t in _truth(tmp_path / "i.truth.jsonl") for x in t["techniques"]}
    assert "greeting" in used and used <= {"greeting", "quoted_gone"}  # bounces without variants quote gone copies
    bad = subprocess.run([sys.executable, "-m", "spoolsweep", "generate", str(tmp_path / "j.tar.gz"), "-t", "bogus"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "bogus" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "j.tar.gz").exists()


@pytest.mark.slow  # two processes, each loading the corpus
def test_same_bytes_across_processes(tmp_path):
    """Same seed, two processes with different hash seeds: the same snapshot and truth, byte for byte."""
    import os

    outs = []
    for hs in ("1", "2"):
        out = tmp_path / hs / "inc.tar"  # uncompressed: gzip would stamp the time
        r = subprocess.run([sys.executable, "-m", "spoolsweep", "generate", str(out), "-n", "80", "--seed", "5"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONHASHSEED": hs})
        assert r.returncode == 0, r.stderr
        outs.append((out.read_bytes(), (tmp_path / hs / "inc.truth.jsonl").read_bytes()))
    assert outs[0] == outs[1]


@pytest.mark.slow
def test_cli_lists_techniques_and_needs_out():
    r = subprocess.run([sys.executable, "-m", "spoolsweep", "generate", "--list-techniques"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and [line.split()[0] for line in r.stdout.splitlines()] == list(TECHNIQUES)
    r = subprocess.run([sys.executable, "-m", "spoolsweep", "generate"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "OUT" in r.stderr and "Traceback" not in r.stderr


def test_a_technique_off_changes_only_its_own_effect(corpus):
    """Runs with and without one technique are the same incident but for that technique: comparable rows."""
    ham, spam = corpus
    on = generate(ham, spam, n=200, seed=4, style="spamware", techniques=["greeting", "bounce_variants"],
                  technique_rate=1.0).messages
    off = generate(ham, spam, n=200, seed=4, style="spamware", techniques=["bounce_variants"],
                   technique_rate=1.0).messages
    assert [(m.kind, m.campaign, m.envelope) for m in on] == [(m.kind, m.campaign, m.envelope) for m in off]
    differ = [i for i, (a, b) in enumerate(zip(on, off, strict=True)) if a.data != b.data]
    assert differ and all("greeting" in on[i].techniques or on[i].kind.startswith("backscatter") for i in differ)
    plain_bounces = generate(ham, spam, n=200, seed=4, style="spamware", techniques=["greeting"],
                             technique_rate=1.0).messages
    assert [(m.kind, m.envelope) for m in plain_bounces] == [(m.kind, m.envelope) for m in on]
    assert all(m.techniques == ("quoted_gone",) for m in plain_bounces if m.kind.startswith("backscatter"))


@pytest.mark.slow  # a 2,000-message incident
def test_no_two_campaigns_are_one_run(corpus):
    """The corpus holds several versions of some runs; two campaigns seeded from one run would make the truth wrong
    (seed 2 gave the stolen account and a relayed campaign the same "Custom Websites for $399")."""
    ham, spam = corpus
    first: dict[str, set[str]] = {}
    for m in iter_incident(ham, spam, n=3000, seed=2, style="spamware", techniques=[]):
        if m.kind in ("relayed_spam", "stolen_account_spam") and m.campaign not in first:
            msg = email.message_from_bytes(m.data, policy=email_policy.default)
            text = _visible(msg) + " " + msg["Subject"]
            first[m.campaign] = {w.lower() for w in re.findall(r"[A-Za-z]{4,}", text)}
    assert len(first) > 20
    ids = sorted(first)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            assert len(first[a] & first[b]) < 0.3 * len(first[a] | first[b]), (a, b)


def test_runs_of_one_text_share_a_source(corpus, monkeypatch):
    """Past the corpus's distinct spams later runs reuse a text: the truth says which runs share one (a 100k
    incident from the sample alone: 319 to 835 runs on 170 to 176 texts), and no two texts share a source.
    Three spams and no spam_2 make it happen at 600 messages."""
    monkeypatch.setattr(generator, "spam_2", list)
    ham, spam = corpus
    first: dict[str, set[str]] = {}
    source: dict[str, str] = {}
    for m in iter_incident(ham, spam[:3], n=600, seed=4, style="spamware", techniques=[]):
        if m.kind not in ("relayed_spam", "stolen_account_spam"):
            assert m.source is None, m.kind  # bounces and valid mail have no run of their own
            continue
        assert m.source and source.setdefault(m.campaign, m.source) == m.source  # one source a run
        if m.campaign not in first:
            msg = email.message_from_bytes(m.data, policy=email_policy.default)
            first[m.campaign] = {w.lower() for w in re.findall(r"[A-Za-z]{4,}", _visible(msg) + " " + msg["Subject"])}
    runs: dict[str, list[str]] = {}
    for c, s in source.items():
        runs.setdefault(s, []).append(c)
    assert len(source) > len(runs) and len(runs) <= 3 and max(map(len, runs.values())) >= 2
    for s, cs in runs.items():  # the runs of one source share their text; runs of two do not
        for c in cs[1:]:
            assert len(first[c] & first[cs[0]]) >= 0.3 * len(first[c] | first[cs[0]]), (s, c)
    heads = [cs[0] for cs in runs.values()]
    for i, a in enumerate(heads):
        for b in heads[i + 1:]:
            assert len(first[a] & first[b]) < 0.3 * len(first[a] | first[b]), (a, b)


def test_spam_2_gives_every_run_a_text_of_its_own(corpus):
    """The shipped spam_2 (1,396 messages) adds to the corpus's texts: three spams of the corpus and spam_2 give
    the same 600 messages a source a run, where the three alone are reused (above)."""
    ham, spam = corpus
    texts = spam_2()
    assert len(texts) == 1396 and len(set(texts)) == 1396
    assert all(t[:9] in (b"Return-Pa", b"Received:", b"X-Status:") for t in texts)  # whole messages, no From_ line
    source: dict[str, str] = {}
    for m in iter_incident(ham, spam[:3], n=600, seed=4, style="spamware", techniques=[]):
        if m.kind in ("relayed_spam", "stolen_account_spam"):
            source.setdefault(m.campaign, m.source or "")
    assert len(source) > 3 and len(set(source.values())) == len(source)
