"""Group the copies of a spam run into campaigns: MinHash/LSH near-duplicates and invariant keys, linked
by connected components with a guard against one message bridging two runs.

Per-message features (pipeline.features) are computed at parse time; this module only links them:
the reduce half. The result depends on the messages, not on the order they come in.
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
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from pipeline.features import MIN_TOKENS, SKETCH_PERM, sketch, tokens
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


def _bounces_apart(bounce: np.ndarray | None, shape: np.ndarray, strong: np.ndarray,
                   weak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tier 1 between bounces: two bounces whose quoted copies have two template shapes and texts alike are
    weak evidence, not a link. Runs built from one spam text (a kit's templates, links and subjects apart)
    bounce with quotes of a subject line and a few words that are alike across the runs; linked, such bounces
    went to one run together (at 100k, 4 to 26 an incident sat with another run of their text). As weak
    evidence each joins one group through `_merge`, where the keys it shares within its own shape choose.
    `bounce`: the distinct messages all of whose copies are bounces (a copy and the bounces quoting it whole
    fold into one message, which is a copy whichever of them comes first); `shape`: each one's template."""
    if bounce is None or not len(strong):
        return strong, weak
    apart = bounce[strong].all(axis=1) & (shape[strong[:, 0]] != shape[strong[:, 1]])
    if not apart.any():
        return strong, weak
    return strong[~apart], np.concatenate([weak, strong[apart]])


def _bounces_home(lab: np.ndarray, bounce: np.ndarray, scopes: _Scopes | None) -> np.ndarray:
    """Each bounce whose group has no copy carrying a key it carries, moved to the run its subject or Reply-To
    names.

    A bounce's text is a quote of a subject line and a few words, and runs built from one spam text are
    alike there: by its text a bounce went with another run (at 100k, 2 to 20 an incident), or stayed alone
    beside its own. The subject and the Reply-To address of the copy it quotes name its own run; a link path
    or an image may be a whole kit's. So a bounce none of whose keys any copy in its group carries (`lab`:
    each distinct message's group) goes to the one group holding every copy that carries its subject key
    within its template shape, or its Reply-To in any shape (`scopes`; a bounce cut inside its quoted headers has
    another shape than its run). One copy is enough: a run that varies its subjects may have left
    only the copy the bounce quotes carrying its subject (at 100k seed 3, a bounce with another run of its text
    beside one such copy of its own run). A key that copies of two groups carry (runs of one text through one
    kit, a run split in two) says nothing. Ties: the most such keys, then the lowest
    group. `bounce`: distinct messages that are all bounces. Copies decide and only bounces move, so no
    move depends on another."""
    if scopes is None or not bounce.any():
        return lab
    ng = int(lab.max()) + 1
    scope, msg, named = scopes
    copy = ~bounce[msg]
    if not copy.any():
        return lab
    ns = int(scope.max()) + 1
    # the copies carrying each scope, per group; a scope's owner: the one group whose copies carry it
    sg, held = _unique_rows(np.stack([scope[copy], lab[msg[copy]]], axis=1), counts=True)
    mine = np.bincount(sg[:, 0], minlength=ns)[sg[:, 0]] == 1
    owner = np.full(ns, -1, dtype=np.int64)
    owner[sg[mine, 0]] = sg[mine, 1]
    b = bounce[msg]
    m, sc, named = msg[b], scope[b], named[b]
    # a bounce whose own group has a copy carrying any of its keys stays
    stays = np.zeros(len(lab), dtype=bool)
    stays[m[_lookup(sg[:, 0] * ng + sg[:, 1], held, sc * ng + lab[m]) > 0]] = True
    ok = named & ~stays[m] & (owner[sc] >= 0)
    if not ok.any():
        return lab
    rows, n = _unique_rows(np.stack([m[ok], owner[sc[ok]]], axis=1), counts=True)
    o = np.lexsort((rows[:, 1], -n, rows[:, 0]))
    first = o[np.r_[True, rows[o[1:], 0] != rows[o[:-1], 0]]]
    out = lab.copy()
    out[rows[first, 0]] = rows[first, 1]
    return out


