"""Who handed a message to us, when a content filter on the host stands between.

Amavis, or a milter that resubmits, hands every message back to the MTA on loopback. Without XFORWARD the
queue's client is then 127.0.0.1 for every message: trusted (Postfix's own mynetworks holds 127.0.0.0/8, for
applications on the host), so the whole relayed queue was the host's own mail (a 3,000-message spamware queue
came out 2,280 spam as valid). Our own Received hop below the re-injection names the client. Read by the
verdicts (pipeline.verdicts, from records) and by the grouping's tally of clients (pipeline.campaigns, from a
parsed shard's columns), so both routes settle a message's client alike.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from pipeline.models import ReceivedHop
from pipeline.policy import SitePolicy


@lru_cache(maxsize=4096)
def loopback(ip: str | None) -> bool:
    try:
        return ip is not None and ipaddress.ip_address(ip.strip("[]").removeprefix("IPv6:")).is_loopback
    except ValueError:
        return False


def on_host(h: ReceivedHop) -> bool:
    """A hop of a submission on the host itself: no "from" part ("by mx1 (Postfix, from userid 0)")."""
    return h.from_ip is None and h.from_name is None


def handed_over(received: Sequence[ReceivedHop], policy: SitePolicy) -> ReceivedHop | None:
    """Below our topmost hop, when that hop took the message on loopback or from a program on the host: the hop of
    ours where a client elsewhere handed it to us. A filter may write a hop of its own on the way (amavisd-new's
    "by localhost"); a hop below one taken on loopback was written on this host, so the walk goes on through
    loopback hops whoever they name. It stops at the first hop from elsewhere (ours: that one; another server's:
    anyone can write that, None) or at a submission on the host (no client at all: that is the origin, None)."""
    start = next((i for i, h in enumerate(received) if policy.is_our_host(h.by)), None)
    if start is None or not (loopback(received[start].from_ip) or on_host(received[start])):
        return None
    for h in received[start + 1:]:
        if on_host(h):
            return None
        if h.from_ip and not loopback(h.from_ip):
            return h if policy.is_our_host(h.by) else None
    return None


def withdrawn(real: ReceivedHop | None, policy: SitePolicy) -> bool:
    """Whether the hop below a loopback re-injection takes back the trust the loopback client gave: it names
    a client that is not trusted. Signed in or not, its mail is then judged by where it was sent from, as any
    client's: with the account the hop names, or, where it says only that its client signed in (Postfix names
    no account unless smtpd_sasl_authenticated_header is on), with none (SIGNED_IN_UNNAMED):
    a stolen password's run from a botnet is never the host's own mail."""
    return real is not None and not policy.is_trusted(real.from_ip)


def behind_filter(client: str | None, received: Sequence[ReceivedHop], policy: SitePolicy,
                  list_sender: str | None = None) -> ReceivedHop | None:
    """Our hop naming the client a message really came from, when its client is a trusted loopback address, or it
    has none because a program on the host submitted it, only because a filter on the host re-injected it
    (`handed_over`: amavis over SMTP, SpamAssassin's spamc piped to the MTA's sendmail), and that client is
    not trusted (`withdrawn`): else None, and the loopback client or the submission on the host stands.
    `list_sender`: the envelope sender of a list's own copy (list_server_sender); from a local address, it is a
    list server on the host sending a post on (Mailman resends every post; by its poster's client it would be a forged
    local sender), and the message stays the host's own."""
    if client is not None and not (loopback(client) and policy.is_trusted(client)):
        return None
    if list_sender is not None and policy.is_local_address(list_sender):
        return None
    real = handed_over(received, policy)
    return real if withdrawn(real, policy) else None


