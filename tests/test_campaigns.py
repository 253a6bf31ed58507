"""Campaign grouping against spamware: obfuscations erased, copies grouped, valid mail kept apart, any order."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from pipeline.campaigns import (
    Features,
    Grouping,
    attach_quoted,
    client_codes,
    client_evidence,
    feature_digest,
    features_of,
)
from pipeline.clusterer import CampaignClusterer
from pipeline.features import SKETCH_PERM, shape, sketch, url_keys
from pipeline.models import Envelope, RawMessage, ReasonCode, SnapshotInfo, Verdict
from pipeline.normalise import html_to_text, normalise
from pipeline.parse import parse_found
from pipeline.policy import SitePolicy
from pipeline.readers.base import Found
from pipeline.triage import decide, prepare
from tests.support.spamware import KIT, Campaign, bounce, spam_text

POLICY = SitePolicy(local_domains=["example.org"], server_names=["mx1.example.org"])
COPIES = 40


def _parse(data: bytes, mail_from: str | None = None):
    return parse_found(Found(RawMessage(path="m.eml", envelope=Envelope(mail_from=mail_from)), data, "0" * 64,
                             len(data)), POLICY)


def _feat(r) -> Features:
    return features_of(r)


def _partition(labels) -> set[frozenset[int]]:
    groups = defaultdict(set)
    for i, lab in enumerate(labels):
        groups[int(lab)].add(i)
    return {frozenset(g) for g in groups.values()}


def _build(corpus, seed: int, n: int = 5, ham: int = 60):
    """`n` campaigns of 40 hostile copies (4 image-only) from real spam drawn with `seed`, then `ham` real ham."""
    hams, spam = corpus
    texts = [spam_text(raw) for raw in spam]
    texts = [t for t in texts if len(t[1].split()) >= 120]
    rng = random.Random(seed)
    camps = [Campaign(body, subject, seed=k) for k, (subject, body) in enumerate(rng.sample(texts, n))]
    data, truth = [], []
    for k, c in enumerate(camps):
        for j in range(COPIES):
            data.append(c.copy(f"{rng.choice(['ann', 'bo.li', 'cy'])}{j}@far{j % 7}.example", image_only=j < 4))
            truth.append(k)
    for raw in hams[:ham]:
        data.append(raw)
        truth.append(-1)
    records = [_parse(d) for d in data]
    return camps, data, truth, records


@pytest.fixture(scope="module")
def runs(corpus):
    """Five campaigns of 40 hostile copies (4 of them image-only) from real spam, and 60 real ham."""
    return _build(corpus, 5)


def test_normalise_erases_obfuscations() -> None:
    clean = normalise("Cheap pills", html_to_text("<p>Buy viagra online from our pharmacy now</p>"))
    for hostile in ("<p>Buy vi<!-- x7q -->agra onl<b>i</b>ne from our pharmacy now</p>",
                    "<p>Buy v\u200bia\u200cgra online from our ph&#97;rm&#x61;cy now</p>",
                    "<p>BUY V1AGR@ 0nl1ne fr0m our Pharmacy N0W</p>",
                    "<p>Buy viagra online from our pharmacy now</p><div style=\"display:none\">walnut fjord</div>"):
        assert normalise("Cheap pills", html_to_text(hostile)) == clean, hostile
    # what is not leetspeak stays: numbers, an exclamation mark, hash-busters become one placeholder
    assert normalise("", "call now! 2026 a8f3k2x") == "call now! ztokz ztokz"


def test_a_comment_inside_a_comments_opening_does_not_cut_the_text() -> None:
    # taking <!--x--> out of lookin<<!--x-->!--y-->g leaves <!--y--> behind: read once, the text was cut there,
    # as at a comment left open (the spamware's comments in words made this of a tenth of its HTML copies)
    clean = normalise("Cheap pills", html_to_text("<p>Buy viagra online from our pharmacy now</p>"))
    for hostile in ("<p>Buy vi<<!--e751ed-->!--46bc-->agra online from our pharmacy now</p>",
                    "<p>Buy vi<<<!--a-->!--b-->!--c-->agra online from our pharmacy now</p>"):
        assert normalise("Cheap pills", html_to_text(hostile)) == clean, hostile
    # a comment left open is still cut, however it came about
    assert html_to_text("<p>Hello world</p><<!--x-->!-- p.x {font").split() == ["Hello", "world"]


@pytest.mark.slow
def test_hostile_copies_group_and_valid_mail_stays_apart(runs) -> None:
    camps, _, truth, records = runs
    labels = CampaignClusterer().fit([_feat(r) for r in records]).labels_
    by_label = defaultdict(Counter)
    for t, lab in zip(truth, labels, strict=True):
        by_label[int(lab)][t] += 1
    for k in range(len(camps)):
        mine = [lab for t, lab in zip(truth, labels, strict=True) if t == k]
        top = Counter(mine).most_common(1)[0][1]
        assert top >= 0.98 * COPIES, (k, Counter(mine))
    for lab, members in by_label.items():
        spam_runs = {t for t in members if t >= 0}
        assert len(spam_runs) <= 1, members  # no two runs in one group
        assert not (spam_runs and members[-1]), members  # no real ham with spam


def test_labels_do_not_depend_on_input_order(runs) -> None:
    *_, records = runs
    feats = [_feat(r) for r in records]
    base = _partition(CampaignClusterer().fit(feats).labels_)
    for seed in (1, 2):
        order = list(range(len(feats)))
        random.Random(seed).shuffle(order)
        labels = CampaignClusterer().fit([feats[i] for i in order]).labels_
        back = [0] * len(order)
        for pos, i in enumerate(order):
            back[i] = int(labels[pos])
        assert _partition(back) == base


def test_a_copy_folded_with_its_bounce_is_a_copy_whichever_comes_first() -> None:
    """Three copies of a message and a bounce quoting it whole are one message to the grouping (equal features).
    Whether it counted as a bounce, for the tier-1 guard between bounces of two template shapes
    (`_bounces_apart`), depended on which of them was given first: the message and four bounces of another shape
    alike to it were one group or two with the input order (at 100k, 30 copies of a valid mailing). A message
    is a bounce there only when all its copies are."""
    rng = random.Random(21)
    runs = [*_salad_run(rng, "SA", ["u:alpha.example/offer/go.asp", "p:offer/go.asp", "s:auto extended warranties"]),
            *_salad_run(rng, "SB", ["u:beta.example/w.php", "p:w.php", "s:extended warranty today"])]
    copy = Features(f"{_QUOTE} olga", sketch(f"{_QUOTE} olga"), [], "SX")
    other = Features(f"{_QUOTE} kim", sketch(f"{_QUOTE} kim"), [], "SY", True)
    assert (np.array(copy.sketch) == np.array(other.sketch)).mean() >= 0.5
    seen = set()
    for mine in ([copy, copy, copy, copy._replace(bounce=True)], [copy._replace(bounce=True), copy, copy, copy]):
        feats = [*runs, *mine, *[other] * 4]
        labels = CampaignClusterer().fit(feats).labels_
        seen.add(frozenset(_partition(labels[len(runs):])))
    assert len(seen) == 1


def _bridged(a: list, b: list, template) -> np.ndarray:
    """Labels of runs a and b with one message between them carrying both runs' texts, URLs and
    Reply-To and subject key, in `template`'s shape."""
    bridge = Features(a[0].text + " " + b[0].text, (), [*a[0].keys, *b[0].keys], template.shape)
    bridge = bridge._replace(sketch=sketch(bridge.text))
    return CampaignClusterer().fit([*map(_feat, a), bridge, *map(_feat, b)]).labels_