class _Scopes(NamedTuple):
    """The scopes keys are followed in (`_copies_home`, `_bounces_home`): one per (template shape, key), and one
    per Reply-To in any shape; per entry, its message and whether it is followed (a subject key or a Reply-To:
    `followed_keys`). They do not depend on the groups: worked out once for both moves."""

    scope: np.ndarray
    msg: np.ndarray
    named: np.ndarray


def _follow_scopes(bucket: np.ndarray, kmsg: np.ndarray, kid: np.ndarray, follow: np.ndarray | None) -> _Scopes | None:
    """`_Scopes` of the key entries (None: no key, or no `followed_keys`)."""
    if not len(kmsg) or follow is None:
        return None
    anywhere = follow == 2
    scope = np.r_[bucket, int(bucket.max()) + 1 + kid[anywhere]]
    msg = np.r_[kmsg, kmsg[anywhere]]
    named = np.r_[follow >= 1, np.ones(int(anywhere.sum()), dtype=bool)]
    return _Scopes(scope, msg, named)


def _copies_home(lab: np.ndarray, sent: np.ndarray, small: int, scopes: _Scopes | None) -> np.ndarray:
    """Each copy its group does not back (no other copy there carries a key it carries, within its template
    shape), moved to the run its subject or Reply-To names.

    Runs built from one spam text are alike in text: a copy sent with little salad is alike to another run of
    its text (a tier-1 link), or one weak link takes it, a small group, to that run (a big partner first,
    `_merge`), while no copy there carries a key of its template; the bounces quoting it stay with it
    (`_bounces_home`). Such a copy goes to the one other group whose copies, two at least, carry its subject key
    within its template shape or its Reply-To in any shape (the keys a bounce follows: a link path or an image
    may be a whole kit's), where no third group's copies carry it. `sent`: each distinct message's copies that
    are not bounces; one of more than `small` identical copies is a mailing, judged as a group in the merges,
    and stays. Ties: the most such keys, then the lowest group. Copies decide from the groups as the merges left
    them, so no move depends on another."""
    copy = sent > 0
    movable = copy & (sent <= small)
    if scopes is None or not movable.any():
        return lab
    scope, msg, named = scopes
    on = copy[msg]
    if not on.any():
        return lab
    ng, ns = int(lab.max()) + 1, int(scope.max()) + 1
    followed = np.zeros(ns, dtype=bool)
    followed[scope[named]] = True
    # each scope's copies, one entry per distinct message; per scope and group, how many
    sm = _unique_rows(np.stack([scope[on], msg[on]], axis=1))
    sc, m = sm[:, 0], sm[:, 1]
    sg, held = _unique_rows(np.stack([sc, lab[m]], axis=1), counts=True)
    groups = np.bincount(sg[:, 0], minlength=ns)
    total = np.bincount(sg[:, 0], weights=held, minlength=ns).astype(np.int64)
    gsum = np.bincount(sg[:, 0], weights=sg[:, 1], minlength=ns).astype(np.int64)
    own = _lookup(sg[:, 0] * ng + sg[:, 1], held, sc * ng + lab[m])
    backed = np.zeros(len(lab), dtype=bool)
    backed[m[own >= 2]] = True
    # not backed, the copy is its group's one carrier of each of its scopes: the other group holds the rest
    ok = movable[m] & ~backed[m] & followed[sc] & (groups[sc] == 2) & (total[sc] - 1 >= 2)
    if not ok.any():
        return lab
    rows, n = _unique_rows(np.stack([m[ok], gsum[sc[ok]] - lab[m[ok]]], axis=1), counts=True)
    o = np.lexsort((rows[:, 1], -n, rows[:, 0]))
    first = o[np.r_[True, rows[o[1:], 0] != rows[o[:-1], 0]]]
    out = lab.copy()
    out[rows[first, 0]] = rows[first, 1]
    return out


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


