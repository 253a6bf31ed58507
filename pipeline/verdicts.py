"""Decide valid / spam / review per campaign and per message from what the MTA knew and the campaigns.

The rules are two ordered tables, strongest first (CAMPAIGN_RULES, MESSAGE_RULES): the first rule that
holds decides. Anything they cannot settle is `review`; nothing becomes `spam` on size or content alone,
because a newsletter is a big near-identical cluster too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import cached_property
from typing import Generic, TypeVar

from pipeline.models import ParsedRecord, Reason, ReasonCode, ReceivedHop, Verdict, integrity_defects
from pipeline.origin import (
    SIGNED_IN_UNNAMED,
    behind_filter,
    handed_over,
    list_server_sender,
    loopback,
    our_quoted_hop,
    signed_in_unnamed,
)
from pipeline.parse import addr_domain
from pipeline.policy import SitePolicy


@dataclass(slots=True)
class Context:
    """What the envelope and our own Received hop say about one message."""

    client_ip: str | None
    trusted: bool
    local_origin: bool
    authenticated: bool
    auth_known: bool
    account: str | None
    sender_local: bool
    local_rcpts: list[str]
    external_rcpts: list[str]
    forwarded: bool
    # for a bounce: how the message it quotes reached us from our own side (None: no evidence that it did)
    bounced_ours: str | None = None
    # and the SMTP AUTH account that hop names ("" when it shows authentication without a name)
    bounced_account: str | None = None
    # our hop says the client signed in without saying as whom, and the queue recorded no account (SIGNED_IN_UNNAMED)
    signed_in: bool = False
    # derived once here: the campaign rules read them for every member, twice
    relayed: bool = field(init=False)
    forged_local: bool = field(init=False)
    inbound: bool = field(init=False)

    def __post_init__(self) -> None:
        self.relayed = (not self.authenticated and not self.local_origin and self.client_ip is not None
                        and bool(self.external_rcpts) and not self.local_rcpts and not self.forwarded)
        self.forged_local = (self.sender_local and not self.authenticated and not self.local_origin
                             and self.client_ip is not None)
        self.inbound = bool(self.local_rcpts) and not self.local_origin and not self.authenticated


# Queues that store the client's address with every message received over the network (and
# `generated`, the generator's model of a Postfix queue): there, no address is itself evidence that the
# message was submitted on the host. An IIS pickup folder, mbox, Maildir or .eml folder stores none,
# so there the same absence only means "not known".
RECORDS_CLIENT = frozenset({"postfix", "exim", "sendmail", "generated"})


def queue_kind(rec: ParsedRecord) -> str:
    """The queue format a message's envelope really came from: a canonical snapshot says which MTA."""
    return (rec.mta or "") if rec.format == "canonical" else rec.format


def records_client(rec: ParsedRecord) -> bool:
    return queue_kind(rec) in RECORDS_CLIENT


def _origin_update(rec: ParsedRecord, policy: SitePolicy) -> dict[str, object]:
    """What settling a record's origin under the final policy changes: which Received hop is ours, and
    the client address and the SMTP AUTH account from that hop when the queue did not store them, saying
    so (`envelope_inferred`). A hop that is not ours never supplies them: anyone can write a Received
    line below ours, and a foreign server's client is not the client that handed the message to us. Behind a
    content filter on the host, whatever the queue stored, the client is the one our hop below the re-injection
    names (pipeline.origin.behind_filter)."""
    hop = next((h for h in rec.received if policy.is_our_host(h.by)), None) if rec.received else rec.our_hop
    update: dict[str, object] = {}
    if hop is not rec.our_hop and hop != rec.our_hop:
        update["our_hop"] = hop
    env = rec.envelope
    if hop is None:
        return update
    fill: dict[str, object] = {}
    inferred: list[str] = []
    client = env.client_address if records_client(rec) else env.client_address or hop.from_ip
    if (real := _behind_filter(rec, client, policy)) is not None:
        fill.update(client_address=real.from_ip, client_name=real.from_name)
        inferred.append(f"client_address (our Received hop by {real.by}, below the re-injection from {client}: "
                        "a content filter on the host hands every message back on loopback)")
        _login(real, f"the same hop, by {real.by}", fill, inferred)
        update.update(envelope=env.model_copy(update=fill), envelope_inferred=[*rec.envelope_inferred, *inferred])
        return update
    if (login := _forwarded_login(rec, hop, client, policy)) is not None:
        _login(login, f"our Received hop by {login.by}, below the re-injection, from the client the filter "
               "forwarded with XFORWARD", fill, inferred)
        update.update(envelope=env.model_copy(update=fill), envelope_inferred=[*rec.envelope_inferred, *inferred])
        return update
    if records_client(rec):
        return update
    if env.client_address is None and hop.from_ip:
        fill.update(client_address=hop.from_ip, client_name=env.client_name or hop.from_name)
        inferred.append(f"client_address (our Received hop, by {hop.by})")
    if env.sasl_username is None:
        _login(hop, f"our Received hop, by {hop.by}", fill, inferred)
    if inferred:
        update.update(envelope=env.model_copy(update=fill), envelope_inferred=[*rec.envelope_inferred, *inferred])
    return update