@pytest.mark.slow
def test_one_bridge_does_not_chain_two_runs(runs, corpus) -> None:
    # every pair of the fixture's runs, and runs drawn with other seeds; the bridge in either run's template
    cases = [runs]
    cases += [_build(corpus, seed, n=3, ham=0) for seed in (11, 23)]
    checked = 0
    for _, _, truth, records in cases:
        by_run = defaultdict(list)
        for r, t in zip(records, truth, strict=True):
            if t >= 0:
                by_run[t].append(r)
        for x, y in itertools.combinations(sorted(by_run), 2):
            a, b = by_run[x][4:], by_run[y][4:]
            for template in (a[0], b[0]):
                labels = _bridged(a, b, template)
                assert len(set(labels[: len(a)])) == 1 and len(set(labels[len(a) + 1:])) == 1
                assert labels[0] != labels[-1], (x, y)
                checked += 1
    assert checked == 2 * (10 + 3 + 3)


def test_backscatter_follows_its_campaign(runs) -> None:
    camps, data, truth, records = runs
    originals = [d for d, t in zip(data, truth, strict=True) if t == 2][10:16]
    headers_only = originals[3].index(b"\n\n")
    bounces = [bounce(originals[0], "x@far.example"), bounce(originals[1], "y@far.example", truncate=1500),
               bounce(originals[2], "z@far.example", reencode=True),
               bounce(originals[3], "w@far.example", truncate=headers_only)]
    parsed = [_parse(b, mail_from="") for b in bounces]
    assert all(p.bounce and p.bounced_original_text for p in parsed)
    assert not parsed[3].sketch  # a subject is all the headers-only quote has to say
    labels = CampaignClusterer().fit([*map(_feat, records), *map(_feat, parsed)]).labels_
    run2 = Counter(lab for lab, t in zip(labels, truth, strict=False) if t == 2).most_common(1)[0][0]
    assert [int(x) for x in labels[len(records):]] == [run2] * 4
    # the originals have left the queue: the bounces still group with one another
    alone = [_parse(bounce(d, f"u{i}@far.example", truncate=2500 if i % 2 else None), mail_from="")
             for i, d in enumerate(originals)]
    labels = CampaignClusterer().fit([*map(_feat, records[:80]), *map(_feat, alone)]).labels_
    assert len(set(labels[80:])) == 1 and labels[80] not in set(labels[:80])


def _client_cases(runs, corpus, *, ham_from_bot: bool = False, authenticated: bool = False):
    """Run 2's copies relayed from three clients that send nothing else, the other runs and the ham as
    `_relayed_runs_and` has them, and our bounce quoting one more copy of run 2 cut inside its headers,
    our Received hop in it naming one of those clients (`authenticated`: as a SMTP AUTH account);
    `ham_from_bot`: that client also sent a real message. The manifest of all of it."""
    camps, data, truth, records = runs
    bots = ["198.18.0.5", "198.18.0.6", "198.18.0.7"]
    hop = (f"Received: from bot ([{bots[0]}]) by mx1.example.org with "
           f"{'ESMTPA id X (Authenticated sender: ann)' if authenticated else 'ESMTP id X'}\n").encode()
    copy = hop + camps[2].copy("victim@far9.example")
    cut = copy.index(b"Subject:") if b"Subject:" in copy[:400] else 300  # before the subject: no text, no key
    b = _parse(bounce(copy, "forged@far.example", truncate=cut), mail_from="")
    assert b.bounce and not b.sketch and not b.keys[1:] and b.bounced_original_received[0].from_ip == bots[0]
    b = b.model_copy(update={"path": "bounce/0000.eml", "envelope": Envelope(
        mail_from="", rcpt_to=["forged@far.example"], client_address="127.0.0.1")})
    extra = [b]
    if ham_from_bot:
        extra.append(_parse(corpus[0][120]).model_copy(update={"path": "ham2/0000.eml", "envelope": Envelope(
            mail_from="h@ham.example", rcpt_to=["u@example.org"], client_address=bots[0])}))
    _, m = _relayed_runs_and(records, truth, extra, pools={2: bots})
    of_run2 = [x.campaign for x in m.messages if x.path.startswith("run/") and truth[int(x.path[4:8])] == 2]
    run2 = Counter(of_run2).most_common(1)[0][0]
    return m, run2, next(x for x in m.messages if x.path.startswith("bounce/"))


def test_a_bounce_quoting_a_copy_cut_in_its_headers_follows_the_client_that_sent_it(runs, corpus) -> None:
    """Our bounce quotes a copy cut before its Subject: no text, no key, and a header list cut short (so
    not the run's template). Our Received hop in it names the client that sent the copy, and every
    message from that client is in run 2: the bounce joins run 2 and is spam with it (before: apart)."""
    m, run2, b = _client_cases(runs, corpus)
    assert run2 is not None and b.campaign == run2 and b.verdict is Verdict.spam


@pytest.mark.parametrize("case", ["ham_from_bot", "authenticated"])
def test_a_bounce_follows_a_client_only_where_that_client_is_one_runs(runs, corpus, case: str) -> None:
    """The same bounce stays apart when that client also sent a message outside run 2, or when our hop
    shows it authenticated (our users' mail comes that way; a stolen account is judged by its copies)."""
    m, run2, b = _client_cases(runs, corpus, **{case: True})
    assert b.campaign != run2
    assert {x.verdict for x in m.messages if x.path.startswith("ham2/")} <= {Verdict.valid}


def test_bounces_following_a_client_never_make_its_real_mail_spam(runs, corpus) -> None:
    """A client that delivers a newsletter to our users also relayed mail that bounced, cut in its headers:
    the bounces follow that client into the newsletter's group, and there outnumber it (the group is then
    a backscatter campaign, spam). The newsletter's copies only came in, from a client that sent no spam
    campaign out: they are held for review (inbound_in_spam_campaign), never purged; the bounces are spam."""
    camps, data, truth, records = runs
    partner = "198.18.0.9"
    news = _parse(corpus[0][110]).model_copy(update={"envelope": Envelope(
        mail_from="news@partner.example", rcpt_to=["ann@example.org"], client_address=partner)})
    extra = [news.model_copy(update={"path": f"news/{j:04d}.eml"}) for j in range(5)]
    for j in range(6):
        hop = f"Received: from partner ([{partner}]) by mx1.example.org with ESMTP id Q{j}\n".encode()
        copy = hop + f"From: <x{j}@partner.example>\nTo: <far{j}@far.example>\nDate: now\n".encode()
        b = _parse(bounce(copy, f"x{j}@partner.example", truncate=len(copy) - 10), mail_from="")
        assert not b.sketch and b.bounced_original_received[0].from_ip == partner
        extra.append(b.model_copy(update={"path": f"bounce/{j:04d}.eml", "envelope": Envelope(
            mail_from="", rcpt_to=[f"x{j}@partner.example"], client_address="127.0.0.1")}))
    verdicts, m = _relayed_runs_and(records, truth, extra)
    assert len({x.campaign for x in m.messages if x.path.startswith(("news/", "bounce/"))}) == 1  # one group
    assert verdicts[("news", Verdict.review)] == 5 and verdicts[("bounce", Verdict.spam)] == 6