class CampaignClusterer(ClusterMixin, BaseEstimator):  # type: ignore[misc]  # scikit-learn has no stubs
    """Connected components of near-duplicate texts and shared invariants, in two tiers.

    Tier 1 links texts whose estimated Jaccard similarity (MinHash, candidates from LSH bands) is at
    least `threshold`. Tier 2 merges tier-1 groups through weaker evidence: texts at least
    `weak_threshold` alike, or invariant keys (a URL's registered domain and path, Reply-To, an
    attachment or image digest) shared within one template shape, under the guard of `_merge`; a
    weak link never joins two groups that are `large` already (`_guarded`). Last, a copy its group does
    not back (`_copies_home`), then a bounce its group has no copy to show for (`_bounces_home`), follows
    its run's subject or Reply-To.

    Exact duplicates are folded first and the rest is put in a canonical order (by the digest of its
    features, `feature_digest`), so the labels do not depend on the input order or on how the
    input was cut into shards. Cost: one sort, `bands` hash groupings and a
    fixed-size comparison per message and band: linear in the number of distinct messages.
    """

    def __init__(self, threshold: float = 0.5, weak_threshold: float = 0.3, bands: int = 21,
                 small: int = 2, large: int = 20, strong: int = 4, text_share: float = 0.25) -> None:
        self.threshold = threshold
        self.weak_threshold = weak_threshold
        self.bands = bands
        self.small = small
        self.large = large
        self.strong = strong
        self.text_share = text_share

    def fit(self, X: Sequence[Features | str], y: object = None) -> CampaignClusterer:
        return self.fit_grouping(Grouping.of([as_features(x) for x in X]))

    def fit_grouping(self, g: Grouping) -> CampaignClusterer:
        """Labels for n messages given as arrays (what the plan step reads from the parsed shards' columns)."""
        if not len(g.digest):
            self.labels_ = np.empty(0, dtype=np.int64)
            return self
        # exact duplicates folded, the rest in a canonical order: by the digest of the features, so
        # every later tie-break is independent of the input order and of how the input was cut
        first, inverse = _fold(g.digest)
        n = len(first)
        copies = np.bincount(inverse, minlength=n)
        has = g.has_sketch[first]
        # the keys of each distinct message, as (template-and-key bucket, message) pairs
        canon = np.full(len(g.digest), -1, dtype=np.int64)
        canon[first] = np.arange(n)
        kmsg = canon[g.key_msg] if len(g.key_msg) else np.empty(0, dtype=np.int64)
        keep = kmsg >= 0
        kmsg, kid = kmsg[keep], g.key_id[keep]
        if len(kmsg):
            _, bucket = _unique_rows(np.stack([g.shape[first][kmsg], kid], axis=1), inverse=True)
        else:
            bucket = np.empty(0, dtype=np.int64)

        # sketches are read where they are (g.sketch[first[i]] is distinct message i's): no copy of them
        strong, weak = self._text_edges(g.sketch, first, has)
        strong, weak = self._unbridge(g.sketch, first, strong, weak)
        # how many of each distinct message's copies are not bounces (None: no message is a bounce)
        unbounced = None if g.bounce is None else np.bincount(inverse, weights=~g.bounce, minlength=n)
        strong, weak = _bounces_apart(None if unbounced is None else unbounced == 0, g.shape[first], strong, weak)
        comp = _components(n, strong)
        ncomp = int(comp.max()) + 1
        size = np.bincount(comp, weights=copies, minlength=ncomp)
        # a group of one distinct message (its copies folded) and the keys it carries: one message, however
        # many copies, is one piece of evidence (`_merge`); whether it has a text to compare (a sketch: a
        # bounce quoting only headers has too few words for one)
        distinct = np.bincount(comp, minlength=ncomp)
        one = distinct == 1
        # how big such a group is, to the merges: its copies that are not bounces, where it has any (a copy
        # that two bounces quote whole folds with them into three copies of one message, and is one copy of
        # its run still); any other group, all its copies (counting every group so moved other merges too:
        # at 20k, four copies of a run left their campaign for review, and valid mail joined valid groups)
        sent = size if unbounced is None else np.bincount(comp, weights=unbounced, minlength=ncomp)
        weight = np.where(one & (sent > 0), sent, size)
        mute = np.bincount(comp, weights=has, minlength=ncomp) == 0
        carried = np.bincount(_unique_rows(np.stack([comp[kmsg], bucket], axis=1))[:, 0], minlength=ncomp) \
            if len(kmsg) else np.zeros(ncomp, dtype=np.int64)
        # tier 2 evidence: texts alike across two groups, keys shared by two groups
        text = _text_support(comp, weak, ncomp)
        key, keys = _key_support(self._key_links(bucket, kmsg, comp), comp, ncomp)
        merged, support = self._merge(text, key, keys, weight, np.where(one, carried, 0), mute, distinct)
        final = self._islands(self._guarded(ncomp, merged, support, size), weight, text, keys)[comp]
        scopes = _follow_scopes(bucket, kmsg, kid, None if g.follow is None else g.follow[keep])
        # copies their group does not back, then bounces (which may follow a copy moved), to their runs
        final = _copies_home(final, copies if unbounced is None else unbounced, self.small, scopes)
        if unbounced is not None:  # distinct messages that are bounces only
            final = _bounces_home(final, unbounced == 0, scopes)
        # number the campaigns by their first member in canonical order
        _, labels = np.unique(final, return_inverse=True)
        self.labels_ = labels.ravel()[inverse].astype(np.int64)
        return self

    def _text_edges(self, sketches: np.ndarray, at: np.ndarray, has: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(strong, weak) edges (i, j) between distinct messages, from LSH candidates verified on the
        sketches (message i's is sketches[at[i]], if has[i])."""
        rows = np.flatnonzero(has)
        empty = np.empty((0, 2), dtype=np.int64)
        if rows.size < 2:
            return empty, empty
        src = at[rows]
        n = len(rows)
        r = SKETCH_PERM // self.bands
        # candidate pairs as one number each (message * n + its bucket's head), deduplicated band by
        # band: memory follows the distinct pairs, not bands x messages
        found = np.empty(0, dtype=np.int64)
        for b in range(self.bands):
            # each message is compared with its bucket's first member (rows are in canonical order)
            rep = _bucket_heads(sketches[src, b * r:(b + 1) * r])
            cand = np.flatnonzero(rep != np.arange(n))
            if cand.size:
                found = _unique(np.concatenate([found, cand * n + rep[cand]]))
        if not found.size:
            return empty, empty
        P = np.stack([found // n, found % n], axis=1)
        del found
        # the sketches compared a slice of pairs at a time: two rows of 64 values a pair would be
        # hundreds of megabytes at a million messages
        sim = np.concatenate([(sketches[src[P[i:i + 65536, 0]]] == sketches[src[P[i:i + 65536, 1]]]).mean(axis=1)
                              for i in range(0, len(P), 65536)])
        P = rows[P]
        return P[sim >= self.threshold], P[(sim >= self.weak_threshold) & (sim < self.threshold)]

    def _unbridge(self, sketches: np.ndarray, at: np.ndarray, strong: np.ndarray,
                  weak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tier 1 under the bridge guard: a message alike to texts that are not alike to one another
        (one carrying two runs' texts) links nothing by itself; its strong edges become weak evidence,
        so it joins one group through `_merge` and cannot chain two."""
        if not len(strong):
            return strong, weak
        both = np.concatenate([strong, strong[:, ::-1]])
        both = both[np.lexsort((both[:, 1], both[:, 0]))]
        # each message's neighbours against its first neighbour (the lowest in canonical order)
        starts = np.flatnonzero(np.r_[True, both[1:, 0] != both[:-1, 0]])
        anchor = np.repeat(both[starts, 1], np.diff(np.r_[starts, len(both)]))
        x, y = at[both[:, 1]], at[anchor]
        alike = np.concatenate([(sketches[x[i:i + 65536]] == sketches[y[i:i + 65536]]).mean(axis=1)
                                for i in range(0, len(x), 65536)])
        bridges = _unique(both[alike < self.weak_threshold, 0])
        if not bridges.size:
            return strong, weak
        cut = np.isin(strong, bridges).any(axis=1)
        return strong[~cut], np.concatenate([weak, strong[cut]])

    def _key_links(self, bucket: np.ndarray, msg: np.ndarray, comp: np.ndarray) -> np.ndarray:
        """Tier-2 links from invariant keys: within one template shape (a bucket is one template's
        key; `msg` the message carrying it, as often as it carries it), every group sharing a key
        links to the group holding most of that key's copies (ties: the lowest group), as
        (group, owner, key number, message) rows, one per carrier on the group's side and up to two
        carriers on the owner's side (two are all the guard needs to know)."""
        if not len(bucket):
            return np.empty((0, 4), dtype=np.int64)
        o = np.lexsort((msg, bucket))
        b, m = bucket[o], msg[o]
        g = comp[m]
        nb = int(b.max()) + 1
        # per bucket and group: how many of the bucket's entries the group holds
        bg, held = _unique_rows(np.stack([b, g], axis=1), counts=True)
        ngroups = np.bincount(bg[:, 0], minlength=nb)
        # the owner: most entries, then the lowest group
        best = np.lexsort((bg[:, 1], -held, bg[:, 0]))
        firsts = best[np.r_[True, bg[best[1:], 0] != bg[best[:-1], 0]]]
        owner = np.full(nb, -1, dtype=np.int64)
        owner[bg[firsts, 0]] = bg[firsts, 1]
        shared = ngroups >= 2  # a key in one group links nothing (nor one carried by one message only)
        ob = owner[b]
        # the owner's first two carriers, in canonical order
        mine = (g == ob) & shared[b]
        mb, mm = b[mine], m[mine]
        rank = np.arange(len(mb)) - np.searchsorted(mb, mb)
        mb, mm = mb[rank < 2], mm[rank < 2]
        # every other group's side: one row per carrier
        other = (g != ob) & shared[b]
        rows = [np.stack([g[other], ob[other], b[other], m[other]], axis=1)]
        # the owner's side: each other group of a bucket with each of the owner's (up to two) carriers
        og = bg[(bg[:, 1] != owner[bg[:, 0]]) & shared[bg[:, 0]]]
        starts = np.searchsorted(mb, og[:, 0])
        for k in (0, 1):
            at = starts + k
            ok = at < len(mb)
            ok[ok] = mb[at[ok]] == og[ok, 0]
            rows.append(np.stack([og[ok, 1], owner[og[ok, 0]], og[ok, 0], mm[at[ok]]], axis=1))
        return np.concatenate(rows).astype(np.int64)

    def _merge(self, text: tuple[np.ndarray, np.ndarray], key: tuple[np.ndarray, np.ndarray],
               keys: tuple[np.ndarray, np.ndarray], size: np.ndarray, alone: np.ndarray, mute: np.ndarray,
               distinct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tier-2 merges the bridge guard allows, as (group, group) edges.

        `size`: each group's copies; for a group of one distinct message, not counting bounces where it
        has any other copy (a copy and the bounces quoting it whole are one copy of its run). Two groups
        of more than `small` copies merge when at least two distinct messages are alike across them, and
        at least `text_share` of the smaller group's distinct messages, or when they share at least two
        distinct keys carried by at least two messages on each side: one bridging message, a few texts
        alike by chance between two big runs, or one URL that every run of a spamware kit carries, does
        not chain two runs. A smaller group joins only one partner: a big one if it has any, the best
        supported, counting every distinct key it shares (`keys`): one group cannot chain two, so a key
        many runs of one kit carry (a common link path) is outweighed by the keys only its own run shares.

        A group of one distinct message (`alone`: how many keys its message carries, for such a group
        of more than `small` copies, else 0) is one message however many copies were folded into it
        (a big run's bounces quoting only its headers are often alike to the byte): toward a group
        that shares every key it carries it is a small group too, and joins that one partner even
        when both are `large` (`_guarded`), since it links nothing else. If it has a text (not
        `mute`: words enough for a sketch), that text decides instead: alike to the other group's
        (a weak link) and one key shared are what a small group shows (a copy quoted whole by its
        bounces, with a link host the run rotated to for it alone, carries keys no other copy has).
        Identical copies whose text is not the run's (a valid mailing in a run's template, sharing
        its link) are judged as any large group.

        Each evidence is (pair codes, value): pairs of groups x < y as x * len(size) + y, sorted."""
        ng = len(size)
        codes = _unique(np.concatenate([text[0], key[0], keys[0]]))
        s_text, s_key, n_keys = (_lookup(c, v, codes) for c, v in (text, key, keys))
        x, y = codes // ng, codes % ng
        # one message: without a text, every key it carries shared by the other group (what any copy of
        # that group would show); with one, that text alike to the group's and a key shared
        held_x = (alone[x] > 0) & np.where(mute[x], n_keys >= alone[x], (s_text >= 1) & (n_keys >= 1))
        held_y = (alone[y] > 0) & np.where(mute[y], n_keys >= alone[y], (s_text >= 1) & (n_keys >= 1))
        small_x, small_y = (size[x] <= self.small) | held_x, (size[y] <= self.small) | held_y
        # texts alike across two bigger groups: two distinct messages a side, and a share of the smaller
        # group's distinct messages (weak links between two runs' texts come by chance, more of them the
        # bigger the runs: at 100k, 20 of 92 between two unrelated runs of 177 and 96 copies)
        text_ok = (s_text >= 2) & (s_text >= self.text_share * np.minimum(distinct[x], distinct[y]))
        big = ~small_x & ~small_y & (text_ok | (s_key >= 2))
        # shared invariants already passed their own guard (two keys, two carriers a side)
        big_strength = np.maximum(np.where(text_ok, s_text, 0), np.where(s_key >= 2, s_key + self.strong, 0))[big]
        # a small group's one partner: a big one first (through a small one, a bridge, it could reach
        # anywhere), then the most distinct texts and keys, the biggest, the lowest number
        me = np.r_[x[small_x], y[small_y]]
        other = np.r_[y[small_x], x[small_y]]
        evidence = np.r_[(s_text + n_keys)[small_x], (s_text + n_keys)[small_y]]
        strength = np.r_[(s_text + s_key)[small_x], (s_text + s_key)[small_y]]
        strength = np.where(np.r_[held_x[small_x], held_y[small_y]], np.maximum(strength, self.strong), strength)
        o = np.lexsort((other, -size[other], -evidence, size[other] <= self.small, me))
        first = o[np.r_[True, me[o][1:] != me[o][:-1]]] if len(o) else o
        edges = np.concatenate([np.stack([x[big], y[big]], axis=1), np.stack([me[first], other[first]], axis=1)])
        return edges.astype(np.int64), np.r_[big_strength, strength[first]].astype(np.int64)

    def _islands(self, final: np.ndarray, size: np.ndarray, text: tuple[np.ndarray, np.ndarray],
                 keys: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """The merged groups, each island joined to one partner. A small group joins one partner only, the
        one it shares most with (`_merge`): a few copies of a run sharing a link host it rotated to for them
        alone pick one another, and being all small they are left an island apart from their run, whose
        link paths they carry too (below a campaign's least size, held for review; with their bounces, a
        campaign apart from their run's). An island (a merged group of two small groups or more and no
        other, of fewer than `large` copies in all) joins, as one group, the one partner it shares most
        with through one of its members: two distinct keys, or a text alike and a key, what a small group
        shows. A partner that is not an island comes first (islands picking one another would stay apart
        from their run again), then the most evidence, the biggest, the lowest number. A group of one
        message with more than `small` copies (identical copies of a mailing) is no part of an island.
        Deterministic: the groups are numbered in canonical order."""
        ng = len(size)
        codes = _unique(np.concatenate([text[0], keys[0]]))
        if not codes.size:
            return final
        s_text, n_keys = _lookup(*text, codes), _lookup(*keys, codes)
        x, y = codes // ng, codes % ng
        fx, fy = final[x], final[y]
        ok = (fx != fy) & ((n_keys >= 2) | ((s_text >= 1) & (n_keys >= 1)))
        if not ok.any():
            return final
        nf = int(final.max()) + 1
        mass = np.bincount(final, weights=size, minlength=nf)
        parts = np.bincount(final, minlength=nf)
        big_part = np.bincount(final, weights=size > self.small, minlength=nf) > 0
        island = (mass < self.large) & (parts >= 2) & ~big_part
        fx, fy, ev = fx[ok], fy[ok], (s_text + n_keys)[ok]
        me = np.r_[fx, fy]
        other = np.r_[fy, fx]
        ev = np.r_[ev, ev]
        keep = island[me]
        me, other, ev = me[keep], other[keep], ev[keep]
        if not me.size:
            return final
        # one partner per island: the most evidence from one pair of members, then the biggest, the lowest
        o = np.lexsort((other, -mass[other], -ev, island[other], me))
        first = o[np.r_[True, me[o][1:] != me[o][:-1]]]
        out: np.ndarray = _components(nf, np.stack([me[first], other[first]], axis=1))[final]
        return out

    def _guarded(self, n: int, edges: np.ndarray, support: np.ndarray, size: np.ndarray) -> np.ndarray:
        """Components of the tier-2 merges, strongest first, where a weak link (less than `strong`)
        never joins two groups that are each `large` already: a few bounces or copies alike across
        two big runs (one kit's markup, one bridging message) leave them two. Deterministic: the
        order is by support, then by the groups' canonical numbers."""
        if not len(edges):
            return np.arange(n, dtype=np.int64)
        # Python lists: the walk reads one element at a time, which numpy makes a hundred times dearer
        parent = list(range(n))
        mass = size.astype(np.float64).tolist()
        lo_end, hi_end, sup = edges[:, 0].tolist(), edges[:, 1].tolist(), support.tolist()

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        kept: list[int] = []
        for e in np.lexsort((edges[:, 1], edges[:, 0], -support)).tolist():
            a, b = find(lo_end[e]), find(hi_end[e])
            if a == b:
                continue
            if sup[e] < self.strong and mass[a] >= self.large and mass[b] >= self.large:
                continue
            lo, hi = min(a, b), max(a, b)
            parent[hi] = lo
            mass[lo] += mass[hi]
            kept.append(e)
        return _components(n, edges[kept])


def _fold(digest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, inverse): the first message of each distinct digest, in digest order, and each
    message's distinct number. Digests are compared as two big-endian integers (byte order)."""
    d = np.frombuffer(np.ascontiguousarray(digest, dtype="S16").tobytes(), dtype=">u8").reshape(-1, 2)
    order = np.lexsort((d[:, 1], d[:, 0]))  # stable: the first of equal digests is the first given
    ds = d[order]
    new = np.r_[True, (ds[1:] != ds[:-1]).any(axis=1)]
    inverse = np.empty(len(d), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return order[new], inverse


def _bucket_heads(cols: np.ndarray) -> np.ndarray:
    """For each row of an (n, r) uint32 array, the first row equal to it (itself if none comes before):
    a stable sort on the columns packed two to a uint64, then each run's first row (numpy's unique
    of the rows as one opaque value each compares them byte by byte, several times slower)."""
    n, r = cols.shape
    c = cols.astype(np.uint64)
    keys = [(c[:, j] << np.uint64(32)) | c[:, j + 1] if j + 1 < r else c[:, j] for j in range(0, r, 2)]
    order = np.lexsort(keys[::-1])  # the last key given is the primary one
    new = np.ones(n, dtype=bool)
    for k in keys:
        ks = k[order]
        new[1:] &= ks[1:] == ks[:-1]
    new = ~new
    new[0] = True
    starts = np.flatnonzero(new)
    rep = np.empty(n, dtype=np.int64)
    rep[order] = np.repeat(order[starts], np.diff(np.r_[starts, n]))
    return rep


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


def _lookup(codes: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """values[k] where codes[k] (sorted) is each of `at`, else 0."""
    i = np.searchsorted(codes, at)
    found = i < len(codes)
    found[found] = codes[i[found]] == at[found]
    out = np.zeros(len(at), dtype=np.int64)
    out[found] = values[i[found]]
    return out


def _distinct_per_pair(pair: np.ndarray, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pair codes, how many distinct items each pair has), the codes sorted."""
    trip = _unique_rows(np.stack([pair, item], axis=1))
    codes, n = np.unique(trip[:, 0], return_counts=True)
    return codes, n


def _text_support(comp: np.ndarray, edges: np.ndarray, ng: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pair of groups (x * ng + y, x < y), how many distinct messages on its poorer side are alike
    to the other: a single message alike to many of another group is still one."""
    ga, gb = comp[edges[:, 0]], comp[edges[:, 1]]
    cross = ga != gb
    ga, gb, ia, ib = ga[cross], gb[cross], edges[cross, 0], edges[cross, 1]
    swap = ga > gb
    ga, gb = np.where(swap, gb, ga), np.where(swap, ga, gb)
    ia, ib = np.where(swap, ib, ia), np.where(swap, ia, ib)
    if not ga.size:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    pair = ga * ng + gb
    codes, na = _distinct_per_pair(pair, ia)
    _, nb = _distinct_per_pair(pair, ib)  # the same pairs, in the same order
    return codes, np.minimum(na, nb)


def _key_support(links: np.ndarray, comp: np.ndarray, ng: int
                 ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Per pair of groups (x * ng + y, x < y), the fewest of: distinct keys they share, distinct
    messages carrying them on either side, and keys carried by two messages or more on each side. One
    message carrying another run's keys is one, whichever side owns a key (a key only the bridge and
    one copy of the other run carry belongs to neither), and adds no key to one both runs of a kit
    carry. Also, per pair, the distinct keys alone (what a small group, which joins one partner only,
    is ranked by)."""
    if not links.size:
        none = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
        return none, none
    a = np.minimum(links[:, 0], links[:, 1])
    b = np.maximum(links[:, 0], links[:, 1])
    pair = a * ng + b
    key = links[:, 2]
    msg = links[:, 3]
    on_a = comp[msg] == a
    codes, n_keys = _distinct_per_pair(pair, key)
    side_a = _distinct_per_pair(pair[on_a], msg[on_a])
    side_b = _distinct_per_pair(pair[~on_a], msg[~on_a])
    # keys carried by two messages or more on each side: one message cannot make a key count
    per_key = _unique_rows(np.stack([pair, key, on_a, msg], axis=1))
    sided, carriers = _unique_rows(per_key[:, :3], counts=True)
    sided = sided[carriers >= 2]
    pair_key, twice = _unique_rows(sided[:, :2], counts=True)
    held = np.unique(pair_key[twice == 2, 0], return_counts=True)
    support = np.minimum.reduce([n_keys, _lookup(*side_a, codes), _lookup(*side_b, codes), _lookup(*held, codes)])
    return (codes, support), (codes, n_keys)


def _components(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected-component label of each of n nodes, numbered by their lowest node."""
    if not len(edges):
        return np.arange(n, dtype=np.int64)
    g = sp.coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, lab = connected_components(g, directed=False)
    # relabel by lowest member so the numbering follows the canonical order
    low = np.full(int(lab.max()) + 1, n, dtype=np.int64)
    np.minimum.at(low, lab, np.arange(n))
    _, ranked = np.unique(low, return_inverse=True)
    out: np.ndarray = ranked[lab].astype(np.int64)
    return out


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
