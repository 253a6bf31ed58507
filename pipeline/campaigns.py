"""Group the copies of a spam run into campaigns: MinHash/LSH near-duplicates and invariant keys, linked
by connected components with a guard against one message bridging two runs.

Per-message features (pipeline.features) are computed at parse time; the reduce half links them: this
module holds what it reads (Features, Grouping, feature_digest) and the backscatter's and the clients'
evidence; the linking itself is pipeline.clusterer's CampaignClusterer, which needs scikit-learn and is
loaded only where it runs. The result depends on the messages, not on the order they come in.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import Counter
from collections.abc import Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.features import ENGLISH_STOP_WORDS, MIN_TOKENS, SKETCH_PERM, sketch, tokens
from pipeline.origin import client_of_evidence, filter_evidence, hop_of, hop_text, list_server_sender, our_quoted_hop

if TYPE_CHECKING:
    from pipeline.models import ParsedRecord
    from pipeline.policy import SitePolicy

_PLACEHOLDERS = {"zurlz", "ztokz"}


class Features(NamedTuple):
    """What grouping knows of one message: normalised text, its sketch, invariant keys, template shape."""

    text: str
    sketch: Sequence[int] = ()
    keys: Sequence[str] = ()
    shape: str = ""
    bounce: bool = False  # a bounce: its features are those of the copy it quotes
    own: str = ""  # a bounce's own content digest (see feature_digest)


def as_features(x: Features | str) -> Features:
    return x if isinstance(x, Features) else Features(x, sketch(x))


def feature_digest(text: str, keys: Sequence[str], shape: str, sketch: Sequence[int], own: str = "") -> bytes:
    """16 bytes that are equal exactly when two messages' grouping features are (the exact-duplicate
    fold), computed where a message is parsed so the reduce never holds the texts. Every part is
    length-prefixed: no two different feature sets write the same bytes. `own`: a bounce's own content
    digest (its sha256), which a bounce quoting nothing to compare (no text, no keys) folds by: else
    every such bounce of one server, their features all empty, would fold into one run."""
    h = hashlib.blake2b(digest_size=16)
    for part in (text, shape, *keys):
        b = part.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    h.update(len(keys).to_bytes(8, "little"))
    h.update(_u8_bytes(sketch))
    if own and not text and not keys:
        h.update(b"own" + own.encode())
    return h.digest()


def own_digest(r: ParsedRecord) -> str:
    """What `feature_digest` takes as `own` for a parsed message."""
    return r.sha256 if r.bounce else ""


def features_of(r: ParsedRecord) -> Features:
    """The grouping's input of one parsed message."""
    return Features(r.text, r.sketch, r.keys, r.shape, r.bounce, own_digest(r))


_U8_SKETCH = struct.Struct(f"<{SKETCH_PERM}Q")


def _u8_bytes(sketch: Sequence[int]) -> bytes:
    """The sketch as little-endian uint64s: struct packs a standard one of ints in a third of numpy's time;
    anything struct refuses (floats, values out of range) goes through numpy, as it always did."""
    if len(sketch) == SKETCH_PERM:
        try:
            return _U8_SKETCH.pack(*sketch)
        except struct.error:
            pass
    return np.asarray(sketch, dtype="<u8").tobytes()


class Grouping(NamedTuple):
    """What the clusterer reads of n messages, as arrays (no Python object per message).

    digest: (n,) bytes16 (`feature_digest`); sketch: (n, SKETCH_PERM) uint32, rows without a sketch
    anything; has_sketch: (n,) bool; shape: (n,) int template ids; key_msg, key_id: one entry per
    invariant key a message carries (key_msg the message's index, key_id the key's number), key ids
    and shape ids numbered in any way that is the same for equal strings; bounce: (n,) bool, which
    messages are bounces (None: none is); follow: one per key entry, whether a bounce follows that key to its
    run (`followed_keys`; None: none is followed)."""

    digest: np.ndarray
    sketch: np.ndarray
    has_sketch: np.ndarray
    shape: np.ndarray
    key_msg: np.ndarray
    key_id: np.ndarray
    bounce: np.ndarray | None = None
    follow: np.ndarray | None = None

    @classmethod
    def of(cls, feats: Sequence[Features]) -> Grouping:
        n = len(feats)
        sketches = np.zeros((n, SKETCH_PERM), dtype=np.uint32)
        has = np.zeros(n, dtype=bool)
        for i, f in enumerate(feats):
            if len(f.sketch) == SKETCH_PERM:
                sketches[i] = f.sketch
                has[i] = True
        return cls.assemble(np.array([feature_digest(f.text, f.keys, f.shape, f.sketch, f.own) for f in feats],
                                     dtype="S16"),
                            sketches, has, [f.shape for f in feats], [f.keys for f in feats],
                            np.fromiter((f.bounce for f in feats), dtype=bool, count=n))

    @classmethod
    def assemble(cls, digest: np.ndarray, sketch: np.ndarray, has_sketch: np.ndarray, shapes: Sequence[str],
                 keys: Sequence[Sequence[str]], bounce: np.ndarray | None = None) -> Grouping:
        """The arrays, given each message's digest and sketch, its template shape and keys as strings, and
        which messages are bounces."""
        # strings numbered in the order first met, by Arrow's dictionary encoding: a Python loop over
        # every key of every message was a tenth of the serial part of a triage
        flat = pa.array(list(chain.from_iterable(keys)), pa.string())
        per = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
        return cls(digest, sketch, has_sketch, _first_met(pa.array(shapes, pa.string())),
                   np.repeat(np.arange(len(keys), dtype=np.int64), per), _first_met(flat), bounce, followed_keys(flat))


