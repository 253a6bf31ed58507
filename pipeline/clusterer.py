"""The campaign clusterer: a scikit-learn estimator (fit, labels_, fit_predict, get_params) over the
grouping features of pipeline.campaigns.

A module of its own because scikit-learn takes a process about a second to import: the parsers and the
per-shard steps, which link nothing, import pipeline.campaigns without it; only what fits the clusterer
(the plan step, the in-memory triage's labels) loads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.base import BaseEstimator, ClusterMixin

from pipeline.campaigns import Features, Grouping, _unique, _unique_rows, as_features
from pipeline.features import SKETCH_PERM


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