def test_client_codes_read_our_own_hop_only() -> None:
    """A message's client: the queue's, else the one our Received hop names (not a hop below it, anyone
    writes those). A bounce's quoted client: from our hop in the quote, below the hop of the server that
    bounced it back to us; none when our hop shows SMTP AUTH or a trusted network, or is missing."""
    policy = SitePolicy(local_domains=["example.org"], server_names=["mx1.example.org"],
                        trusted_networks=["192.0.2.0/24"])
    from pipeline.models import ReceivedHop
    from pipeline.origin import hop_of, hop_text

    def q(by: str, ip: str, auth: bool = False) -> str:
        return hop_text(ReceivedHop(by=by, from_ip=ip, from_name="h", authenticated=auth))

    clients = ["203.0.113.5", None, None, None, None, None, None]
    hops = [None, ["mx1.example.org\t198.51.100.7", "bot\t203.0.113.99"], ["relay.far.example\t203.0.113.99"],
            None, None, None, None]
    quoted = [None, None, None,
              [q("mx.far.example", "192.0.2.25"), q("mx1.example.org", "198.51.100.7")],  # bounced back to us
              [q("mx1.example.org", "198.51.100.8", auth=True)],  # our user, authenticated
              [q("mx1.example.org", "192.0.2.9")],  # from our trusted network
              [q("relay.far.example", "203.0.113.5")]]  # no hop of ours: nothing to go by
    client, quote = client_codes(clients, hops, quoted, policy)
    assert (client >= 0).tolist() == [True, True, False, False, False, False, False]
    assert quote.tolist()[:3] == [-1, -1, -1] and quote[3] == client[1] and quote.tolist()[4:] == [-1, -1, -1]
    # numbers shared across calls (a shard at a time) when the same dict is given
    codes: dict[str, int] = {}
    a, _ = client_codes(clients[:2], hops[:2], quoted[:2], policy, codes)
    _, b = client_codes(clients[2:], hops[2:], quoted[2:], policy, codes)
    assert b[1] == a[1] == client[1]
    # a shard parsed before the hops were written whole ("by<TAB>ip<TAB>1 if authenticated, else 0") reads the same
    old = [[h.rsplit("\t", 3)[0] + ("\t1" if hop_of(h).authenticated else "\t0") for h in x] if x else None
           for x in quoted]
    assert old[4] == ["mx1.example.org\t198.51.100.8\t1"]
    assert client_codes(clients, hops, old, policy)[1].tolist() == quote.tolist()
    # behind a content filter on the host (pipeline.origin): the client, and the quoted copy's, is the one our
    # hop below the re-injection on loopback names, as the verdicts have it
    behind = [q("mx1.example.org", "127.0.0.1"), q("localhost", "127.0.0.1"), q("mx1.example.org", "198.51.100.7")]
    filtered = SitePolicy(local_domains=["example.org"], server_names=["mx1.example.org"],
                          trusted_networks=["192.0.2.0/24", "127.0.0.0/8"])
    client, quote = client_codes(["198.51.100.7", "127.0.0.1", "127.0.0.1"], [None, behind, None],
                                 [None, None, behind], filtered)
    assert client[1] == client[0] != client[2] and quote[2] == client[0]
    # a queue that stores no client (IIS, .eml): its client is the one our topmost hop names, and behind a
    # filter the one below it, read the same way
    from pipeline.models import Envelope, ParsedRecord

    eml = ParsedRecord(path="m.eml", sha256="0" * 64, size=1, format="eml", envelope=Envelope(),
                       received=[hop_of(h) for h in behind])
    client, _ = client_codes(["198.51.100.7", *client_evidence(eml)[:1]], [None, client_evidence(eml)[1]],
                             [None, None], filtered)
    assert client[1] == client[0]
    # and a filter that submits each message again on the host (spamc piped to sendmail): no client at all
    eml.received = [ReceivedHop(by="mx1.example.org"), hop_of(behind[-1])]
    client, _ = client_codes(["198.51.100.7", *client_evidence(eml)[:1]], [None, client_evidence(eml)[1]],
                             [None, None], filtered)
    assert client[1] == client[0]


def test_attach_quoted_reads_the_clients_messages_not_their_order() -> None:
    labels = np.array([0, 0, 1, 1, 2, 3, 4, 4, 5, 6])
    # client numbers: 0 sent two messages, both in group 0; 1 sent one in 1 and one in 2; 2 sent one (group 3)
    client = np.array([0, 0, 1, -1, 1, 2, -1, -1, -1, -1])
    quoted = np.array([-1, -1, -1, -1, -1, -1, 0, 1, 2, 0])
    out = attach_quoted(labels, client, quoted)
    assert out.tolist() == [0, 0, 1, 1, 2, 3, 0, 4, 3, 0]  # client 2's one message says where it went too
    order = np.random.default_rng(1).permutation(len(labels))
    assert attach_quoted(labels[order], client[order], quoted[order]).tolist() == out[order].tolist()
    assert attach_quoted(labels, client, quoted, least=2).tolist() == [0, 0, 1, 1, 2, 3, 0, 4, 5, 0]
    assert attach_quoted(labels, client, quoted, least=3).tolist() == labels.tolist()


def test_a_big_runs_bounces_alike_to_the_byte_follow_it(runs) -> None:
    """A big run bounces often, and bounces quoting only its headers (or cut short in them) are alike to
    the byte: folded into one message of many copies, they are one message still and join the run whose
    every key they carry, even when both are large; a group sharing only part of their keys does not."""
    camps, data, truth, records = runs
    original = next(d for d, t in zip(data, truth, strict=True) if t == 2)
    quoted = bounce(original, "x@far.example", truncate=original.index(b"\n\n"))
    bounced = [_parse(quoted.replace(b"x@far", f"b{i}@far".encode()), mail_from="") for i in range(25)]
    assert len({(b.text, tuple(b.keys), b.shape) for b in bounced}) == 1 and bounced[0].keys
    labels = CampaignClusterer().fit([*map(_feat, records), *map(_feat, bounced)]).labels_
    run2 = Counter(lab for lab, t in zip(labels, truth, strict=False) if t == 2).most_common(1)[0][0]
    assert {int(x) for x in labels[len(records):]} == {run2}
    assert _partition(labels[:len(records)]) == _partition(
        CampaignClusterer().fit(list(map(_feat, records))).labels_)
    # the same bounces with one key no copy of the run carries stay apart from it
    other = [Features(b.text, b.sketch, [*b.keys, "r:someone@else.example"], b.shape) for b in bounced]
    labels = CampaignClusterer().fit([*map(_feat, records), *other]).labels_
    run2 = Counter(lab for lab, t in zip(labels, truth, strict=False) if t == 2).most_common(1)[0][0]
    assert run2 not in {int(x) for x in labels[len(records):]}


def test_a_valid_mailing_of_identical_copies_stays_apart_from_a_run_sharing_its_template_and_link(runs, corpus) -> None:
    """A valid mailing's copies are alike to the byte (folded into one message of many copies), as a big
    run's headers-only bounces are; but a mailing has a text of its own, unlike the run's: sharing the
    run's template shape and a link (or every key it carries) does not make it the run's."""
    camps, data, truth, records = runs
    copy = next(r for r, t in zip(records, truth, strict=True) if t == 3 and len(r.keys) >= 2)
    for raw in corpus[0][100:102]:
        r = _parse(raw)
        for keys in (copy.keys[:1], copy.keys[:2], copy.keys):
            mailing = [r.model_copy(update={"keys": list(keys), "shape": copy.shape}) for _ in range(30)]
            assert mailing[0].sketch
            labels = CampaignClusterer().fit([*map(_feat, records), *map(_feat, mailing)]).labels_
            run3 = {int(lab) for lab, t in zip(labels, truth, strict=False) if t == 3}
            assert not run3 & {int(x) for x in labels[len(records):]}, keys


