"""Review groups: every review message in exactly one group, the bound on their number, sentences, labels."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

from pipeline.campaign_labels import describe, shared_phrase, typical_subject
from pipeline.models import Envelope, ManifestMessage, Reason, ReasonCode, Verdict
from pipeline.normalise import normalise
from pipeline.review_groups import ORDER, budget, group_review

T0 = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
# codes this module has no case for, read generically (as a new rule's code would be)
GENERIC = [c.value for c in ReasonCode if c not in ORDER]


def msg(k: int, verdict: str = "review", code: str = "relayed_unknown_source", ip: str | None = "203.0.113.9",
        sender: str | None = "a@example.com", campaign: int | None = None, account: str | None = None,
        defects: list[str] | None = None) -> ManifestMessage:
    return ManifestMessage(
        id=f"m{k}", path=f"messages/{k}", sha256="0" * 64, size=100, format="canonical",
        envelope=Envelope(mail_from=sender, rcpt_to=[f"r{k}@elsewhere.example"], client_address=ip,
                          sasl_username=account, arrival_time=T0 + timedelta(minutes=k % 300)),
        subject=f"subject {k}", campaign=campaign, verdict=Verdict(verdict), confidence=0.5,
        reasons=[Reason(code=code, text=f"held by {code}", weight="review" if verdict == "review" else "spam")],
        defects=defects or [])


def check_partition(messages: list[ManifestMessage], groups) -> None:
    review = [m for m in messages if m.verdict is Verdict.review]
    assert all(m.review_group is None for m in messages if m.verdict is not Verdict.review)
    assert all(m.review_group is not None for m in review)
    ids = [g.id for g in groups]
    assert len(ids) == len(set(ids)) and {m.review_group for m in review} == set(ids)
    for g in groups:
        assert g.messages == sum(1 for m in review if m.review_group == g.id) > 0
    assert len(groups) <= budget(len(review)), (len(groups), len(review))
    assert [g.messages for g in groups] == sorted((g.messages for g in groups), reverse=True)


def test_the_shop_is_one_group_with_a_sentence_a_person_reads() -> None:
    shop = [msg(k, ip="198.51.100.80", sender="orders@example.org") for k in range(230)]
    rest = [msg(1000 + k, verdict="spam", code="relayed", ip=f"24.0.{k}.1") for k in range(500)]
    odd = [msg(2000 + k, code="forged_local_sender", ip=f"77.1.{k}.3", sender=f"x{k}@example.org") for k in range(7)]
    messages = shop + rest + odd
    groups = group_review(messages)
    check_partition(messages, groups)
    top = groups[0]
    assert top.messages == 230 and top.rule == "relayed_unknown_source"
    assert top.shared == {"client network": "198.51.100.0/24", "client address": "198.51.100.80",
                          "sender domain": "example.org"}
    assert top.summary == ("230 messages relayed from 198.51.100.80 under sender domain example.org — your own web "
                           "shop or CRM if that address is yours")
    assert top.suggested is Verdict.review and "198.51.100.80" in top.suggested_reason
    # seven forged senders from seven addresses stay one group that says how spread they are
    forged = next(g for g in groups if g.rule == "forged_local_sender")
    assert forged.messages == 7 and forged.client_ips.distinct == 7 and "7 client addresses" in forged.summary


def test_the_bound_holds_on_scattered_input() -> None:
    rng = random.Random(3)
    codes = ["relayed_unknown_source", "forged_local_sender", "mixed_recipients", "defect", "no_recipients",
             "origin_unknown", "compromised_account", GENERIC[0]]
    messages = [msg(k, code=rng.choice(codes), ip=f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.0.{k % 250 + 1}",
                    sender=f"s@d{rng.randint(0, 400)}.example", campaign=rng.choice([None, 1, 2, 3]),
                    account=rng.choice([None, "bob"]), defects=[f"truncated at offset {k}"])
                for k in range(3000)]
    for k in range(0, 3000, 7):  # a few big runs among the noise
        messages[k].envelope.client_address = "192.0.2.200"
        messages[k].reasons = [Reason(code="relayed_unknown_source", text="x", weight="review")]
    groups = group_review(messages)
    check_partition(messages, groups)
    # the run from one client is one group, not cut into pairs by its many sender domains
    big = groups[0]
    assert big.shared == {"client network": "192.0.2.0/24", "client address": "192.0.2.200"}
    assert big.messages >= 3000 // 7


def test_more_rules_than_budget_share_one_mixed_group() -> None:
    # fifteen messages, each held by a rule of its own: the budget is 10 groups
    messages = [msg(k, code=c) for k, c in enumerate([c for c in ReasonCode if c is not ReasonCode.mixed][:15])]
    groups = group_review(messages)
    check_partition(messages, groups)
    assert len(groups) == 10
    mixed = [g for g in groups if g.rule == "mixed"]
    assert len(mixed) == 1 and mixed[0].messages == 6 and "6 different reasons" in mixed[0].summary


def test_a_reason_code_without_words_of_its_own_is_grouped_by_its_evidence() -> None:
    code = GENERIC[0]
    messages = [msg(k, code=code, ip="198.51.100.7", campaign=4) for k in range(40)]
    messages += [msg(100 + k, code=code, ip=f"10.9.{k}.1", campaign=None) for k in range(3)]
    groups = group_review(messages)
    check_partition(messages, groups)
    assert groups[0].rule == code and groups[0].messages == 40
    assert groups[0].shared == {"campaign": "4", "client address": "198.51.100.7", "sender domain": "example.com"}
    assert code in groups[0].summary and f"held by {code}" in groups[0].summary


def test_clients_that_fed_spam_lean_to_spam_and_defects_stay_held() -> None:
    messages = [msg(k, code="mixed_recipients", ip="24.1.1.1") for k in range(12)]
    messages += [msg(100 + k, code="defect", ip="24.1.1.1", defects=[f"truncated: cut at {k}"]) for k in range(4)]
    groups = group_review(messages, spam_ips={"24.1.1.1"})
    check_partition(messages, groups)
    by_rule = {g.rule: g for g in groups}
    assert by_rule["mixed_recipients"].suggested is Verdict.spam
    assert by_rule["defect"].suggested is Verdict.review
    assert by_rule["defect"].shared["defect"] == "truncated" and "(truncated)" in by_rule["defect"].summary


def test_no_review_no_groups() -> None:
    messages = [msg(k, verdict="spam", code="relayed") for k in range(5)]
    assert group_review(messages) == []
    assert all(m.review_group is None for m in messages)


def test_typical_subject_drops_per_copy_tokens() -> None:
    subjects = [f"Lowest mortgage rates in years {tok}" for tok in ("xk3j9", "q8wz2k", "mm1p0", "zz9q1x", "a7b7c7")]
    assert typical_subject(subjects) == "Lowest mortgage rates in years"
    assert typical_subject(["Re: lunch"]) == "Re: lunch"
    assert typical_subject([]) == ""


def test_typical_subject_of_members_with_subjects_of_their_own_is_one_of_them() -> None:
    # a list's messages share a "to" and nothing else: the subject shown was "to"
    subjects = ["Welcome to the list", "Invitation to lunch", "Reply to your order", "Weekly report"]
    assert typical_subject(subjects) == "Welcome to the list"
    # two tokens of six dropped is a run's subject with its per-copy tokens gone
    tokens = (("x1", "q9"), ("z4", "k2"), ("r7", "p3"), ("m5", "t8"))
    assert typical_subject([f"Your account {a} needs {b} attention" for a, b in tokens]) == \
        "Your account needs attention"


def test_phrase_is_drawn_from_the_shared_text() -> None:
    subjects, texts = [], []
    for k, name in enumerate(["john", "mary", "ann", "li"]):
        s = f"Cheap meds {k}x9k2"
        subjects.append(s)
        texts.append(normalise(s, f"Dear {name}, we ship discreet medication worldwide without a prescription. "
                                  f"Visit http://x{k}.example.com/?id={k}abc today"))
    subject, phrase = describe(subjects, texts)
    assert subject == "Cheap meds"
    assert phrase.startswith("we ship discreet medication") and "ztokz" not in phrase and "zurlz" not in phrase
    assert len(phrase.split()) <= 8
    assert shared_phrase([]) == ""


def test_no_two_groups_read_alike() -> None:
    # one campaign's contradictions through two accounts: two groups, two different sentences
    messages = [msg(k, code="contradiction", campaign=10, account="bob" if k < 30 else "eve", ip="192.0.2.9")
                for k in range(60)]
    messages += [msg(100 + k, code="contradiction", campaign=10, account=None, ip=f"192.0.2.{k + 20}")
                 for k in range(8)]
    groups = group_review(messages)
    check_partition(messages, groups)
    summaries = [g.summary for g in groups]
    assert len(set(summaries)) == len(summaries) == 3, summaries
    assert any("through account bob, not seen abused" in s for s in summaries)


def test_a_dimension_of_tiny_parts_is_skipped() -> None:
    # 200 messages of a new rule in 100 campaigns of two, from four clients: grouped by client, not left whole
    messages = [msg(k, code=GENERIC[0], campaign=k // 2, ip=f"198.51.100.{k % 4 + 1}") for k in range(200)]
    groups = group_review(messages)
    check_partition(messages, groups)
    assert sorted((g.messages, g.shared["client address"]) for g in groups) == [
        (50, f"198.51.100.{k}") for k in range(1, 5)]
    assert all("campaign" not in g.shared for g in groups)


def test_an_office_network_is_one_group_apart_from_a_botnet() -> None:
    # the office's workstations (a few messages each) and a botnet's clients forge the same local domain
    office = [msg(k, code="forged_local_sender", ip=f"192.0.2.{k % 60 + 10}", sender=f"u{k % 7}@example.org")
              for k in range(180)]
    botnet = [msg(1000 + k, code="forged_local_sender", ip=f"{k % 90 + 1}.{k % 7}.3.4", sender=f"x{k}@example.org")
              for k in range(180)]
    messages = office + botnet
    groups = group_review(messages)
    check_partition(messages, groups)
    first = {m.review_group for m in office}
    assert len(first) == 1 and not first & {m.review_group for m in botnet}
    g = next(g for g in groups if g.id in first)
    assert g.shared["client network"] == "192.0.2.0/24" and "from 60 client addresses in 192.0.2.0/24" in g.summary


def test_recipient_domains_tie_in_the_order_the_messages_list_them() -> None:
    # one message to eight domains: each counts once; a set would list them in the process's hash order,
    # so the same manifest would differ between two runs (or two shards' processes)
    domains = [f"d{k}.example" for k in (7, 3, 5, 0, 6, 1, 4, 2)]
    m = msg(1)
    m.envelope.rcpt_to = [f"u@{d}" for d in domains] + [f"v@{domains[0]}"]
    (group,) = group_review([m])
    assert group.recipient_domains.distinct == 8
    assert [d for d, _ in group.recipient_domains.top] == domains[:5]


def _phrase_by_counting(texts: list[str], subjects: list[str]) -> str:
    """shared_phrase as it was first written: every run of the first member counted in every member."""
    from pipeline.campaign_labels import PHRASE_WORDS, _Words

    texts = [t for t in texts if t]
    words_of = _Words()
    runs = []
    for k, t in enumerate(texts):
        subject = normalise(subjects[k], "").strip() if k < len(subjects) else ""
        body = t[len(subject):] if subject and t.startswith(subject) else t
        runs.append([words_of[w] for w in body.split()])
    n = min(PHRASE_WORDS, 4)
    first = runs[0]
    need = max(2, len(runs) // 2) if len(runs) > 1 else 1
    grams = list(zip(*(first[j:] for j in range(n)), strict=False))
    wanted = {g for g in grams if all(g) and len(" ".join(g)) > 12}
    held: Counter[tuple[str, ...]] = Counter()
    for words in runs:
        held.update(wanted.intersection(zip(*(words[j:] for j in range(n)), strict=False)))
    start = next((i for i, g in enumerate(grams) if g in wanted and held[g] >= need), None)
    if start is None:
        return "(none)"
    end = start + n
    while end < len(first) and end - start < PHRASE_WORDS and first[end]:
        end += 1
    return " ".join(first[start:end])


def test_phrase_found_by_looking_is_the_one_counting_finds() -> None:
    # the shared run comes first, fourth (past the runs looked for alone) or nowhere; members that hold a
    # run's words apart, or only across a number (which breaks a run), do not hold it
    rng = random.Random(5)
    vocab = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
             "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango"]
    for case in range(300):
        shared = rng.sample(vocab, 6)
        texts, subjects = [], []
        for k in range(rng.randint(1, 12)):
            noise = rng.sample(vocab, rng.randint(0, 10))
            head = rng.sample(vocab, rng.choice([0, 0, 3, 9]))
            body = head + (shared if rng.random() < 0.7 else shared[:2] + ["123"] + shared[2:]) + noise
            subjects.append(f"subject {case % 3}")
            texts.append(normalise(subjects[-1], " ".join(body)))
        phrase = shared_phrase(texts, subjects)
        want = _phrase_by_counting(texts, subjects)
        if want != "(none)":
            assert phrase == want, (case, texts)
