"""Mail whose SMTP AUTH account the queue does not record is never purged without evidence of spam.

Sendmail 8.17 keeps no ${auth_authen}, and many MTAs and configurations record no account: our own users'
authenticated mail then looks relayed (a local sender from outside, no account). Before the campaign rules
asked for positive evidence, such mail grouped into a campaign of its own (replies in a thread, list mail
sharing a footer) was decided `spam` by the relayed-campaign rule, and so were our bounces to those users.
"""

from __future__ import annotations

import json

import pytest

from pipeline.generator import generate, without_account, write_canonical
from pipeline.models import Verdict
from pipeline.triage import triage


@pytest.mark.slow
@pytest.mark.parametrize(("style", "seed"), [("plain", 2), ("spamware", 1)])
def test_no_valid_message_is_purged_when_the_queue_records_no_account(corpus, policy, tmp_path, style, seed):
    ham, spam = corpus
    inc = generate(ham, spam, n=600, seed=seed, style=style)
    stripped = [without_account(m) for m in inc.messages]
    assert not any(m.envelope.sasl_username or b"ESMTPSA" in m.data for m in stripped)
    tar = write_canonical(stripped, tmp_path / "incident.tar.gz")
    truth = {t["path"]: t for t in map(json.loads, (tmp_path / "incident.truth.jsonl").read_text().splitlines())}
    m = triage(tar, policy, workers=1)
    purged_valid = [(truth[x.path]["kind"], x.reasons[0].code.value) for x in m.messages
                    if truth[x.path]["label"] == "valid" and x.verdict is Verdict.spam]
    assert purged_valid == []
    replayed_junk = [x for x in m.messages if truth[x.path]["label"] == "spam" and x.verdict is Verdict.valid]
    assert replayed_junk == []
    # the spam runs are still purged on their own evidence: relays for senders not ours, made-up local senders
    junk = [x for x in m.messages if truth[x.path]["label"] == "spam"]
    assert sum(x.verdict is Verdict.spam for x in junk) >= 0.9 * len(junk)
    # our users' own mail, now with no account, is held and the admin is told why
    outbound = [x for x in m.messages if truth[x.path]["kind"] == "outbound"]
    assert outbound and all(x.verdict is Verdict.review for x in outbound)
    assert all("no account recorded" in x.reasons[0].text for x in outbound)
