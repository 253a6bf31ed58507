"""Decide valid / spam / review per campaign and per message from what the MTA knew and the campaigns.

The rules, strongest first. Anything they cannot settle is `review`; nothing becomes `spam` on size
or content alone, because a newsletter is a big near-identical cluster too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.models import ParsedRecord, Reason, Verdict
from pipeline.parse import addr_domain
from pipeline.policy import SitePolicy


# Defects from the archive or the reader rather than the MIME structure (those start "mime:"): the
# bytes themselves are in doubt, so a human must look whatever else we know.
def integrity_defects(rec: ParsedRecord) -> list[str]:
    return [d for d in rec.defects if not d.startswith("mime:")]


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
    null_sender: bool
    local_rcpts: list[str]
    external_rcpts: list[str]
    forwarded: bool
    # for a bounce: how the message it quotes reached us from our own side (None: no evidence that it did)
    bounced_ours: str | None = None
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


def resolve_origin(rec: ParsedRecord, policy: SitePolicy) -> None:
    """Settle which Received hop is ours under the final policy, and take the client address and the
    SMTP AUTH account from that hop when the queue did not store them, saying so. A hop that is not
    ours never supplies them: anyone can write a Received line below ours, and a foreign server's
    client is not the client that handed the message to us."""
    if rec.received:
        rec.our_hop = next((h for h in rec.received if policy.is_our_host(h.by)), None)
    hop, env = rec.our_hop, rec.envelope
    if hop is None or records_client(rec):
        return
    inferred = rec.envelope_inferred
    if env.client_address is None and hop.from_ip:
        env.client_address = hop.from_ip
        env.client_name = env.client_name or hop.from_name
        inferred.append(f"client_address (our Received hop, by {hop.by})")
    if env.sasl_username is None and hop.authenticated:
        env.sasl_username = hop.auth_user or "(authenticated)"
        inferred.append(f"sasl_username (our Received hop, by {hop.by})")


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
    local_queue = (env.queue_name in ("maildrop",) or (env.protocol or "").upper() in ("LOCAL", "SENDMAIL")
                   or (ip is None and hop is not None and hop.from_ip is None and hop.from_name is None)
                   or (ip is None and records_client(rec) and (hop is None or hop.from_ip is None)))
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
    return Context(
        client_ip=ip,
        trusted=trusted,
        local_origin=trusted or local_queue,
        authenticated=bool(env.sasl_username),
        auth_known=queue_kind(rec) in ("postfix", "exim", "generated") and not any(
            f.startswith("sasl_username") for f in rec.envelope_inferred),
        account=env.sasl_username or None,
        sender_local=policy.is_local_address(env.mail_from),
        null_sender=env.mail_from == "",
        local_rcpts=local,
        external_rcpts=external,
        forwarded=forwarded,
        bounced_ours=bounced_from_our_side(rec, policy) if rec.bounce else None,
    )


def bounced_from_our_side(rec: ParsedRecord, policy: SitePolicy) -> str | None:
    """How the message a bounce quotes was handed to us by our own side, read from our Received hop
    in the quoted copy (the topmost one by one of our servers: a spammer can write hops below it, not
    it): an authenticated account, a trusted network, or a submission on the host. None otherwise."""
    hop = next((h for h in rec.bounced_original_received if policy.is_our_host(h.by)), None)
    if hop is None:
        return None
    if hop.authenticated:
        return f"authenticated as {hop.auth_user or 'a local account'} on {hop.by}"
    if hop.from_ip and policy.is_trusted(hop.from_ip):
        return f"from {hop.from_ip} (a trusted network) to {hop.by}"
    if hop.from_ip is None and hop.from_name is None:
        return f"submitted on {hop.by} itself"
    return None


@dataclass(slots=True)
class Decision:
    verdict: Verdict
    confidence: float
    reasons: list[Reason] = field(default_factory=list)
    accounts: set[str] = field(default_factory=set)  # accounts this decision implicates


def R(code: str, text: str, weight: str = "info") -> Reason:  # reads like a constructor
    return Reason.model_validate({"code": code, "text": text, "weight": weight})


@dataclass(slots=True)
class AccountProfile:
    account: str
    messages: int = 0
    external: set[str] = field(default_factory=set)
    ips: Counter[str] = field(default_factory=Counter)
    untrusted_ips: set[str] = field(default_factory=set)
    normal_ips: set[str] = field(default_factory=set)
    campaigns: set[int] = field(default_factory=set)
    compromised: bool = False
    attacker_ips: set[str] = field(default_factory=set)
    why: str = ""


def campaign_decision(members: Sequence[int], recs: Sequence[ParsedRecord], ctxs: Sequence[Context],
                      policy: SitePolicy, profiles: dict[str, AccountProfile]) -> Decision:
    """The verdict for a campaign (a cluster of at least campaign_min_size near-identical messages)."""
    n = len(members)
    relayed = sum(1 for i in members if ctxs[i].relayed)
    forged = sum(1 for i in members if ctxs[i].forged_local and ctxs[i].external_rcpts)
    bounces_out = sum(1 for i in members if recs[i].bounce and ctxs[i].external_rcpts and not ctxs[i].local_rcpts)
    authed = [i for i in members if ctxs[i].authenticated]
    trusted_plain = [i for i in members if ctxs[i].local_origin and not ctxs[i].authenticated and not recs[i].bounce]
    inbound = sum(1 for i in members if ctxs[i].inbound)
    ips = {ctxs[i].client_ip for i in members if ctxs[i].client_ip and not ctxs[i].trusted}

    abusive = relayed + forged
    abusers = [i for i in members if ctxs[i].relayed or (ctxs[i].forged_local and ctxs[i].external_rcpts)]
    one_source = len({ctxs[i].client_ip for i in abusers}) == 1 and len(
        {addr_domain(recs[i].envelope.mail_from) for i in abusers}) == 1
    if abusive >= max(2, 0.1 * n) and one_source:
        # One client, one sender domain: a botnet run uses many; this is as likely our own web shop or
        # CRM on an address missing from trusted_networks as one abused server. A human decides.
        ip = ctxs[abusers[0]].client_ip
        return Decision(Verdict.review, 0.5, [
            R("relayed_single_source", f"{abusive} of {n} copies relayed, all from {ip} with one sender domain: "
              "an application of ours missing from trusted_networks, or one abused server", "review")])
    if abusive >= max(2, 0.1 * n):
        # the same run may also go out through a stolen password: its account is named, so its
        # copies are spam too rather than a contradiction
        stolen = _stolen_accounts(authed, recs, ctxs, policy)
        return Decision(Verdict.spam, min(0.99, 0.8 + 0.19 * abusive / n), [
            R("relayed_campaign", f"{relayed} of {n} copies relayed (unauthenticated client outside trusted "
              f"networks, no local recipient); {forged} forged a local sender from outside; "
              f"{len(ips)} client IPs", "spam"),
            *([R("stolen_account", "the same run through a stolen password: " + "; ".join(stolen.values()),
                 "spam")] if stolen else [])], accounts=set(stolen))
    if bounces_out >= max(2, 0.5 * n):
        return Decision(Verdict.spam, 0.95, [
            R("backscatter_campaign", f"{bounces_out} of {n} are our bounces to external addresses quoting "
              "the same message: backscatter to forged senders", "spam")])
    if authed and len(authed) >= 0.5 * n:
        return _authenticated_bulk(authed, recs, ctxs, policy, profiles)
    if len(trusted_plain) >= 0.5 * n:
        return Decision(Verdict.valid, 0.85, [
            R("trusted_bulk", f"{len(trusted_plain)} of {n} submitted from trusted networks or locally", "valid")])
    if inbound >= 0.5 * n:
        # Not judged on content: delivering it to our own users does not touch the server's reputation,
        # and the same shape is a list or newsletter they subscribed to.
        return Decision(Verdict.valid, 0.8, [
            R("inbound_bulk", f"{inbound} of {n} are inbound to local recipients and none relayed: "
              "mail for our own users (a list or newsletter they receive)", "valid")])
    return Decision(Verdict.review, 0.4, [R("campaign_unclear", "a campaign with no clear origin", "review")])


def _stolen_accounts(authed: Sequence[int], recs: Sequence[ParsedRecord], ctxs: Sequence[Context],
                     policy: SitePolicy) -> dict[str, str]:
    """Accounts whose own copies in a campaign (at least campaign_min_size) come from many client IPs
    outside trusted networks, or mostly carry a non-local envelope sender: why, per account."""
    th = policy.thresholds
    by_account: dict[str, list[int]] = {}
    for i in authed:
        by_account.setdefault(ctxs[i].account or "", []).append(i)
    bad: dict[str, str] = {}
    for account, idx in by_account.items():
        if len(idx) < th.campaign_min_size:
            continue
        ips = {ctxs[i].client_ip for i in idx if ctxs[i].client_ip and not ctxs[i].trusted}
        nonlocal_senders = sum(1 for i in idx if not policy.is_local_address(recs[i].envelope.mail_from))
        if len(ips) >= th.compromised_min_client_ips or nonlocal_senders >= 0.5 * len(idx):
            bad[account] = (f"account {account!r}: {len(idx)} copies from {len(ips)} client IPs outside trusted "
                            f"networks, {nonlocal_senders} with a non-local sender")
    return bad


def _authenticated_bulk(authed: Sequence[int], recs: Sequence[ParsedRecord], ctxs: Sequence[Context],
                        policy: SitePolicy, profiles: dict[str, AccountProfile]) -> Decision:
    """A newsletter and a stolen password look alike in size; they differ in where they come from
    (see _stolen_accounts)."""
    by_account: dict[str, list[int]] = {}
    for i in authed:
        by_account.setdefault(ctxs[i].account or "", []).append(i)
    bad = _stolen_accounts(authed, recs, ctxs, policy)
    if bad:
        return Decision(Verdict.spam, 0.9, [R("stolen_account", "authenticated bulk unlike a newsletter, like a "
                                              "stolen password: " + "; ".join(bad.values()), "spam")],
                        accounts=set(bad))
    account, idx = max(by_account.items(), key=lambda kv: len(kv[1]))
    prof = profiles.get(account)
    a_ips = {ctxs[i].client_ip for i in idx if ctxs[i].client_ip and not ctxs[i].trusted}
    bulk_marks = sum(1 for i in authed if recs[i].list_unsubscribe or recs[i].precedence_bulk)
    known_ip = prof is not None and (not a_ips or bool(a_ips & prof.normal_ips))
    if bulk_marks >= 0.5 * len(authed) or known_ip or len(a_ips) <= 2 or len(by_account) > 1:
        return Decision(Verdict.valid, 0.9 if bulk_marks else 0.8, [
            R("authenticated_bulk", f"near-identical mail from {len(by_account)} authenticated local account(s), "
              f"mostly {account!r} through {max(1, len(a_ips))} client IP(s), local sender"
              + (", with List-Unsubscribe/Precedence: a newsletter" if bulk_marks else ""), "valid")])
    return Decision(Verdict.review, 0.5, [
        R("authenticated_bulk_unclear", f"bulk through account {account!r} from {len(a_ips)} client IPs; "
          "cannot tell a newsletter from a stolen password", "review")])


def message_decision(i: int, recs: Sequence[ParsedRecord], ctxs: Sequence[Context], campaign: Decision | None,
                     backscatter_hit: bool, profiles: dict[str, AccountProfile],
                     abusive_ips: set[str] | None = None) -> Decision:
    """The verdict for one message. abusive_ips: clients that fed a spam campaign or forged several sender
    domains; a relayed message from any other client may be an application of ours (review, not spam)."""
    rec, c = recs[i], ctxs[i]
    reasons: list[Reason] = []
    if integ := integrity_defects(rec):
        return Decision(Verdict.review, 0.3, [R("defect", f"cannot vouch for this message: {'; '.join(integ)}",
                                                "review")])
    if not (rec.envelope.rcpt_to or rec.envelope.done_rcpt_to):
        return Decision(Verdict.review, 0.3, [R("no_recipients", "no recipient known", "review")])
    if rec.bounce and c.local_rcpts and not c.external_rcpts:
        if backscatter_hit or (campaign is not None and campaign.verdict is Verdict.spam):
            return Decision(Verdict.spam, 0.9, [R("backscatter_local", "a bounce to a local address quoting "
                                                  "campaign spam that forged our domain as its sender", "spam")])
        if c.bounced_ours:
            return Decision(Verdict.valid, 0.85, [R("bounce_to_local", "a bounce to a local user about their own "
                                                    f"mail: the copy it quotes reached us {c.bounced_ours}", "valid")])
        # spam that forged this address bounces here too: without evidence the quoted mail was ours, a human decides
        return Decision(Verdict.review, 0.5, [R("bounce_to_local_unproven", "a bounce to a local address; nothing "
                                                "shows the mail it quotes came from our side (no Received hop of ours "
                                                "with authentication, a trusted network or a local submission), and "
                                                "it matches no spam run: perhaps backscatter", "review")])
    if rec.bounce and c.external_rcpts and not c.local_rcpts and (c.local_origin or c.client_ip is None):
        if backscatter_hit:
            return Decision(Verdict.spam, 0.95, [R("backscatter", "our bounce to an external address quoting a "
                                                   "message of a spam campaign: backscatter", "spam")])
        if campaign and campaign.verdict is Verdict.spam:
            return Decision(Verdict.spam, campaign.confidence, [*campaign.reasons])
        return Decision(Verdict.review, 0.5, [R("bounce_external", "our bounce to an external address; the "
                                                "bounced message is not recognised as spam", "review")])
    if campaign is not None:
        if campaign.verdict is Verdict.spam and c.authenticated and c.account in profiles and not (
                profiles[c.account].compromised) and not c.relayed:
            return Decision(Verdict.review, 0.4, [*campaign.reasons, R(
                "contradiction", f"in a spam campaign but sent by account {c.account!r}, not seen abused", "review")])
        if campaign.verdict is Verdict.spam and c.local_origin and not c.authenticated and not rec.bounce and (
                c.sender_local):
            return Decision(Verdict.review, 0.4, [*campaign.reasons, R(
                "contradiction", "in a spam campaign but submitted locally by a local sender", "review")])
        if campaign.verdict is not Verdict.review:
            return Decision(campaign.verdict, campaign.confidence, list(campaign.reasons))
        reasons.extend(campaign.reasons)
    # A local sender from outside without AUTH may be spoofed, or one of our own users whose client
    # never authenticated because the server never asked: outside a spam campaign, a human decides.
    if c.relayed and not c.sender_local and abusive_ips is not None and c.client_ip not in abusive_ips:
        return Decision(Verdict.review, 0.5, [*reasons, R(
            "relayed_unknown_source", f"relayed (sender and all recipients non-local, not authenticated) from "
            f"{c.client_ip}, which sent no spam campaign and one sender domain: perhaps an application of ours "
            "missing from trusted_networks", "review")])
    if c.relayed and not c.sender_local:
        extra = "" if c.auth_known else " (authentication not recorded by this queue format)"
        return Decision(Verdict.spam, 0.9 if c.auth_known else 0.8, [*reasons, R(
            "relayed", f"relayed: sender and all recipients non-local, client {c.client_ip} not trusted, "
            f"not authenticated{extra}", "spam")])
    if c.authenticated and c.account:
        prof = profiles.get(c.account)
        if prof and prof.compromised and c.client_ip in prof.attacker_ips:
            return Decision(Verdict.spam, 0.85, [*reasons, R(
                "stolen_account_source", f"sent through compromised account {c.account!r} from {c.client_ip}, "
                "a client IP that fed its spam campaigns", "spam")])
        if prof and prof.compromised:
            return Decision(Verdict.review, 0.5, [*reasons, R(
                "compromised_account", f"account {c.account!r} is compromised; this message came from "
                f"{c.client_ip}, not one of the attacker's IPs", "review")])
        from_header = any(f.startswith("sasl_username") for f in rec.envelope_inferred)
        return Decision(Verdict.valid, 0.9, [*reasons, R(
            "authenticated", f"authenticated as {c.account!r}" + (" (from Received header)" if from_header else ""),
            "valid")])
    if c.forged_local:
        return Decision(Verdict.review, 0.5, [*reasons, R(
            "forged_local_sender", f"local sender <{rec.envelope.mail_from}> from outside ({c.client_ip}), "
            "not authenticated: forged, or a network missing from trusted_networks", "review")])
    if c.local_origin:
        return Decision(Verdict.valid, 0.85, [*reasons, R("trusted_origin", "submitted from a trusted network "
                                                          "or locally" + (f" ({c.client_ip})" if c.client_ip else ""),
                                                          "valid")])
    if c.local_rcpts and not c.external_rcpts:
        return Decision(Verdict.valid, 0.85, [*reasons, R("inbound", f"inbound to {len(c.local_rcpts)} local "
                                                          "recipient(s), not relayed", "valid")])
    if c.local_rcpts and c.external_rcpts:
        return Decision(Verdict.review, 0.5, [*reasons, R(
            "mixed_recipients", f"unauthenticated from {c.client_ip or 'an unknown client'} to local and "
            f"{len(c.external_rcpts)} external recipient(s)", "review")])
    return Decision(Verdict.review, 0.4, [*reasons, R("origin_unknown", "the queue does not say where this "
                                                      "message came from", "review")])
