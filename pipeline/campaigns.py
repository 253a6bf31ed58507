"""Group near-identical messages into campaigns: TF-IDF vectors and a deterministic leader clustering."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, HashingVectorizer, TfidfTransformer
from sklearn.pipeline import Pipeline

_PLACEHOLDERS = {"zurlz", "ztokz"}


class SharedTerms(TransformerMixin, BaseEstimator):
    """Drop terms seen in fewer than `min_df` texts: a per-copy hash-buster is rare by design, and
    left in, TF-IDF would weigh it most of all and pull copies of one run apart."""

    def __init__(self, min_df: int = 2) -> None:
        self.min_df = min_df

    def fit(self, X: sp.spmatrix, y: object = None, weights: np.ndarray | None = None) -> SharedTerms:
        present = sp.csr_matrix(X) > 0
        if weights is not None:  # rows stand for `weights` identical copies each
            present = sp.diags(np.asarray(weights, dtype=np.float64)) @ present
        df = np.asarray(present.sum(axis=0)).ravel()
        self.keep_ = np.flatnonzero(df >= self.min_df)
        return self

    def transform(self, X: sp.spmatrix) -> sp.csr_matrix:
        X = sp.csr_matrix(X)
        mask = np.zeros(X.shape[1], dtype=bool)
        mask[self.keep_] = True
        out = sp.csr_matrix(X.multiply(mask[np.newaxis, :]))
        out.eliminate_zeros()  # TF-IDF's sublinear log must not see explicit zeros
        return out


class CampaignClusterer(ClusterMixin, BaseEstimator):
    """Leader clustering over TF-IDF: a text joins the first earlier leader it is `threshold`-similar to.

    Exact duplicates are folded before vectorising, so a run of 10,000 identical copies costs one
    row. Hashed features keep memory flat however large the vocabulary of a queue grows; leaders
    are never moved, so the result depends only on the input order, which makes it reproducible.
    """

    def __init__(self, threshold: float = 0.6, n_features: int = 2**20, batch_size: int = 1024,
                 ngram_range: tuple[int, int] = (1, 2), min_df: int = 2) -> None:
        self.threshold = threshold
        self.min_df = min_df
        self.n_features = n_features
        self.batch_size = batch_size
        self.ngram_range = ngram_range

    def _make_pipeline(self) -> Pipeline:
        return Pipeline([
            ("hash", HashingVectorizer(n_features=self.n_features, alternate_sign=False, norm=None,
                                       ngram_range=self.ngram_range, stop_words="english",
                                       dtype=np.float32)),
            ("shared", SharedTerms(min_df=self.min_df)),
            ("tfidf", TfidfTransformer(sublinear_tf=True)),
        ])

    def _batches(self, n: int) -> range:
        return range(0, n, self.batch_size)

    def fit(self, X: Sequence[str], y: object = None) -> CampaignClusterer:
        texts = list(X)
        unique: dict[str, int] = {}
        inverse = np.empty(len(texts), dtype=np.int64)
        for i, t in enumerate(texts):
            inverse[i] = unique.setdefault(t, len(unique))
        utexts = list(unique)
        del unique
        self.pipeline_ = pipe = self._make_pipeline()
        if not utexts:
            self.labels_ = np.empty(0, dtype=np.int64)
            self.leaders_ = sp.csr_matrix((0, self.n_features), dtype=np.float32)
            return self
        copies = np.bincount(inverse, minlength=len(utexts)).astype(np.float64)
        # Pass 1: document frequencies, batch by batch, weighted by copies (the hashing step is
        # stateless, so the whole matrix never has to exist at once: memory stays flat at 1M).
        hasher = pipe.named_steps["hash"]
        df = np.zeros(self.n_features, dtype=np.float64)
        counts: list[sp.csr_matrix] = []  # hashed once: a batch of counts is far smaller than its texts
        for start in self._batches(len(utexts)):
            counts.append(hasher.transform(utexts[start:start + self.batch_size]).tocsr())
            present = (counts[-1] > 0).astype(np.float64)
            df += present.T @ copies[start:start + self.batch_size]
        shared = pipe.named_steps["shared"]
        shared.keep_ = np.flatnonzero(df >= self.min_df)
        total = copies.sum()
        tfidf = pipe.named_steps["tfidf"]
        tfidf.idf_ = (np.log((1 + total) / (1 + df)) + 1).astype(np.float32)
        # Pass 2: vectorise a batch, join it to an earlier leader or make new ones.
        ulabels = np.full(len(utexts), -1, dtype=np.int64)
        leader_rows: list[int] = []
        blocks: list[sp.csr_matrix] = []
        leaders = sp.csr_matrix((0, self.n_features), dtype=np.float32)
        rest = Pipeline(pipe.steps[1:])
        for b, start in enumerate(self._batches(len(utexts))):
            B = rest.transform(counts[b]).astype(np.float32).tocsr()
            counts[b] = sp.csr_matrix((0, 0))  # let the batch go
            if leaders.shape[0]:
                best, ok = self._nearest(B, leaders)
                ulabels[start:start + B.shape[0]][ok] = best[ok]
            todo = np.flatnonzero(ulabels[start:start + B.shape[0]] < 0)
            if todo.size:
                Bn = B[todo]
                Sb = (Bn @ Bn.T).toarray()
                new_leaders: list[int] = []
                for k, i in enumerate(todo.tolist()):
                    hit = next((j for j in new_leaders if Sb[k, j] >= self.threshold), None)
                    if hit is None:
                        ulabels[start + i] = len(leader_rows)
                        leader_rows.append(start + i)
                        new_leaders.append(k)
                    else:
                        ulabels[start + i] = ulabels[start + int(todo[hit])]
                blocks.append(Bn[new_leaders])
                leaders = sp.vstack(blocks).tocsr() if len(blocks) > 1 else blocks[0]
        self.leaders_ = leaders
        self.labels_ = ulabels[inverse]
        return self

    def _nearest(self, B: sp.csr_matrix, leaders: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """Per row of B: the most similar leader (the earliest on a tie) and whether it is close enough."""
        S = (B @ leaders.T).tocsr()
        return _row_argmax(S, self.threshold)

    def predict(self, X: Sequence[str]) -> np.ndarray:
        """The leader each text is `threshold`-similar to, or -1."""
        texts = list(X)
        out = np.full(len(texts), -1, dtype=np.int64)
        if not texts or self.leaders_.shape[0] == 0:
            return out
        # backscatter quotes the same few spam texts again and again: vectorise each text once
        unique: dict[str, int] = {}
        inverse = np.fromiter((unique.setdefault(t, len(unique)) for t in texts), dtype=np.int64, count=len(texts))
        utexts = list(unique)
        uout = np.full(len(utexts), -1, dtype=np.int64)
        for start in self._batches(len(utexts)):
            V = self.pipeline_.transform(utexts[start:start + self.batch_size]).astype(np.float32).tocsr()
            best, ok = self._nearest(V, self.leaders_)
            uout[start:start + V.shape[0]] = np.where(ok, best, -1)
        out[:] = uout[inverse]
        return out


def _row_argmax(S: sp.csr_matrix, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise argmax and max >= threshold of a sparse matrix, without sorting its indices first
    (scipy's argmax sorts them, which was most of its cost); ties go to the lowest column."""
    n = S.shape[0]
    best = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    counts = np.diff(S.indptr)
    rows = np.flatnonzero(counts)
    if rows.size == 0:
        return best, ok
    starts = S.indptr[rows]
    top = np.maximum.reduceat(S.data, starts)
    at_top = S.data == np.repeat(top, counts[rows])
    cols = np.where(at_top, S.indices, np.iinfo(S.indices.dtype).max)
    best[rows] = np.minimum.reduceat(cols, starts)
    ok[rows] = top >= threshold
    return best, ok


def group_campaigns(texts: Sequence[str], threshold: float = 0.6) -> np.ndarray:
    """Plain-function twin of CampaignClusterer: the cluster label of each text."""
    return CampaignClusterer(threshold=threshold).fit(texts).labels_


def top_terms(texts: Sequence[str], k: int = 6) -> list[str]:
    """Words that at least half the members of a group share, commonest first."""
    df: Counter[str] = Counter()
    sample = list(texts)[:200]
    for t in sample:
        df.update({w for w in set(t.split()) if len(w) > 2 and w not in ENGLISH_STOP_WORDS
                   and w not in _PLACEHOLDERS and not w.isdigit()})
    # ties broken by the word itself: set order changes with the process's hash seed
    ranked = sorted(df.items(), key=lambda wc: (-wc[1], wc[0]))[:k]
    return [w for w, c in ranked if c * 2 >= len(sample)]