def test_an_inbound_mailing_in_a_runs_template_sharing_its_link_is_not_purged_with_the_run(runs, corpus) -> None:
    """The same, through the verdicts: 30 identical copies of a newsletter to local users, in the template
    of a relayed run and linking where it links, stay valid; they once joined the run and took its
    `spam` (relayed campaign) verdict."""
    camps, data, truth, records = runs
    link = next(r for r, t in zip(records, truth, strict=True) if t == 3 and r.keys)
    news = _parse(corpus[0][100])
    verdicts, _ = _relayed_runs_and(records, truth, [news.model_copy(update={
        "envelope": Envelope(mail_from="news@vendor.example", rcpt_to=[f"user{j}@example.org"],
                             client_address="198.51.100.7"),
        "path": f"news/{j:04d}.eml", "keys": link.keys[:1], "shape": link.shape}) for j in range(30)])
    assert verdicts == {("run", Verdict.spam): 200, ("ham", Verdict.valid): 60, ("news", Verdict.valid): 30}


def _relayed_runs_and(records, truth, extra, pools=None):
    """The runs' copies relayed (from 203.0.113.1-50, or for run t from the clients `pools[t]`), the
    corpus's ham inbound, then `extra` as given: their manifest, and a count of (folder, verdict)."""
    recs = []
    for i, (r, t) in enumerate(zip(records, truth, strict=True)):
        if t < 0:  # the corpus's ham, inbound
            env = Envelope(mail_from=f"h{i}@ham.example", rcpt_to=[f"u{i}@example.org"], client_address="198.51.100.9")
        else:  # the runs, relayed
            pool = (pools or {}).get(t)
            env = Envelope(mail_from=f"s{i}@spam{i % 5}.example", rcpt_to=[f"v{i}@far{i % 9}.example"],
                           client_address=pool[i % len(pool)] if pool else f"203.0.113.{1 + i % 50}")
        recs.append(r.model_copy(update={"envelope": env, "path": f"{'ham' if t < 0 else 'run'}/{i:04d}.eml"}))
    recs.extend(extra)
    prepare(recs)
    m = decide(recs, POLICY, "mailing", SnapshotInfo(source="mailing", format="canonical"), [])
    return Counter((x.path.split("/")[0], x.verdict) for x in m.messages), m


def test_an_inbound_mailing_the_run_imitates_is_held_for_review_not_purged(runs) -> None:
    """A run that imitates a mailing our users receive (a phishing run copying a brand's notice, its
    template and one of its links) takes that mailing into its group: its text is weakly alike to the
    run's and a key is shared, as a copy of the run shows. The run is spam by what it relayed; the
    mailing's copies only came in, for our users, from a client that relayed none of the run. They are
    held for review, not purged with it (before the inbound_in_spam_campaign rule: all 30 spam). The run's
    own copy to one of our users, from a client that relayed the run, is still spam."""
    camps, data, truth, records = runs
    copy = next(r for r, t in zip(records, truth, strict=True) if t == 2 and r.keys and r.sketch)
    rng = random.Random(11)
    salad = " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8)) for _ in range(60))
    text = f"{copy.text} {salad}"
    others = [np.array(r.sketch) for r, t in zip(records, truth, strict=True) if t == 2 and r.sketch]
    assert 0.3 <= max(float((np.array(sketch(text)) == o).mean()) for o in others) < 0.5  # weakly alike
    news = [copy.model_copy(update={
        "text": text, "sketch": sketch(text), "keys": [copy.keys[0]], "path": f"news/{j:04d}.eml",
        "envelope": Envelope(mail_from="notice@brand.example", rcpt_to=[f"user{j}@example.org"],
                             client_address="198.51.100.7")}) for j in range(30)]
    own = copy.model_copy(update={"path": "own/0000.eml", "envelope": Envelope(
        mail_from="s1@spam1.example", rcpt_to=["victim@example.org"], client_address="203.0.113.3")})
    verdicts, m = _relayed_runs_and(records, truth, [*news, own])
    run_campaign = {x.campaign for x in m.messages if x.path.startswith("run/") and x.verdict is Verdict.spam}
    assert {x.campaign for x in m.messages if x.path.startswith("news/")} <= run_campaign  # grouped with the run
    assert verdicts == {("run", Verdict.spam): 200, ("ham", Verdict.valid): 60, ("news", Verdict.review): 30,
                        ("own", Verdict.spam): 1}
    reasons = next(x for x in m.messages if x.path.startswith("news/")).reasons
    assert any("inbound to local recipients only from 198.51.100.7" in r.text for r in reasons), reasons
    # the admin sees them as one group, in words that say what they may be
    held = [g for g in m.review_groups if g.rule == ReasonCode.inbound_in_spam_campaign]
    assert [g.messages for g in held] == [30] and "only came in, for our users, from 198.51.100.7" in held[0].summary


def _salted_copy(runs, seed: int, words: int):
    """A copy of run 2 that carries keys, its text with `words` words of per-copy salad after it, and how alike
    that text is to the run's most alike copy."""
    camps, data, truth, records = runs
    copy = next(r for r, t in zip(records, truth, strict=True) if t == 2 and len(r.keys) >= 2 and r.sketch)
    rng = random.Random(seed)
    salad = " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8)) for _ in range(words))
    text = f"{copy.text} {salad}"
    others = [np.array(r.sketch) for r, t in zip(records, truth, strict=True) if t == 2 and r.sketch]
    return copy, text, max(float((np.array(sketch(text)) == o).mean()) for o in others)


def test_a_copy_and_its_bounces_alike_to_the_byte_follow_the_run_their_text_is_alike_to(runs) -> None:
    """A copy still in the queue and the bounces quoting it whole are one message of many copies (folded).
    When that copy's text is alike to its run's only weakly (per-copy salad) and it carries a link host
    the run rotated to for it alone, it still joins the run: its text and a shared key say so."""
    camps, data, truth, records = runs
    copy, text, alike = _salted_copy(runs, 3, 60)
    assert 0.3 <= alike < 0.5, alike  # weakly alike to the run: no tier-1 link
    fold = [Features(text, sketch(text), [*copy.keys, "u:rotated-for-one.example/*"], copy.shape)] * 3
    labels = CampaignClusterer().fit([*map(_feat, records), *fold]).labels_
    run2 = Counter(lab for lab, t in zip(labels, truth, strict=False) if t == 2).most_common(1)[0][0]
    assert {int(x) for x in labels[len(records):]} == {run2}