def _login(hop: ReceivedHop, where: str, fill: dict[str, object], inferred: list[str]) -> None:
    """What a hop of ours says of its client's SMTP AUTH login, added to an envelope's update: the account it
    names, or that the client signed in without saying as whom (no account: SIGNED_IN_UNNAMED)."""
    if hop.auth_user:
        fill["sasl_username"] = hop.auth_user
        inferred.append(f"sasl_username ({where})")
    elif hop.authenticated:
        inferred.append(f"{SIGNED_IN_UNNAMED} ({where}, says its client signed in, not as whom)")


def _forwarded_login(rec: ParsedRecord, ours: ReceivedHop, client: str | None,
                     policy: SitePolicy) -> ReceivedHop | None:
    """Behind a filter that forwards its client with XFORWARD to the MTA it hands mail back to, the queue stores
    that client but not its SMTP AUTH login, and our topmost hop (`ours`) still says loopback: our hop below the
    re-injection (pipeline.origin.handed_over) from that same client, when it says the client signed in."""
    if rec.envelope.sasl_username or client is None or loopback(client) or not loopback(ours.from_ip):
        return None  # (ours not on loopback: no re-injection, nothing below to walk, for nearly every message)
    real = handed_over(rec.received, policy)
    return real if real is not None and real.from_ip == client and real.authenticated else None


def _behind_filter(rec: ParsedRecord, client: str | None, policy: SitePolicy) -> ReceivedHop | None:
    """pipeline.origin.behind_filter for a record: None for a message whose queue recorded an SMTP AUTH
    account (that session was the client's own)."""
    if rec.envelope.sasl_username:
        return None
    return behind_filter(client, rec.received, policy,
                         list_sender=list_server_sender(rec.list_id, rec.envelope.mail_from))


def resolved(rec: ParsedRecord, policy: SitePolicy) -> ParsedRecord:
    """The record with its origin settled (see _origin_update): itself when nothing changes, else a copy."""
    update = _origin_update(rec, policy)
    return rec.model_copy(update=update) if update else rec


def resolve_origin(rec: ParsedRecord, policy: SitePolicy) -> None:
    """Settle a record's origin in place (see _origin_update), for a record the caller owns."""
    for name, value in _origin_update(rec, policy).items():
        setattr(rec, name, value)


def context(rec: ParsedRecord, policy: SitePolicy) -> Context:
    env = rec.envelope
    ip = env.client_address
    if ip in ("", "unknown"):
        ip = None
    trusted = policy.is_trusted(ip)
    # Mail submitted on the host itself (Postfix pickup, `exim -bm`, sendmail's command line), on positive
    # evidence only: the queue says so (maildrop, protocol local), our own Received hop has no "from"
    # part ("by mx1 (Postfix, from userid 0)"), or a queue that stores every network client's address
    # stored none. Without one of these the origin is unknown, never local.
    hop = rec.our_hop
    # (a client named all the same came from our hop below a filter that submitted it again on the host:
    # pipeline.origin.behind_filter)
    local_queue = ip is None and (env.queue_name in ("maildrop",)
                                  or (env.protocol or "").upper() in ("LOCAL", "SENDMAIL")
                                  or (hop is not None and hop.from_ip is None and hop.from_name is None)
                                  or (records_client(rec) and (hop is None or hop.from_ip is None)))
    rcpts = env.rcpt_to or env.done_rcpt_to
    local: list[str] = []
    external: list[str] = []
    forwarded = False
    for r in rcpts:
        is_local, is_relay = policy.address_kind(r)
        forwarded = forwarded or is_relay
        if is_local:
            local.append(r)
        elif not is_relay:
            external.append(r)
    forwarded = forwarded or any(policy.is_local_address(r) for r in env.orig_rcpt_to)
    hop = _our_hop(rec, policy) if rec.bounce else None
    return Context(
        client_ip=ip,
        trusted=trusted,
        local_origin=trusted or local_queue,
        authenticated=bool(env.sasl_username),
        auth_known=queue_kind(rec) in ("postfix", "exim", "generated") and not any(
            f.startswith("sasl_username") for f in rec.envelope_inferred),
        account=env.sasl_username or None,
        sender_local=policy.is_local_address(env.mail_from),
        local_rcpts=local,
        external_rcpts=external,
        forwarded=forwarded,
        bounced_ours=bounced_from_our_side(hop, policy),
        bounced_account=(hop.auth_user or "") if hop is not None and hop.authenticated else None,
        signed_in=signed_in_unnamed(rec.envelope_inferred),
    )


def _our_hop(rec: ParsedRecord, policy: SitePolicy) -> ReceivedHop | None:
    """Our Received hop in a bounce's quoted copy: the topmost one by one of our servers (a spammer can
    write hops below it, not it)."""
    return our_quoted_hop(rec.bounced_original_received, policy)


def bounced_from_our_side(hop: ReceivedHop | None, policy: SitePolicy) -> str | None:
    """How the message a bounce quotes was handed to us by our own side, read from our Received hop
    in the quoted copy (`_our_hop`): an authenticated account, a trusted network, or a submission on the
    host. None otherwise."""
    if hop is None:
        return None
    if hop.authenticated:
        return f"authenticated as {hop.auth_user or 'a local account'} on {hop.by}"
    if hop.from_ip and policy.is_trusted(hop.from_ip):
        return f"from {hop.from_ip} (a trusted network) to {hop.by}"
    if hop.from_ip is None and hop.from_name is None:
        return f"submitted on {hop.by} itself"
    return None