def followed_keys(flat: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """For each key, whether a bounce follows it to its run (`_bounces_home`): 1 a subject key, within its
    template shape; 2 a Reply-To address, in any shape; 0 any other (a link, an image: maybe a kit's)."""
    subject = pc.or_(pc.starts_with(flat, "s:"), pc.starts_with(flat, "t:"))
    reply = pc.starts_with(flat, "r:")
    out: np.ndarray = (np.asarray(subject.to_numpy(zero_copy_only=False), dtype=np.int8)
                       + 2 * np.asarray(reply.to_numpy(zero_copy_only=False), dtype=np.int8))
    return out


def _first_met(strings: pa.Array) -> np.ndarray:
    """Each string's number, equal strings alike, numbered in the order first met."""
    out: np.ndarray = pc.dictionary_encode(strings).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return out


def _unique(a: np.ndarray) -> np.ndarray:
    """np.unique(a) of a 1-D array, by a sort: numpy 2's hash table for it is some thirty times slower
    on these integers."""
    s = np.sort(a)
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


def _unique_rows(a: np.ndarray, inverse: bool = False, counts: bool = False) -> Any:
    """np.unique(a, axis=0) of integer rows, in the same (lexicographic) order, with the inverse or
    the counts if asked: each row packed into one int64 when the columns' ranges allow (numpy sorts
    rows as structured values, an order of magnitude slower), else a lexsort of the columns."""
    m, k = a.shape
    if m == 0:
        none = np.empty(0, dtype=np.int64)
        return (np.empty((0, k), dtype=a.dtype), *[none for x in (inverse, counts) if x]) if inverse or counts \
            else np.empty((0, k), dtype=a.dtype)
    low = a.min(axis=0)
    # each column's range in Python ints: max - min in the array's own type wraps past 2**63
    span = [int(hi) - int(lo) + 1 for hi, lo in zip(a.max(axis=0).tolist(), low.tolist(), strict=True)]
    if a.dtype.kind == "i" and math.prod(span) < 2**63:
        key = np.zeros(m, dtype=np.int64)
        for j in range(k):
            key = key * span[j] + (a[:, j] - low[j])
        if not (inverse or counts):
            uk = _unique(key)
            rows = np.empty((len(uk), k), dtype=a.dtype)
            for j in range(k - 1, -1, -1):
                uk, rows[:, j] = np.divmod(uk, span[j])
            return rows + low
        order = np.argsort(key, kind="stable")
        ks = key[order]
        new = np.r_[True, ks[1:] != ks[:-1]]
    else:
        order = np.lexsort(a.T[::-1])  # the last key given is the primary one
        s = a[order]
        new = np.r_[True, (s[1:] != s[:-1]).any(axis=1)]
    res: list[np.ndarray] = [a[order[new]]]
    if inverse:
        inv = np.empty(m, dtype=np.int64)
        inv[order] = np.cumsum(new) - 1
        res.append(inv)
    if counts:
        res.append(np.diff(np.r_[np.flatnonzero(new), m]))
    return res[0] if len(res) == 1 else tuple(res)


def top_terms(texts: Sequence[str], k: int = 6) -> list[str]:
    """Words that at least half the members of a group share, commonest first."""
    sample = list(texts)[:200]
    # every distinct word of each member counted at once (in C), then each distinct word judged once
    df = Counter(chain.from_iterable(set(t.split()) for t in sample))
    good = [(w, c) for w, c in df.items() if len(w) > 2 and w not in ENGLISH_STOP_WORDS
            and w not in _PLACEHOLDERS and not w.isdigit()]
    # ties broken by the word itself: set order changes with the process's hash seed
    ranked = sorted(good, key=lambda wc: (-wc[1], wc[0]))[:k]
    return [w for w, c in ranked if c * 2 >= len(sample)]


# -- backscatter by the client it quotes ------------------------------------------------------------------
# A bounce quoting a copy cut inside its headers (or its headers alone) has no text to compare and, its
# header list cut short, not the run's template either: nothing above links it. Our own Received hop in
# the quoted copy still names the client that handed that copy to us, and a spamware client sends one
# run: where every message in the queue from that client is in one group, the bounce joins it. (Where the
# quoted copy is still queued, it is one of those messages; one message from the client is enough.)

ATTACH_LEAST = 1  # messages of that client in the queue, all in one group


FULL_HOPS = "\x00hops"  # client_evidence's hops of a message without a stored client, read as pipeline.origin's


def client_evidence(r: ParsedRecord) -> tuple[str | None, list[str] | None, list[str] | None]:
    """What `client_codes` reads of one message, as strings (columns of a parsed shard, so the plan step
    resolves them under the effective policy): the client the queue stored for a message, else its
    Received hops ("by<TAB>ip") to find ours in; for a bounce whose quoted copy has too few words for a
    sketch, the quoted copy's hops (pipeline.origin.hop_text); for a client on loopback, what tells whether a
    filter on the host stands between (pipeline.origin.filter_evidence). A bounce has no client here:
    the tally is of the messages a client sent, not of bounces sent back."""
    if r.bounce:
        if not r.bounced_original_received or len(tokens(r.bounced_original_text)) >= MIN_TOKENS:
            return None, None, None
        return None, None, [hop_text(h) for h in r.bounced_original_received]
    ip = r.envelope.client_address
    if ip and ip != "unknown":
        if r.envelope.sasl_username:
            return ip, None, None
        return ip, filter_evidence(ip, r.received, list_server_sender(r.list_id, r.envelope.mail_from)), None
    full = None if r.envelope.sasl_username else filter_evidence(None, r.received,
                                                                  list_server_sender(r.list_id, r.envelope.mail_from))
    if full is not None:
        return None, [FULL_HOPS, *full], None
    return None, ([f"{h.by or ''}\t{h.from_ip or ''}" for h in r.received] or None), None


def client_codes(clients: Sequence[str | None], hops: Sequence[Sequence[str] | None],
                 quoted: Sequence[Sequence[str] | None], policy: SitePolicy,
                 codes: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(client, quoted) of each message as numbers (-1: none; equal addresses, equal numbers): its client,
    the queue's (or, behind a filter on the host, the one our hop below names) or the one our topmost Received
    hop names (pipeline.verdicts.resolve_origin's), and for a bounce of `client_evidence` the client in our
    hop of the copy it quotes (pipeline.origin.our_quoted_hop), when that copy came from
    outside, unauthenticated (what relaying spam looks like; a copy from our own side is our users' mail).
    `codes`: the numbers given so far, for messages given a shard at a time (added to)."""
    n = len(clients)
    codes = {} if codes is None else codes
    ours: dict[str, bool] = {}

    def our(by: str) -> bool:
        if (v := ours.get(by)) is None:
            v = ours[by] = policy.is_our_host(by)
        return v

    client = np.full(n, -1, dtype=np.int64)
    quote = np.full(n, -1, dtype=np.int64)
    for i, (c, hs, qs) in enumerate(zip(clients, hops, quoted, strict=True)):
        if c is None and hs and hs[0] == FULL_HOPS:  # our hop takes it on loopback: a filter may stand between
            c = client_of_evidence(None, hs[1:], policy)
        elif c is None and hs:
            for h in hs:
                by, _, ip = h.rpartition("\t")  # (an address holds no tab)
                if our(by):
                    c = ip or None
                    break
        elif c and hs:  # a loopback client: a filter on the host may stand between (pipeline.origin)
            c = client_of_evidence(c, hs, policy)
        if c:
            client[i] = codes.setdefault(c, len(codes))
        if qs:
            hop = our_quoted_hop([hop_of(h) for h in qs], policy)
            if hop is not None and hop.from_ip and not hop.authenticated and not policy.is_trusted(hop.from_ip):
                quote[i] = codes.setdefault(hop.from_ip, len(codes))
    return client, quote


def attach_quoted(labels: np.ndarray, client: np.ndarray, quoted: np.ndarray,
                  least: int = ATTACH_LEAST) -> np.ndarray:
    """Labels with each bounce of `quoted` (a client number, else -1) moved to the group holding every
    message of that client, when it has at least `least` in the queue and all in one group; unchanged
    otherwise (a client whose messages are in two groups, or fewer than `least`, says nothing). The
    labels still depend on the messages only: no order is read."""
    q = np.flatnonzero(quoted >= 0)
    has = np.flatnonzero(client >= 0)
    if not q.size or not has.size:
        return labels
    width = int(max(client.max(), quoted.max())) + 1
    count = np.bincount(client[has], minlength=width)
    pairs = _unique_rows(np.stack([client[has], labels[has]], axis=1))
    groups = np.bincount(pairs[:, 0], minlength=width)
    label_of = np.full(width, -1, dtype=np.int64)
    label_of[pairs[:, 0]] = pairs[:, 1]
    c = quoted[q]
    ok = (count[c] >= least) & (groups[c] == 1)
    if not ok.any():
        return labels
    out = labels.copy()
    out[q[ok]] = label_of[c[ok]]
    return out