def test_a_copy_quoted_whole_by_its_bounces_is_one_copy_of_its_run(runs) -> None:
    """A copy whose text is not alike to its run's (per-copy salad) joins the run by the keys it shares, as
    any copy alone does; the bounces quoting it whole fold with it into three copies of one message, which
    still joins (a bounce is evidence about the copy it quotes, not one more copy of the run: it stayed
    apart, and the copy and its bounces were held for review). Three identical copies that are not
    bounces are judged as a group of three, as before."""
    camps, data, truth, records = runs
    copy, text, alike = _salted_copy(runs, 5, 400)
    assert alike < 0.3, alike  # no text link at all
    alone = Features(text, sketch(text), copy.keys, copy.shape)
    quoted = [alone, alone._replace(bounce=True), alone._replace(bounce=True)]

    def run2_and_rest(extra: list[Features]) -> tuple[int, set[int]]:
        labels = CampaignClusterer().fit([*map(_feat, records), *extra]).labels_
        run2 = Counter(lab for lab, t in zip(labels, truth, strict=False) if t == 2).most_common(1)[0][0]
        return int(run2), {int(x) for x in labels[len(records):]}

    for extra in ([alone], quoted, quoted[::-1]):
        run2, rest = run2_and_rest(extra)
        assert rest == {run2}, len(extra)
    run2, rest = run2_and_rest([alone] * 3)
    assert run2 not in rest