def senders_seen_ours(recs: Sequence[ParsedRecord], ctxs: Sequence[Context]) -> frozenset[str]:
    """Local envelope senders the queue itself shows to be our users: they sent a message with an SMTP AUTH
    account, from a trusted network or on the host, or signed in as an account our hop does not name
    (Context.signed_in), or received a bounce of mail that reached us from our side. Such a
    sender from outside with no account recorded may be the same user whose account the queue does not
    record; a made-up local sender (what spam forging our domain uses) is seen nowhere else."""
    seen: set[str] = set()
    for rec, c in zip(recs, ctxs, strict=True):
        if not c.sender_local and not c.local_rcpts:
            continue
        if c.sender_local and (c.authenticated or c.local_origin or c.signed_in) and not rec.bounce:
            seen.add((rec.envelope.mail_from or "").lower())
        if rec.bounce and c.bounced_ours:
            seen.update(r.lower() for r in c.local_rcpts)
    return frozenset(seen)


@dataclass(slots=True)
class Decision:
    verdict: Verdict
    confidence: float
    reasons: list[Reason] = field(default_factory=list)
    accounts: set[str] = field(default_factory=set)  # accounts this decision implicates


def R(code: ReasonCode, text: str, weight: str = "info") -> Reason:
    return Reason.model_validate({"code": code, "text": text, "weight": weight})


@dataclass(slots=True)
class AccountProfile:
    account: str
    messages: int = 0
    external: set[str] = field(default_factory=set)
    ips: Counter[str] = field(default_factory=Counter)
    normal_ips: set[str] = field(default_factory=set)
    campaigns: set[int] = field(default_factory=set)
    compromised: bool = False
    attacker_ips: set[str] = field(default_factory=set)


# The rules ----------------------------------------------------------------------------------------
# Each table is read top to bottom and the first rule whose predicate holds decides; its last row
# always holds. A rule's verdict and code come from its row, so the README, generated from the rows
# (pipeline.rules_doc), says what the code does.

F = TypeVar("F")


@dataclass(slots=True)
class Outcome:
    """What a rule says about the one message or campaign it decided."""

    confidence: float
    text: str
    more: tuple[Reason, ...] = ()  # reasons after the rule's own
    accounts: frozenset[str] = frozenset()  # accounts the decision implicates (a stolen password)


@dataclass(frozen=True, slots=True)
class Rule(Generic[F]):
    """One row of a verdict table: when `when` holds, the verdict is `verdict`, for the reason `code`
    in the words `then` finds."""

    code: ReasonCode | None  # None: the message takes its campaign's decision, reasons and all
    verdict: Verdict | None  # None: its campaign's verdict
    when: Callable[[F], bool]
    then: Callable[[F], Outcome] | None  # None with code None
    summary: str  # the rule in one line an admin reads (the README)
    after_campaign: bool = False  # the message's campaign's reasons come first (a campaign left to review)
    alias: str = ""  # a name of its own, for a rule that shares its code or has none

    @property
    def name(self) -> str:
        return self.alias or (self.code.value if self.code is not None else "")


_WEIGHT = {v: v.value for v in Verdict}  # a rule's reason weighs for its verdict


def _first(table: Sequence[tuple[Callable[[F], bool], Rule[F]]], facts: F) -> Rule[F]:
    # (predicate, rule) pairs: this runs for every message of a million-message queue
    for when, rule in table:
        if when(facts):
            return rule
    raise AssertionError("a verdict table ends with a rule that always holds")


def _decision(rule: Rule[F], facts: F, campaign: Decision | None = None) -> Decision:
    if rule.code is None or rule.verdict is None or rule.then is None:
        assert campaign is not None, rule.name
        return Decision(campaign.verdict, campaign.confidence, list(campaign.reasons))
    out = rule.then(facts)
    first = list(campaign.reasons) if rule.after_campaign and campaign is not None else []
    return Decision(rule.verdict, out.confidence, [*first, R(rule.code, out.text, _WEIGHT[rule.verdict]), *out.more],
                    accounts=set(out.accounts) if out.accounts else set())