def list_server_sender(list_id: str, mail_from: str | None) -> str | None:
    """The envelope sender of a list server's own copy: `mail_from` when the List-Id's identifier names a list at
    the sender's domain (python-list.example.org, from python-list-bounces@example.org as Mailman writes them, or
    from any other address there: a list server's bounce addresses vary, with VERP per member), else None. Any
    List-Id with any local sender would let a relayed spam that carries one (a tenth of the public corpus's
    spam_2 does: other lists', from the spam's own trip) and forges a local sender pass for a list server's resend
    behind a filter; naming a list of our own domain takes a spammer who aims at it."""
    if not list_id or not mail_from or "@" not in mail_from:
        return None
    domain = mail_from.lower().rpartition("@")[2]
    return mail_from if domain and list_id.endswith("." + domain) and len(list_id) > len(domain) + 1 else None


def our_quoted_hop(received: Sequence[ReceivedHop], policy: SitePolicy) -> ReceivedHop | None:
    """Our hop in the copy a bounce quotes: the topmost one by one of our servers (a spammer can write hops below
    it, not it), or, when that copy went through a filter on the host, the hop below that names who handed it
    to us (`behind_filter`)."""
    hop = next((h for h in received if policy.is_our_host(h.by)), None)
    if hop is None or hop.authenticated:
        return hop
    return behind_filter(hop.from_ip, received, policy) or hop


# What envelope_inferred says of a message whose account the queue did not record and our Received hop says only
# was signed in (Postfix names the account only with smtpd_sasl_authenticated_header = yes): no account is
# recorded (one standing for all such logins would make five users forwarding one newsletter a stolen password's
# run, and purge it), but its local sender is one of ours (pipeline.verdicts.senders_seen_ours)
SIGNED_IN_UNNAMED = "sasl_username unknown"


def signed_in_unnamed(envelope_inferred: Sequence[str]) -> bool:
    return any(f.startswith(SIGNED_IN_UNNAMED) for f in envelope_inferred)


# A parsed shard keeps a message's hops as text for the plan step (pipeline.campaigns.client_evidence): one
# line a hop, its fields between tabs (Received lines are read with their whitespace folded: no tab is left).
LIST_MARK = "\x00list"


def hop_text(h: ReceivedHop) -> str:
    return "\t".join((h.by or "", h.from_ip or "", "" if h.from_name is None else "1", "1" if h.authenticated else "",
                      h.auth_user or ""))


def hop_of(text: str) -> ReceivedHop:
    fields = text.split("\t")
    if len(fields) == 3:  # a shard parsed before these lines: "by<TAB>ip<TAB>1 if authenticated, else 0"
        by, ip, auth = fields
        return ReceivedHop(by=by or None, from_ip=ip or None, from_name=ip or None, authenticated=auth == "1")
    by, ip, name, auth, user = fields
    return ReceivedHop(by=by or None, from_ip=ip or None, from_name=name or None, authenticated=bool(auth),
                       auth_user=user or None)


def filter_evidence(client: str | None, received: Sequence[ReceivedHop], list_sender: str | None) -> list[str] | None:
    """What `behind_filter` needs of a message whose client is a loopback address, as text (None for any other:
    it reads nothing more of those). `client` None: a queue that stores none, or a submission on the host, when
    a hop names a loopback client or none (the topmost of ours may be that one)."""
    if not received or not (loopback(client) if client is not None
                            else any(loopback(h.from_ip) or on_host(h) for h in received)):
        return None
    return ([f"{LIST_MARK}\t{list_sender}"] if list_sender is not None else []) + [hop_text(h) for h in received]


def client_of_evidence(client: str | None, lines: Sequence[str], policy: SitePolicy) -> str | None:
    """`behind_filter` over `filter_evidence`: the client a message came from. `client` None: a queue that
    stores none, whose client is the one our topmost hop names (pipeline.verdicts.resolve_origin)."""
    list_sender = lines[0].split("\t", 1)[1] if lines and lines[0].startswith(LIST_MARK) else None
    hops = [hop_of(x) for x in lines[1 if list_sender is not None else 0:]]
    if client is None:
        ours = next((h for h in hops if policy.is_our_host(h.by)), None)
        client = ours.from_ip if ours is not None else None
    real = behind_filter(client, hops, policy, list_sender)
    return real.from_ip if real is not None and real.from_ip else client