@pytest.mark.parametrize(("alike", "one"), [(20, False), (30, True)])
def test_two_big_runs_merge_on_texts_alike_only_for_a_share_of_them(monkeypatch, alike: int, one: bool) -> None:
    """Two runs of 168 and 92 distinct copies (no keys), each one tier-1 group, with `alike` copies of the
    smaller weakly alike to copies of the bigger: at 100k (seed 2) two unrelated runs showed 20 such
    copies, by chance, and were merged. A quarter of the smaller run's copies is needed (30 of 92 are)."""
    a, b = 168, 92
    n = a + b
    digest = np.array([i.to_bytes(16, "big") for i in range(n)], dtype="S16")
    grouping = Grouping(digest, np.zeros((n, SKETCH_PERM), dtype=np.uint32), np.ones(n, dtype=bool),
                        np.zeros(n, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    # each run a chain of strong links (canonical order: by digest, as given); `alike` cross weak links
    strong = np.array([[i, i + 1] for i in range(a - 1)] + [[i, i + 1] for i in range(a, n - 1)], dtype=np.int64)
    weak = np.array([[j, a + j] for j in range(alike)], dtype=np.int64)
    monkeypatch.setattr(CampaignClusterer, "_text_edges", lambda self, sk, at, has: (strong, weak))
    monkeypatch.setattr(CampaignClusterer, "_unbridge", lambda self, sk, at, st, wk: (st, wk))
    labels = CampaignClusterer().fit_grouping(grouping).labels_
    assert len(set(labels[:a])) == 1 and len(set(labels[a:])) == 1
    assert bool(labels[0] == labels[a]) == one


def test_valid_mail_sharing_a_runs_links_stays_apart(runs, corpus) -> None:
    """A real message that links to a run's domain and names its Reply-To (another template) is not pulled in."""
    camps, data, truth, records = runs
    ham = corpus[0]
    copy = next(r for r, t in zip(records, truth, strict=True) if t == 3 and r.keys)
    valid = []
    for raw in ham[100:106]:
        r = _parse(raw)
        valid.append(r.model_copy(update={"keys": [*r.keys, *copy.keys]}))
    feats = [*map(_feat, records), *map(_feat, valid)]
    labels = CampaignClusterer().fit(feats).labels_
    run3 = {int(lab) for lab, t in zip(labels, truth, strict=False) if t == 3}
    assert not run3 & {int(x) for x in labels[len(records):]}


def test_backscatter_of_two_runs_of_one_kit_stays_with_each_run(corpus) -> None:
    """Two runs sent with one kit's page, and bounces quoting each cut short inside the kit's markup:
    the bounces link by what the quoted copy says, not by the kit's style sheet, so the runs stay two."""
    texts = [t for t in (spam_text(raw) for raw in corpus[1]) if len(t[1].split()) >= 120]
    rng = random.Random(7)
    camps = [Campaign(body, subject, seed=40 + k, kit=KIT) for k, (subject, body) in enumerate(rng.sample(texts, 2))]
    data, truth = [], []
    for k, c in enumerate(camps):
        copies = [c.copy(f"ann{j}@far{j % 5}.example") for j in range(30)]
        data.extend(copies)
        for j, d in enumerate(copies[:8]):
            # cut a few hundred bytes into the HTML part: in the kit's head, whatever the encoding
            cut = d.index(b"Content-Type: text/html") + 300 + 60 * j
            data.append(bounce(d, f"b{j}@far.example", truncate=cut))
        truth.extend([k] * 38)
    records = [_parse(d, mail_from="" if b"MAILER-DAEMON" in d[:60] else None) for d in data]
    assert sum(r.bounce for r in records) == 16
    labels = CampaignClusterer().fit([_feat(r) for r in records]).labels_
    assert _partition(labels) == _partition(truth)


def test_html_cut_short_leaves_no_markup() -> None:
    """A copy a bounce cut short ends inside a style sheet, a comment or a tag: none of it is text."""
    assert html_to_text("<html><head><style>p.MsoNormal {margin:0in").split() == []
    assert html_to_text("<p>Hello <b>world</b></p><!-- p.x {font").split() == ["Hello", "world"]
    assert html_to_text('<p>Hello world</p><img src="http://x.example/a.gif" width="3').split() == ["Hello", "world"]
    # a head without its (optional) end tag still shows its body
    assert html_to_text("<html><head><title>x</title><body>text here").split() == ["text", "here"]



def test_a_weak_link_between_two_large_groups_does_not_merge_them() -> None:
    """Tier 2's components: run A (group 0) and its bounces (group 1), run B (3) and its bounces (2);
    the two bounce groups are alike through two messages only (one kit's markup): A and B stay two,
    while a small group still joins, and groups that share two invariant keys still merge."""
    cl = CampaignClusterer()
    size = np.array([300, 59, 3, 250, 2, 40, 30])
    edges = np.array([[0, 1], [2, 3], [1, 2], [4, 0], [5, 6]])
    support = np.array([cl.strong + 2, cl.strong + 2, 2, 1, cl.strong + 2])
    comp = cl._guarded(len(size), edges, support, size)
    assert comp[0] == comp[1] == comp[4] and comp[2] == comp[3] and comp[0] != comp[3] and comp[5] == comp[6]
    # the same link, strong: one run after all
    comp = cl._guarded(len(size), edges, np.where(support == 2, cl.strong, support), size)
    assert comp[0] == comp[3]
    # in any order of the edges
    rev = cl._guarded(len(size), edges[::-1].copy(), support[::-1].copy(), size)
    assert _partition(rev) == _partition(cl._guarded(len(size), edges, support, size))


def test_shape_ignores_the_headers_a_copys_mime_structure_adds() -> None:
    """One run's single-part copy carries Content-Transfer-Encoding at the top, its image-only
    (multipart) copy does not: one template all the same. Another header order is another template."""
    head = b"To: a@x.example\nFrom: b@y.example\nSubject: hi\nContent-Type: text/html\n"
    single = head + b"Content-Transfer-Encoding: base64\nMIME-Version: 1.0\n\nPGI+\n"
    multi = head.replace(b"text/html", b"multipart/related; boundary=q") + b"MIME-Version: 1.0\n\n--q--\n"
    other = b"From: b@y.example\nTo: a@x.example\nSubject: hi\nContent-Type: text/html\nMIME-Version: 1.0\n\nx\n"
    assert shape(single) == shape(multi) != shape(other)


def test_a_short_subject_keys_a_headers_only_bounce_to_its_run() -> None:
    """A subject too short for three long words ("Memory loss?") still keys a run once what spamware
    writes per copy around it is gone (Re:/Fwd:, a greeting name, a hash-buster), so a bounce quoting
    only the headers shares a key with the run's copies; another short subject keys apart."""
    head = "From: x@y.example\nTo: {to}\nSubject: {subject}\nX-Mailer: Kit 4.1\nMessage-ID: <{to}>\n"
    body = "Content-Type: text/plain\n\nThis is the memory product page, visit today for the offer.\n"
    copies = [head.format(to=f"u{i}@far.example", subject=s) + body
              for i, s in enumerate(["Re: Memory loss? [31ff02a5] for Ken", "Ana: Fwd: Memory loss? #15869",
                                     "Memory loss? 1d6180", "Raj, Re: Memory loss? - gonna"])]
    quoted = head.format(to="w@far.example", subject="Ken: RE: Memory loss? (45)") + "Content-Type: text/plain\n"
    report = (f"From: MAILER-DAEMON@mx1.example.org\nSubject: Undelivered Mail Returned to Sender\nTo: x@y.example\n"
              f"MIME-Version: 1.0\nContent-Type: multipart/report; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\n"
              f"Could not be delivered.\n\n--b\nContent-Type: text/rfc822-headers\n\n{quoted}\n--b--\n")
    recs = [_parse(c.encode()) for c in copies]
    bounced = _parse(report.encode(), mail_from="")
    assert bounced.bounce and not bounced.sketch
    assert all("t:memory loss" in r.keys for r in [*recs, bounced])
    assert bounced.shape == recs[0].shape
    other = _parse((head.format(to="v@far.example", subject="Re: Memory gain? [31ff02a5]") + body).encode())
    assert "t:memory loss" not in other.keys and "t:memory gain" in other.keys


def test_a_suffix_stacked_on_a_subject_ending_in_a_number_keys_as_the_rest() -> None:
    """A run's subject that ends in a number of its own (`Century!17441`, from the corpus) with a per-copy
    suffix after it: every hash-buster at the end is cut, so the copies with a suffix key as those without
    (the number left behind was read as leetspeak, `centuryiitaai`, and their headers-only bounces matched
    no copy); the words before the suffixes stay."""
    from pipeline.features import subject_core, subject_key

    run = "your own fountain of youth! HGH human growth hormone from 21st Century!17441"
    keys = {subject_key(normalise(subject_core(s), "")) for s in
            [run, f"Ahmed, get {run} (4451)", f"Fwd: buy {run} 8812", f"{run} for Eva", f"{run} #12 [a3f0]"]}
    assert keys == {"s:century fountain hormone"}
    assert subject_core("Quarterly report 2026 - draft (2)") == "Quarterly report"
    assert subject_core("Re: Memory loss? [31ff02a5] for Ken") == "Memory loss?"


def test_a_run_rotating_its_hosts_keeps_its_paths() -> None:
    """Copies whose link hosts change per copy still share the path's fixed segments as a key;
    per-copy segments and a bare host give none."""
    a = url_keys(["http://aa.pragmatic91.example/x7y2k/cover/abc123 http://n.example/images/nav.gif"])
    b = url_keys(["http://bridge.other.example/cover/zz9q1"])
    assert "p:cover" in a and "p:cover" in b and "p:images/nav.gif" in a
    assert not [k for k in url_keys(["http://a.example/ http://b.example/q1w2e3r4"]) if k.startswith("p:")]


def test_rows_made_unique_as_numpy_does_it() -> None:
    from pipeline.campaigns import _unique_rows
    from pipeline.clusterer import _bucket_heads

    rng = np.random.default_rng(3)
    for trial in range(60):
        m, k = int(rng.integers(0, 200)), int(rng.integers(1, 6))
        # small spans (packed into one integer), negatives, and spans too wide to pack (a lexsort)
        hi = [3, 40, 2**40][trial % 3]
        a = rng.integers(-2 if trial % 2 else 0, hi, size=(m, k))
        for inverse, counts in itertools.product((False, True), repeat=2):
            want = np.unique(a, axis=0, return_inverse=inverse, return_counts=counts)
            got = _unique_rows(a, inverse=inverse, counts=counts)
            for w, g in zip(*((want, got) if inverse or counts else ((want,), (got,))), strict=True):
                assert np.array_equal(np.reshape(w, g.shape), g)
        if m:
            cols = rng.integers(0, 3, size=(m, 3)).astype(np.uint32)
            bucket = np.unique(cols, axis=0, return_inverse=True)[1].ravel()
            first = {b: i for i, b in reversed(list(enumerate(bucket.tolist())))}
            assert _bucket_heads(cols).tolist() == [first[b] for b in bucket.tolist()]


def test_the_triage_routes_grouping_is_the_one_its_records_give(corpus) -> None:
    """The parse workers hand grouping's input back packed beside the records (pipeline.triage.Batch):
    in the order `prepare` puts the records in, it is what the records themselves give."""
    from pipeline.campaigns import Grouping
    from pipeline.triage import parse_all, parse_grouped, prepare

    hams, spam = corpus
    texts = [t for t in map(spam_text, spam[:40]) if len(t[1].split()) >= 120][:2]
    camps = [Campaign(body, subject, seed=k) for k, (subject, body) in enumerate(texts)]
    data = [c.copy(f"u{j}@far{j % 3}.example", image_only=j < 2) for c in camps for j in range(15)] + hams[:10]
    data += [bounce(data[k], f"b{k}@far.example") for k in (3, 20)]
    found = [Found(RawMessage(path=f"q/{len(data) - i:04d}.eml", envelope=Envelope()), d, f"{i:064x}", len(d))
             for i, d in enumerate(data)]
    whole = parse_all(found, POLICY, workers=1)
    prepare(whole)
    parsed = parse_grouped(found, POLICY, workers=1)
    order = prepare(parsed.records)
    assert order != sorted(order)  # the records were put in another order
    got, want = parsed.grouping(order), Grouping.of([_feat(r) for r in whole])
    for name, g, w in zip(Grouping._fields, got, want, strict=True):
        assert np.array_equal(g, w), name
    assert got.bounce is not None and got.bounce.sum() == 2
    # the pool's route: the input as read, labelled in a worker (pipeline.triage.Unsorted)
    again = parse_grouped(found, POLICY, workers=1)
    unsorted = again.unsorted().grouping()
    assert np.array_equal(unsorted.bounce[np.asarray(order)], got.bounce)
    assert [r.path for r in parsed.records] == [r.path for r in whole]
    assert all(r.sketch == [] for r in parsed.records) and any(r.sketch for r in whole)
    assert np.array_equal(CampaignClusterer().fit_grouping(got).labels_, CampaignClusterer().fit_grouping(want).labels_)


def test_unique_rows_is_numpys_for_columns_of_any_range() -> None:
    """Rows whose columns span more than an int64 can count (the packed key would wrap) take the lexsort,
    and agree with numpy's unique, inverse and counts alike."""
    import numpy as np

    from pipeline.campaigns import _unique_rows

    big = np.iinfo(np.int64)
    rng = np.random.default_rng(5)
    for a in (np.array([[big.min, 1], [big.max, 0], [big.min, 1], [0, 2], [big.max, 0]], dtype=np.int64),
              np.array([[-3, big.max], [-3, big.min], [7, 0], [-3, big.max]], dtype=np.int64),
              rng.integers(-5, 5, size=(200, 3)).astype(np.int64)):
        want, inv, cnt = np.unique(a, axis=0, return_inverse=True, return_counts=True)
        rows, my_inv = _unique_rows(a, inverse=True)
        assert (rows == want).all() and (my_inv == inv.reshape(-1)).all()
        assert (_unique_rows(a) == want).all()
        assert (_unique_rows(a, counts=True)[1] == cnt).all()


def _island_run(n: int = 12, island: int = 3) -> list[Features]:
    """A run of n copies whose texts are alike to none other (no text links), all carrying the run's two link
    paths; `island` of them also share a link host the run rotated to for them alone (three keys), the
    others a host each. The copy first in canonical order (the owner of the paths' keys, every copy's
    partner) is not one of the island's."""

    def copy(k: int, host: str, salt: str = "") -> Features:
        text = " ".join(f"w{k}x{j}{salt}" for j in range(30))
        keys = [f"u:{host}/*", f"u:{host}/offer/c.asp", f"u:{host}/images/a.gif", "p:offer/c.asp", "p:images/a.gif"]
        if host != "island.example":
            keys = [keys[0], *keys[3:]]
        return Features(text, sketch(text), keys, "S")

    feats = [copy(k, "island.example" if k < island else f"host{k}.example") for k in range(n)]
    salt = ""
    while min(range(n), key=lambda k: feature_digest(feats[k].text, feats[k].keys, feats[k].shape,
                                                        feats[k].sketch)) < island:
        salt += "y"
        feats[:island] = [copy(k, "island.example", salt) for k in range(island)]
    return feats


def test_copies_that_picked_one_another_join_their_run() -> None:
    """Three copies of a run share a link host no other copy has: each, a small group joining one partner,
    picks another of the three (three keys shared against the two link paths every copy carries), and the
    three were left a group apart (below a campaign's least size: held for review). As an island of small
    groups they now join the run they share its link paths with, in any order of the input."""
    feats = _island_run()
    labels = CampaignClusterer().fit(feats).labels_
    assert len(set(labels.tolist())) == 1
    for seed in (1, 2, 3):
        order = list(range(len(feats)))
        random.Random(seed).shuffle(order)
        shuffled = CampaignClusterer().fit([feats[i] for i in order]).labels_
        assert len(set(shuffled.tolist())) == 1


def test_bounces_of_two_runs_of_one_text_follow_their_own_runs() -> None:
    """Two runs built from one spam text (different templates, links and subject templates) and a bounce of
    each quoting only the subject line and a few words: the two short quotes are alike to each other, and
    were one tier-1 group that went to one run, so one bounce sat with the other run. Bounces of two
    template shapes alike in text are weak evidence only; each joins its own run by the keys of its shape."""
    rng = random.Random(7)
    words = [f"w{k}" for k in range(400)]

    def run(shape_: str, host: str, subject_key: str, n: int = 12) -> list[Features]:
        out = []
        for _ in range(n):
            text = " ".join(rng.sample(words, 60))  # per-copy salad: no text link within the run
            out.append(Features(text, sketch(text), [f"u:{host}/offer/go.asp", "p:offer/go.asp", subject_key],
                                shape_))
        return out

    a = run("SA", "alpha.example", "s:auto extended warranties")
    b = run("SB", "beta.example", "s:auto extended warranties")
    quote = "fw adv extended auto warranties below dhzbj cells protect financial future olga"
    bounce_a = Features(quote, sketch(quote), ["s:auto extended warranties"], "SA", True)
    quote_b = "re adv extended auto warranties below dhzbj cells protect financial future kim"
    bounce_b = Features(quote_b, sketch(quote_b), ["s:auto extended warranties"], "SB", True)
    assert (np.array(bounce_a.sketch) == np.array(bounce_b.sketch)).mean() >= 0.5  # a tier-1 pair by text
    feats = [*a, *b, bounce_a, bounce_b]
    for order in (list(range(len(feats))), list(range(len(feats)))[::-1]):
        labels = CampaignClusterer().fit([feats[i] for i in order]).labels_
        at = {i: int(labels[k]) for k, i in enumerate(order)}
        assert len({at[i] for i in range(12)}) == 1 and len({at[i] for i in range(12, 24)}) == 1
        assert at[0] != at[12]
        assert at[24] == at[0] and at[25] == at[12]


def _salad_run(rng: random.Random, shape_: str, keys: list[str], n: int = 12, body: str = "") -> list[Features]:
    """A run whose copies are word salad (no text link between them), grouped by the keys of its template;
    with a `body`, each copy is that body and ten words of salad (copies alike to one another)."""
    words = _WORDS
    texts = (f"{body} {' '.join(rng.sample(words, 10))}" if body else " ".join(rng.sample(words, 60)) for _ in range(n))
    return [Features(t, sketch(t), keys, shape_) for t in texts]


_QUOTE = "fw adv extended auto warranties below dhzbj cells protect financial future"
# words of letters only (the sketch reads nothing else), 400 for salad and 50 for a run's own text after
# its subject line: a bounce quoting the subject line is not alike to that run's copies
_LETTERS = random.Random(10)
_WORDS = sorted({"".join(_LETTERS.choices("abcdefghijklmnopqrstuvwxyz", k=7)) for _ in range(450)})
_BODY = _QUOTE + " " + " ".join(_WORDS[400:450])
_WORDS = _WORDS[:400]


def _at(feats: list[Features], order: list[int]) -> dict[int, int]:
    labels = CampaignClusterer().fit([feats[i] for i in order]).labels_
    return {i: int(labels[k]) for k, i in enumerate(order)}


def _second_run() -> list[Features]:
    """Eight copies of a second run of the quoted text, with little salad: alike to a short quote of it."""
    return [Features(t, sketch(t), ["u:beta.example/w.php", "p:w.php", "s:extended warranty today"], "SB")
            for t in (f"{_QUOTE} {name}" for name in ("ana", "bob", "cy", "dee", "eve", "fay", "gus", "hal"))]


def _bounce_goes_home(feats: list[Features]) -> None:
    """Both input orders: the first run (0-11) and the second (12-19) apart, the bounce (20) with the first."""
    for order in (list(range(len(feats))), list(range(len(feats)))[::-1]):
        at = _at(feats, order)
        assert len({at[i] for i in range(12)}) == 1 and len({at[i] for i in range(12, 20)}) == 1
        assert at[0] != at[12]
        assert at[20] == at[0]


def test_a_bounce_alike_to_another_run_of_its_text_follows_the_keys_of_its_template() -> None:
    """Two runs built from one spam text: one varies its copies with word salad, the other sends the text
    almost as it is. A bounce of the first quotes the subject line and a few words, alike to every copy of
    the second (a tier-1 link), and went with the second run. Its template shape and subject key are the
    first run's, which no copy of the second carries: it goes to its own run."""
    rng = random.Random(11)
    a = _salad_run(rng, "SA", ["u:alpha.example/offer/go.asp", "p:offer/go.asp", "s:auto extended warranties"],
                   body=_BODY)
    b = _second_run()
    bounce_a = Features(f"{_QUOTE} olga", sketch(f"{_QUOTE} olga"), ["s:auto extended warranties"], "SA", True)
    assert (np.array(bounce_a.sketch) == np.array(b[0].sketch)).mean() >= 0.5  # alike to the second run
    feats = [*a, *b, bounce_a]
    _bounce_goes_home(feats)


def test_a_bounce_follows_the_one_copy_carrying_its_subject_key() -> None:
    """A run that varies its subject: each copy has a subject key of its own. A bounce alike in text to another
    run of its text went with that run; the one copy carrying its subject key, in its template shape, is in its
    own run: it goes there. Not when a copy of the other run carries that key too."""
    rng = random.Random(15)
    a = [f._replace(keys=[*f.keys, f"s:offer number{k}"])
         for k, f in enumerate(_salad_run(rng, "SA", ["u:alpha.example/offer/go.asp", "p:offer/go.asp"], body=_BODY))]
    b = _second_run()
    bounce_a = Features(f"{_QUOTE} olga", sketch(f"{_QUOTE} olga"), ["s:offer number3"], "SA", True)
    feats = [*a, *b, bounce_a]
    _bounce_goes_home(feats)
    b[0] = b[0]._replace(keys=[*b[0].keys, "s:offer number3"], shape="SA")
    feats = [*a, *b, bounce_a]
    at = _at(feats, list(range(len(feats))))
    assert at[0] != at[12] and at[20] == at[12]


def test_a_copy_alike_to_another_run_of_its_text_follows_the_keys_of_its_template() -> None:
    """Two runs built from one spam text, as above. A copy of the first sent with little salad is alike to every
    copy of the second (a tier-1 link) and went with the second run, and the bounce quoting it whole with it. No
    copy there carries a key of its template, and its run's copies carry its subject key: it goes to its run, the
    bounce with it. It stays where a copy of its group carries a key of its (here a kit's link path), and so do
    three identical copies of it (a mailing, judged as a group in the merges)."""
    rng = random.Random(14)
    keys_a = ["u:alpha.example/offer/go.asp", "p:offer/go.asp", "s:auto extended warranties"]
    a = _salad_run(rng, "SA", keys_a, body=_BODY)
    b = _second_run()
    stray = Features(f"{_QUOTE} olga", sketch(f"{_QUOTE} olga"), keys_a, "SA")
    quoted = stray._replace(bounce=True)  # a bounce quoting it whole: the same features
    assert (np.array(stray.sketch) == np.array(b[0].sketch)).mean() >= 0.5  # alike to the second run
    feats = [*a, *b, stray, quoted]
    for order in (list(range(len(feats))), list(range(len(feats)))[::-1]):
        at = _at(feats, order)
        assert len({at[i] for i in range(12)}) == 1 and len({at[i] for i in range(12, 20)}) == 1
        assert at[0] != at[12]
        assert at[20] == at[0] and at[21] == at[0]
    kit = Features(f"{_QUOTE} ivy", sketch(f"{_QUOTE} ivy"), ["u:beta.example/w.php", "p:offer/go.asp"], "SA")
    for extra in ([kit, stray], [stray, stray, stray]):
        feats = [*a, *b, *extra]
        for order in (list(range(len(feats))), list(range(len(feats)))[::-1]):
            at = _at(feats, order)
            assert at[0] != at[12]
            assert all(at[i] == at[12] for i in range(20, len(feats)))


def test_a_bounce_cut_inside_its_quoted_headers_follows_its_runs_reply_to() -> None:
    """A bounce that quotes its copy's headers only up to a cut has another template shape than its run, so
    no key of its shape links it, and it stayed alone (held for review). The run's Reply-To address is its
    run's in any shape: it joins the run that holds every copy carrying it. A Reply-To two groups carry, or a
    subject key outside its shape, leaves it alone."""
    rng = random.Random(12)
    reply = "r:drop77@mail.example"
    a = _salad_run(rng, "SA", ["u:alpha.example/offer/go.asp", "p:offer/go.asp", "s:auto extended warranties",
                               reply])
    cut = Features("undelivered mail returned to sender", (), [reply], "SA-cut", True)
    by_subject = Features("undelivered mail returned to sender", (), ["s:auto extended warranties"], "SX", True)
    feats = [*a, cut, by_subject]
    for order in (list(range(len(feats))), list(range(len(feats)))[::-1]):
        at = _at(feats, order)
        assert len({at[i] for i in range(12)}) == 1
        assert at[12] == at[0]
        assert at[13] != at[0] and at[13] != at[12]
    # the same Reply-To on the copies of another run: which run the bounce came from is not known
    c = _salad_run(rng, "SC", ["u:gamma.example/x/y.asp", "p:x/y.asp", "s:lowest rates mortgage", reply])
    feats = [*a, *c, cut]
    for order in (list(range(len(feats))), list(range(len(feats)))[::-1]):
        at = _at(feats, order)
        assert len({at[i] for i in range(12)}) == 1 and len({at[i] for i in range(12, 24)}) == 1
        assert at[0] != at[12]
        assert at[24] not in (at[0], at[12])


def test_a_bounce_stays_with_copies_that_carry_its_keys() -> None:
    """A bounce whose group holds a copy carrying one of its keys stays, even when another group holds more
    copies carrying its other keys: the move is for a bounce its group gives no evidence for."""
    rng = random.Random(13)
    a = _salad_run(rng, "SA", ["u:alpha.example/offer/go.asp", "p:offer/go.asp", "s:auto extended warranties"],
                   body=_BODY)
    quote = _QUOTE
    b = [Features(t, sketch(t), ["u:beta.example/w.php", "p:w.php"], "SA")
         for t in (f"{quote} {name}" for name in ("ana", "bob", "cy", "dee", "eve", "fay", "gus", "hal"))]
    bounce_ = Features(f"{quote} olga", sketch(f"{quote} olga"), ["p:w.php", "s:auto extended warranties"], "SA",
                       True)
    feats = [*a, *b, bounce_]
    at = _at(feats, list(range(len(feats))))
    assert at[0] != at[12] and at[20] == at[12]


def test_bounces_whose_run_has_left_the_queue_do_not_follow_a_key_of_its_kit(runs) -> None:
    """Bounces of a run whose copies have all left the queue, beside one other run of the same kit: one
    template shape and one link path for both runs. They carry the kit's link path, which only the other
    run's copies carry now; a link path may be a whole kit's, so they stay apart (their own run's subject
    and Reply-To are on no copy)."""
    camps, data, truth, records = runs
    originals = [d for d, t in zip(data, truth, strict=True) if t == 2][10:16]
    alone = [_parse(bounce(d, f"u{i}@far.example", truncate=2500 if i % 2 else None), mail_from="")
             for i, d in enumerate(originals)]
    kit = {k for r in records[:40] for k in r.keys} & {k for b in alone for k in b.keys}
    assert kit and all(k.startswith("p:") for k in kit)  # the kit's link path, and nothing of run 2's own
    assert {r.shape for r in records[:40]} == {b.shape for b in alone}
    labels = CampaignClusterer().fit([*map(_feat, records[:40]), *map(_feat, alone)]).labels_
    assert len(set(labels[40:])) == 1 and labels[40] not in set(labels[:40])


def test_the_stop_words_shipped_are_scikit_learns():
    """pipeline.features reads the stop words from its own copy (importing scikit-learn costs a process
    about a second): the copy must be scikit-learn's list, or sketches and subject keys would change."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from pipeline import features

    assert features.ENGLISH_STOP_WORDS == ENGLISH_STOP_WORDS


def test_parsing_and_the_per_shard_steps_do_not_load_scikit_learn():
    """Only what fits the clusterer (pipeline.clusterer) loads scikit-learn: a parser process, a Lambda
    function's cold start and the per-shard steps import none of it (it took each about a second)."""
    code = ("import sys\n"
            "import pipeline.parse, pipeline.columnar, pipeline.triage, pipeline.staged, pipeline.service.triage\n"
            "import pipeline.service.parse, pipeline.plan\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy'}))\n"
            "import pipeline.clusterer\n"
            "print('sklearn' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    assert out.split() == ["[]", "True"]