class CampaignFacts:
    """What the campaign rules read about one campaign (a cluster of at least campaign_min_size
    near-identical messages), each figure worked out once, when a rule first asks."""

    def __init__(self, members: Sequence[int], recs: Sequence[ParsedRecord], ctxs: Sequence[Context],
                 policy: SitePolicy, profiles: Mapping[str, AccountProfile],
                 our_senders: AbstractSet[str] = frozenset()) -> None:
        self.members, self.recs, self.ctxs, self.policy, self.profiles = members, recs, ctxs, policy, profiles
        self.n = n = len(members)
        self.relayed = sum(1 for i in members if ctxs[i].relayed)
        self.forged = sum(1 for i in members if ctxs[i].forged_local and ctxs[i].external_rcpts)
        self.bounces_out = sum(1 for i in members if recs[i].bounce and ctxs[i].external_rcpts
                               and not ctxs[i].local_rcpts)
        self.authed = [i for i in members if ctxs[i].authenticated]
        self.trusted_plain = sum(1 for i in members if ctxs[i].local_origin and not ctxs[i].authenticated
                                 and not recs[i].bounce)
        self.inbound = sum(1 for i in members if ctxs[i].inbound)
        self.ips = {ctxs[i].client_ip for i in members if ctxs[i].client_ip and not ctxs[i].trusted}
        self.abusive = self.relayed + self.forged
        self.abusers = [i for i in members if ctxs[i].relayed or (ctxs[i].forged_local and ctxs[i].external_rcpts)]
        # Positive evidence of a spam run: copies relayed for a sender that is not ours. A local sender
        # from outside with no account is also what our own users' mail looks like when the queue records
        # no SMTP AUTH account (Sendmail keeps none; many configurations log none): on its own it is not
        # evidence of spam, and a run of them alone is held for review (relayed_unattributed).
        self.relayed_foreign = sum(1 for i in members if ctxs[i].relayed and not ctxs[i].sender_local)
        self.forged_unknown = sum(1 for i in members if ctxs[i].forged_local and bool(ctxs[i].external_rcpts)
                                  and (recs[i].envelope.mail_from or "").lower() not in our_senders)
        self.abused = self.relayed_foreign + self.forged_unknown >= max(2, 0.1 * n)
        self.unattributed = self.abusive >= max(2, 0.1 * n)
        self.authed_bulk = bool(self.authed) and len(self.authed) >= 0.5 * n

    @cached_property
    def one_source(self) -> bool:
        ab = self.abusers
        return (len({self.ctxs[i].client_ip for i in ab}) == 1
                and len({addr_domain(self.recs[i].envelope.mail_from) for i in ab}) == 1)

    @cached_property
    def evasive(self) -> int:
        """How many of the relayed or forged copies break their words to slip past content filters."""
        return sum(1 for i in self.abusers if self.recs[i].evasion)

    @property
    def evading(self) -> bool:
        """A third of the relayed or forged copies (two at least) break words as no application writes."""
        return self.evasive >= max(2, len(self.abusers) / 3)

    @cached_property
    def stolen(self) -> dict[str, str]:
        """Accounts whose own copies (at least campaign_min_size) come from many client IPs outside
        trusted networks, or mostly carry a non-local envelope sender: why, per account."""
        th, ctxs, policy = self.policy.thresholds, self.ctxs, self.policy
        bad: dict[str, str] = {}
        for account, idx in self.by_account.items():
            if len(idx) < th.campaign_min_size:
                continue
            ips = {ctxs[i].client_ip for i in idx if ctxs[i].client_ip and not ctxs[i].trusted}
            nonlocal_senders = sum(1 for i in idx if not policy.is_local_address(self.recs[i].envelope.mail_from))
            if len(ips) >= th.compromised_min_client_ips or nonlocal_senders >= 0.5 * len(idx):
                bad[account] = (f"account {account!r}: {len(idx)} copies from {len(ips)} client IPs outside trusted "
                                f"networks, {nonlocal_senders} with a non-local sender")
        return bad

    @cached_property
    def by_account(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i in self.authed:
            out.setdefault(self.ctxs[i].account or "", []).append(i)
        return out

    @cached_property
    def main_account(self) -> tuple[str, set[str | None]]:
        """The account with most copies, and its client IPs outside trusted networks."""
        account, idx = max(self.by_account.items(), key=lambda kv: len(kv[1]))
        return account, {self.ctxs[i].client_ip for i in idx if self.ctxs[i].client_ip and not self.ctxs[i].trusted}

    @cached_property
    def bulk_marks(self) -> int:
        return sum(1 for i in self.authed if self.recs[i].list_unsubscribe or self.recs[i].precedence_bulk)

    @cached_property
    def newsletter_like(self) -> bool:
        """A newsletter and a stolen password look alike in size, in their headers (a quarter of the public
        corpus's spam_2 carries List-Unsubscribe or Precedence: bulk), in how many addresses they come from (an
        attacker needs one) and in how many accounts send them (a phish takes several): they differ in where
        they come from. The account with most copies sends them from a trusted network, or from an address it
        also uses outside campaigns."""
        account, ips = self.main_account
        prof = self.profiles.get(account)
        return not ips or (prof is not None and bool(ips & prof.normal_ips))


def _relayed_campaign(f: CampaignFacts) -> Outcome:
    # the same run may also go out through a stolen password: its account is named, so its copies are
    # spam too rather than a contradiction
    stolen = f.stolen
    more = (R(ReasonCode.stolen_account, "the same run through a stolen password: " + "; ".join(stolen.values()),
              "spam"),) if stolen else ()
    return Outcome(min(0.99, 0.8 + 0.19 * f.abusive / f.n),
                   f"{f.relayed} of {f.n} copies relayed (unauthenticated client outside trusted networks, no local "
                   f"recipient), {f.relayed_foreign} for a sender not ours; {f.forged} forged a local sender from "
                   f"outside, {f.forged_unknown} of them one never seen sending from our side; {len(f.ips)} client IPs",
                   more, frozenset(stolen))


def _authenticated_bulk(f: CampaignFacts) -> Outcome:
    account, a_ips = f.main_account
    return Outcome(0.9 if f.bulk_marks else 0.8,
                   f"near-identical mail from {len(f.by_account)} authenticated local account(s), mostly {account!r} "
                   f"through {max(1, len(a_ips))} client IP(s), local sender"
                   + (", with List-Unsubscribe/Precedence: a newsletter" if f.bulk_marks else ""))


def _evasive_single_source(f: CampaignFacts) -> Outcome:
    o = _relayed_campaign(f)
    return Outcome(o.confidence, f"all from {f.ctxs[f.abusers[0]].client_ip} with one sender domain, as an "
                   f"application of ours would be, but {f.evasive} of those {len(f.abusers)} copies break words with "
                   f"comments to slip past content filters, which no application writes; " + o.text,
                   o.more, o.accounts)


CampaignRule = Rule[CampaignFacts]
CAMPAIGN_RULES: tuple[CampaignRule, ...] = (
    Rule(ReasonCode.relayed_campaign, Verdict.spam, lambda f: f.abused and f.one_source and f.evading,
         _evasive_single_source,
         "as relayed_single_source below, but a third of those copies (two at least) break words with a comment "
         "(vi<!--x-->agra), which only filter evasion writes", alias="relayed_evasive"),
    # One client, one sender domain: a botnet run uses many; this is as likely our own web shop or CRM on
    # an address missing from trusted_networks as one abused server. A human decides.
    Rule(ReasonCode.relayed_single_source, Verdict.review,
         lambda f: f.abused and f.one_source,
         lambda f: Outcome(0.5, f"{f.abusive} of {f.n} copies relayed, all from {f.ctxs[f.abusers[0]].client_ip} "
                           "with one sender domain: an application of ours missing from trusted_networks, or one "
                           "abused server"),
         "at least 10% of the copies relayed or forging a local sender from outside, all from one client "
         "under one sender domain (also what our own web shop on an address missing from trusted_networks "
         "looks like)"),
    Rule(ReasonCode.relayed_campaign, Verdict.spam, lambda f: f.abused, _relayed_campaign,
         "at least 10% of the copies relayed (unauthenticated, client outside trusted networks, no local "
         "recipient) for a sender not ours, or forging a local sender the queue never shows sending from our "
         "side: the whole run, inbound copies included (but those from a client that sent none out: "
         "inbound_in_spam_campaign); an account that sent copies of the same run from many addresses is named as "
         "stolen"),
    Rule(ReasonCode.backscatter_campaign, Verdict.spam,
         lambda f: f.bounces_out >= max(2, 0.5 * f.n),
         lambda f: Outcome(0.95, f"{f.bounces_out} of {f.n} are our bounces to external addresses quoting the same "
                           "message: backscatter to forged senders"),
         "at least half the copies are our bounces to external addresses quoting the same message"),
    Rule(ReasonCode.stolen_account, Verdict.spam, lambda f: f.authed_bulk and bool(f.stolen),
         lambda f: Outcome(0.9, "authenticated bulk unlike a newsletter, like a stolen password: "
                           + "; ".join(f.stolen.values()), accounts=frozenset(f.stolen)),
         "at least half the copies authenticated, and one account's own copies (at least campaign_min_size) come "
         "from compromised_min_client_ips or more client IPs outside trusted networks, or mostly carry a "
         "non-local sender: a stolen password"),
    # Relaying with no account recorded, but only by local senders the queue shows as ours: the run of
    # authenticated mail of our own users through a queue that records no SMTP AUTH account looks like
    # this too. Without evidence of spam, a human decides; never purged.
    Rule(ReasonCode.relayed_unattributed, Verdict.review, lambda f: f.unattributed,
         lambda f: Outcome(0.5, f"relayed with no account recorded: {f.abusive} of {f.n} copies from local senders "
                           f"outside trusted networks; {f.forged - f.forged_unknown} of them from senders this queue "
                           "shows sending from our side, and too few relayed for a foreign sender to call it spam: "
                           "our users whose SMTP AUTH account the queue does not record, or spam forging them"),
         "at least 10% of the copies relayed with no account recorded, but too few of them for a sender not ours "
         "or a made-up local sender (one the queue never shows sending from our side): our own users' mail looks "
         "like this when the queue records no SMTP AUTH account"),
    Rule(ReasonCode.authenticated_bulk, Verdict.valid,
         lambda f: f.authed_bulk and f.newsletter_like, _authenticated_bulk,
         "at least half authenticated, and the account with most copies sending them from a trusted network or "
         "from an address it also uses outside campaigns: a newsletter, however big"),
    Rule(ReasonCode.authenticated_bulk_unclear, Verdict.review,
         lambda f: f.authed_bulk,
         lambda f: Outcome(0.5, f"bulk through account {f.main_account[0]!r} from {len(f.main_account[1])} client "
                           "IPs; cannot tell a newsletter from a stolen password"),
         "any other campaign at least half authenticated: cannot tell a newsletter from a stolen password"),
    Rule(ReasonCode.trusted_bulk, Verdict.valid, lambda f: f.trusted_plain >= 0.5 * f.n,
         lambda f: Outcome(0.85, f"{f.trusted_plain} of {f.n} submitted from trusted networks or locally"),
         "at least half submitted from trusted networks or on the host, unauthenticated, not bounces"),
    # Not judged on content: delivering it to our own users does not touch the server's reputation, and
    # the same shape is a list or newsletter they subscribed to.
    Rule(ReasonCode.inbound_bulk, Verdict.valid, lambda f: f.inbound >= 0.5 * f.n,
         lambda f: Outcome(0.8, f"{f.inbound} of {f.n} are inbound to local recipients and none relayed: mail for "
                           "our own users (a list or newsletter they receive)"),
         "at least half inbound to local recipients from outside, none relayed: delivering it does not touch the "
         "server's reputation, and a list our users subscribed to has the same shape (their own spam filter "
         "still sees it)"),
    Rule(ReasonCode.campaign_unclear, Verdict.review, lambda f: True,
         lambda f: Outcome(0.4, "a campaign with no clear origin"), "any other campaign"),
)

_CAMPAIGN_WHEN = tuple((r.when, r) for r in CAMPAIGN_RULES)

def campaign_decision(members: Sequence[int], recs: Sequence[ParsedRecord], ctxs: Sequence[Context],
                      policy: SitePolicy, profiles: Mapping[str, AccountProfile],
                      our_senders: AbstractSet[str] = frozenset()) -> Decision:
    """The verdict for a campaign (a cluster of at least campaign_min_size near-identical messages).
    our_senders: local addresses the queue shows sending from our side (see senders_seen_ours)."""
    facts = CampaignFacts(members, recs, ctxs, policy, profiles, our_senders)
    return _decision(_first(_CAMPAIGN_WHEN, facts), facts)


class MessageFacts:
    """What the message rules read about one message; the conditions several rules share, worked out once."""

    __slots__ = ("rec", "c", "campaign", "backscatter_hit", "profiles", "abusive_ips", "outbound_ips",
                 "in_spam_campaign", "bounce_to_local", "our_bounce_out", "relayed_out")

    def __init__(self, rec: ParsedRecord, c: Context, campaign: Decision | None, backscatter_hit: bool,
                 profiles: Mapping[str, AccountProfile], abusive_ips: set[str] | None,
                 outbound_ips: set[str] | None = None) -> None:
        self.rec, self.c, self.campaign, self.profiles = rec, c, campaign, profiles
        self.backscatter_hit = backscatter_hit  # a bounce grouped with a spam campaign's message
        self.abusive_ips = abusive_ips  # None: not known
        self.outbound_ips = outbound_ips  # None: not known
        self.in_spam_campaign = campaign is not None and campaign.verdict is Verdict.spam
        bounce = rec.bounce
        self.bounce_to_local = bounce and bool(c.local_rcpts) and not c.external_rcpts
        # a bounce of ours: the client is trusted or local, or there is none
        self.our_bounce_out = (bounce and bool(c.external_rcpts) and not c.local_rcpts
                               and (c.local_origin or c.client_ip is None))
        self.relayed_out = c.relayed and not c.sender_local

    @property
    def profile(self) -> AccountProfile | None:
        return self.profiles.get(self.c.account) if self.c.account else None


def _compromised(f: MessageFacts) -> bool:
    p = f.profile
    return f.c.authenticated and p is not None and p.compromised


def _from_attacker(f: MessageFacts) -> bool:
    p = f.profile
    return f.c.authenticated and p is not None and p.compromised and f.c.client_ip in p.attacker_ips


def _account_not_abused(f: MessageFacts) -> bool:
    c = f.c
    return (c.authenticated and c.account is not None and c.account in f.profiles
            and not f.profiles[c.account].compromised and not c.relayed)


def _inbound_apart(f: MessageFacts) -> bool:
    c = f.c
    return (f.in_spam_campaign and c.inbound and not c.external_rcpts and not f.rec.bounce
            and f.outbound_ips is not None and c.client_ip not in f.outbound_ips)


def _authenticated(f: MessageFacts) -> Outcome:
    from_header = any(x.startswith("sasl_username") for x in f.rec.envelope_inferred)
    return Outcome(0.9, f"authenticated as {f.c.account!r}" + (" (from Received header)" if from_header else ""))


def _in_unclear_authenticated_run(f: MessageFacts) -> bool:
    c = f.campaign
    return (f.c.authenticated and c is not None and c.verdict is Verdict.review and bool(c.reasons)
            and c.reasons[0].code == ReasonCode.authenticated_bulk_unclear)


def _through_stolen(f: MessageFacts) -> bool:
    """A bounce's quoted copy went out through an account its campaign names stolen."""
    account = f.c.bounced_account
    return bool(account) and f.campaign is not None and account in f.campaign.accounts


MessageRule = Rule[MessageFacts]
MESSAGE_RULES: tuple[MessageRule, ...] = (
    Rule(ReasonCode.defect, Verdict.review, lambda f: bool(integrity_defects(f.rec.defects)),
         lambda f: Outcome(0.3, f"cannot vouch for this message: {'; '.join(integrity_defects(f.rec.defects))}"),
         "an archive or reader defect (unsafe name, duplicate, digest mismatch, truncation, unparseable, "
         "oversize): the bytes themselves are in doubt"),
    Rule(ReasonCode.no_recipients, Verdict.review,
         lambda f: not (f.rec.envelope.rcpt_to or f.rec.envelope.done_rcpt_to),
         lambda f: Outcome(0.3, "no recipient known"), "no recipient known"),
    # A bounce to a user of ours about mail our own side sent, grouped with spam (its quoted copy alike to a
    # run's, or carrying a run's subject or Reply-To), has two stories: a run copied the user's mail, or the
    # run went out through the user's account or network. Only the campaign naming that account stolen
    # settles it; else, purged, the user would never learn their own mail was not delivered.
    Rule(ReasonCode.own_bounce_in_spam_campaign, Verdict.review,
         lambda f: (f.bounce_to_local and bool(f.c.bounced_ours) and (f.backscatter_hit or f.in_spam_campaign)
                    and not _through_stolen(f)),
         lambda f: Outcome(0.4, "a bounce to a local user grouped with spam, but the mail it quotes reached us "
                           f"{f.c.bounced_ours}: the user's own mail, or spam sent through their account or network"),
         "a bounce to local addresses grouped with spam, whose quoted copy reached us from our own side (as for "
         "bounce_to_local) and not through an account the campaign names stolen", after_campaign=True),
    Rule(ReasonCode.backscatter_local, Verdict.spam,
         lambda f: f.bounce_to_local and (f.backscatter_hit or f.in_spam_campaign),
         lambda f: Outcome(0.9, "a bounce to a local address quoting campaign spam that forged our domain as its "
                           "sender"),
         "a bounce to local addresses quoting campaign spam (spam that forged our domain)"),
    Rule(ReasonCode.bounce_to_local, Verdict.valid,
         lambda f: f.bounce_to_local and bool(f.c.bounced_ours),
         lambda f: Outcome(0.85, "a bounce to a local user about their own mail: the copy it quotes reached us "
                           f"{f.c.bounced_ours}"),
         "a bounce to local addresses whose quoted copy reached us from our own side (our Received hop in it: "
         "an authenticated account, a trusted network or a submission on the host; a spammer can write hops "
         "below ours, not ours)"),
    # spam that forged this address bounces here too: without evidence the quoted mail was ours, a human decides
    Rule(ReasonCode.bounce_to_local_unproven, Verdict.review, lambda f: f.bounce_to_local,
         lambda f: Outcome(0.5, "a bounce to a local address; nothing shows the mail it quotes came from our side "
                           "(no Received hop of ours with authentication, a trusted network or a local "
                           "submission), and it matches no spam run: perhaps backscatter"),
         "any other bounce to local addresses"),
    Rule(ReasonCode.backscatter, Verdict.spam, lambda f: f.our_bounce_out and f.backscatter_hit,
         lambda f: Outcome(0.95, "our bounce to an external address quoting a message of a spam campaign: "
                           "backscatter"),
         "our bounce to external addresses quoting a message of a spam campaign"),
    Rule(None, Verdict.spam, lambda f: f.our_bounce_out and f.in_spam_campaign, None,
         "our bounce to external addresses that is itself in a spam campaign: the campaign's verdict and reasons",
         alias="bounce_in_spam_campaign"),
    Rule(ReasonCode.bounce_external, Verdict.review, lambda f: f.our_bounce_out,
         lambda f: Outcome(0.5, "our bounce to an external address; the bounced message is not recognised as spam"),
         "any other bounce of ours to external addresses"),
    Rule(ReasonCode.contradiction, Verdict.review,
         lambda f: f.in_spam_campaign and _account_not_abused(f),
         lambda f: Outcome(0.4, f"in a spam campaign but sent by account {f.c.account!r}, not seen abused"),
         "in a spam campaign, but sent by an authenticated account not seen abused", after_campaign=True,
         alias="contradiction_account"),
    Rule(ReasonCode.contradiction, Verdict.review,
         lambda f: (f.in_spam_campaign and f.c.local_origin and not f.c.authenticated and not f.rec.bounce
                    and f.c.sender_local),
         lambda f: Outcome(0.4, "in a spam campaign but submitted locally by a local sender"),
         "in a spam campaign, but submitted from a trusted network or on the host by a local sender",
         after_campaign=True, alias="contradiction_local"),
    # A spam run is spam by what it sent out (relayed, forged, through a stolen account). A copy that only
    # came in for our own users, from a client that sent none of it out, shares the run's text, links and
    # template and nothing of how it was abused: a mailing our users receive that the run imitates (a
    # phishing run copies its brand's notice and links) looks the same. Purging it is the worst outcome.
    Rule(ReasonCode.inbound_in_spam_campaign, Verdict.review, _inbound_apart,
         lambda f: Outcome(0.4, f"in a spam campaign, but inbound to local recipients only from "
                           f"{f.c.client_ip or 'an unknown client'}, which sent none of the spam campaigns' copies "
                           "out: a mailing for our users that the run imitates, or the run's own copy to us"),
         "in a spam campaign, but inbound to local recipients only (unauthenticated, not a bounce) from a client "
         "that sent no copy of a spam campaign out (to an external recipient, or through an account)",
         after_campaign=True),
    Rule(None, None, lambda f: f.campaign is not None and f.campaign.verdict is not Verdict.review, None,
         "in a campaign decided `spam` or `valid`: the campaign's verdict and reasons", alias="campaign"),
    # From here on, a message in a campaign left to review carries the campaign's reasons first.
    Rule(ReasonCode.relayed_unknown_source, Verdict.review,
         lambda f: f.relayed_out and f.abusive_ips is not None and f.c.client_ip not in f.abusive_ips,
         lambda f: Outcome(0.5, f"relayed (sender and all recipients non-local, not authenticated) from "
                           f"{f.c.client_ip}, which sent no spam campaign and one sender domain: perhaps an "
                           "application of ours missing from trusted_networks"),
         "relayed (sender and all recipients non-local, unauthenticated, client outside trusted networks) from "
         "a client that fed no spam campaign and forged at most two sender domains: perhaps our own application",
         after_campaign=True),
    Rule(ReasonCode.relayed, Verdict.spam, lambda f: f.relayed_out and f.c.auth_known,
         lambda f: Outcome(0.9, f"relayed: sender and all recipients non-local, client {f.c.client_ip} not trusted, "
                           "not authenticated"),
         "relayed from a client that fed a spam campaign or forged several sender domains", after_campaign=True),
    Rule(ReasonCode.relayed, Verdict.spam, lambda f: f.relayed_out,
         lambda f: Outcome(0.8, f"relayed: sender and all recipients non-local, client {f.c.client_ip} not trusted, "
                           "not authenticated (authentication not recorded by this queue format)"),
         "the same, from a queue format that does not record authentication (lower confidence)",
         after_campaign=True, alias="relayed_auth_unrecorded"),
    Rule(ReasonCode.stolen_account_source, Verdict.spam, _from_attacker,
         lambda f: Outcome(0.85, f"sent through compromised account {f.c.account!r} from {f.c.client_ip}, a client "
                           "IP that fed its spam campaigns"),
         "through a compromised account, from a client address that fed its spam campaigns", after_campaign=True),
    Rule(ReasonCode.compromised_account, Verdict.review, _compromised,
         lambda f: Outcome(0.5, f"account {f.c.account!r} is compromised; this message came from {f.c.client_ip}, "
                           "not one of the attacker's IPs"),
         "through a compromised account from any other address: its owner, or the attacker from elsewhere",
         after_campaign=True),
    # A run the campaign rules could not tell from a stolen password's is held whole: its copies are signed in,
    # which alone made each of them valid below
    Rule(ReasonCode.authenticated_bulk_unclear, Verdict.review, _in_unclear_authenticated_run,
         lambda f: Outcome(0.5, f"sent through account {f.c.account!r} from {f.c.client_ip or 'an unknown client'} "
                           "in that run"),
         "authenticated, in a campaign held as authenticated_bulk_unclear", after_campaign=True,
         alias="in_authenticated_bulk_unclear"),
    Rule(ReasonCode.authenticated, Verdict.valid, lambda f: f.c.authenticated and bool(f.c.account),
         _authenticated, "authenticated by SMTP AUTH", after_campaign=True),
    # A local sender from outside without AUTH may be spoofed, or one of our own users whose client never
    # authenticated because the server never asked: outside a spam campaign, a human decides.
    Rule(ReasonCode.forged_local_sender, Verdict.review, lambda f: f.c.forged_local,
         lambda f: Outcome(0.5, f"relayed with no account recorded: local sender <{f.rec.envelope.mail_from}> from "
                           f"outside ({f.c.client_ip}): forged, one of our users whose SMTP AUTH account the queue "
                           "does not record, or a network missing from trusted_networks"),
         "a local sender from a client outside trusted networks, unauthenticated: forged, or a network "
         "missing from trusted_networks", after_campaign=True),
    Rule(ReasonCode.trusted_origin, Verdict.valid, lambda f: f.c.local_origin,
         lambda f: Outcome(0.85, "submitted from a trusted network or locally"
                           + (f" ({f.c.client_ip})" if f.c.client_ip else "")),
         "submitted from a trusted network or on the host", after_campaign=True),
    Rule(ReasonCode.inbound, Verdict.valid, lambda f: bool(f.c.local_rcpts) and not f.c.external_rcpts,
         lambda f: Outcome(0.85, f"inbound to {len(f.c.local_rcpts)} local recipient(s), not relayed"),
         "inbound to local recipients only", after_campaign=True),
    Rule(ReasonCode.mixed_recipients, Verdict.review,
         lambda f: bool(f.c.local_rcpts) and bool(f.c.external_rcpts),
         lambda f: Outcome(0.5, f"unauthenticated from {f.c.client_ip or 'an unknown client'} to local and "
                           f"{len(f.c.external_rcpts)} external recipient(s)"),
         "unauthenticated, to local and external recipients at once", after_campaign=True),
    Rule(ReasonCode.origin_unknown, Verdict.review, lambda f: True,
         lambda f: Outcome(0.4, "the queue does not say where this message came from"),
         "anything else: the queue does not say where it came from", after_campaign=True),
)

_MESSAGE_WHEN = tuple((r.when, r) for r in MESSAGE_RULES)

def message_decision(i: int, recs: Sequence[ParsedRecord], ctxs: Sequence[Context], campaign: Decision | None,
                     backscatter_hit: bool, profiles: Mapping[str, AccountProfile],
                     abusive_ips: set[str] | None = None, outbound_ips: set[str] | None = None) -> Decision:
    """The verdict for one message. abusive_ips: clients that fed a spam campaign or forged several sender
    domains; a relayed message from any other client may be an application of ours (review, not spam).
    outbound_ips: clients that sent a spam campaign's copies out; an inbound copy from any other client
    is held for review (None: not known, and no copy is)."""
    facts = MessageFacts(recs[i], ctxs[i], campaign, backscatter_hit, profiles, abusive_ips, outbound_ips)
    return _decision(_first(_MESSAGE_WHEN, facts), facts, campaign)
