"""The history encoder as it was before the batch encoder (commit 900f092), kept as the oracle of
tests/utpm/features/test_history_encode.py: `reference_encode(henc, users)` is the old
`HistoryEncoder.encode` user by user (with its per-tag-dict fallback for fields in which two values share a
tag id), `reference_transition` the old `TagStats.transition`, `reference_stats_from_sequence` the
`stats_from_sequence` of commit d518b6f (a Python loop per occurrence). Test code only; do not import elsewhere."""

# ruff: noqa
# mypy: ignore-errors

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import repeat

import numpy as np

from utpm.features.history import (
    N_BASE_PHI,
    PHI_NAMES,
    TAG_FIELD,
    UNCLICKED_FIELD,
    FieldStats,
    HistoryBatch,
    recency_weights,
)
from utpm.features.spec import FieldKind
from utpm.features.vocab import Vocabulary


class _Ref:
    """The old methods, bound to a HistoryEncoder's settings."""

    def __init__(self, henc):
        self.encoder = henc.encoder
        self.tags = henc.tags
        self.max_history_tags = henc.max_history_tags
        self.stats = henc.stats
        self.extra_candidates = henc.extra_candidates
        self.width = henc.width

    def encode(self, users: Sequence[Mapping[str, FieldStats]]) -> HistoryBatch:
        b = len(users)
        specs = self.encoder.specs
        ids = [np.zeros((b, s.max_len), np.int64) for s in specs]
        masks = [np.zeros((b, s.max_len), np.float32) for s in specs]
        counts = [np.zeros((b, s.max_len), np.float32) for s in specs]
        hh = self.width
        hist_ids = np.zeros((b, hh), np.int64)
        hist_feats = np.zeros((b, hh, len(PHI_NAMES)), np.float32)
        hist_mask = np.zeros((b, hh), np.float32)
        unknown: list[dict[str, list[str]]] = []
        oov = Vocabulary.OOV
        tag_lookup = self.tags.lookup
        # per field: (index, spec, lookup.get, whether its ids are the tag ids _history_tags needs)
        fields = [
            (f, s, self.encoder.vocabs[s.name].lookup.get, s.name in (TAG_FIELD, UNCLICKED_FIELD))
            for f, s in enumerate(specs)
        ]
        for row, user in enumerate(users):
            unk: dict[str, list[str]] = {}
            # tag ids of the tag fields, reused by _history_tags (the tag fields share the tag vocabulary)
            tag_ids: dict[str, list[int]] = {}
            for f, s, get, is_tag in fields:
                st = user.get(s.name)
                if st is None or not len(st):
                    continue
                vid = list(map(get, st.values, repeat(oov)))
                if is_tag:
                    tag_ids[s.name] = vid
                if oov in vid:
                    unk[s.name] = [v for v, i in zip(st.values, vid, strict=True) if i == oov]
                if s.kind is FieldKind.SINGLE:
                    ids[f][row, 0], masks[f][row, 0], counts[f][row, 0] = vid[-1], 1.0, 1.0
                    continue
                n = len(vid)
                if n == 1:
                    ids[f][row, 0], masks[f][row, 0], counts[f][row, 0] = vid[0], 1.0, st.count[0]
                    continue
                if min(st.count) == max(st.count):
                    # all tied (a list without repeats): the most recent first
                    k = min(n, s.max_len)
                    ids[f][row, :k] = vid[::-1][:k]
                    masks[f][row, :k] = 1.0
                    counts[f][row, :k] = st.count[::-1][:k]
                    continue
                # most frequent first, ties by recency (later position = more recent): a stable sort
                # of the reversed positions by decreasing count
                c = np.asarray(st.count, np.float64)[::-1]
                order = (n - 1 - np.argsort(-c, kind="stable"))[: s.max_len]
                k = len(order)
                ids[f][row, :k] = np.asarray(vid, np.int64)[order]
                masks[f][row, :k] = 1.0
                counts[f][row, :k] = c[::-1][order]
            self._history_tags(user, row, hist_ids, hist_feats, hist_mask, tag_lookup, tag_ids)
            unknown.append(unk)
        return HistoryBatch(ids, masks, counts, hist_ids, hist_feats, hist_mask, unknown)

    def _history_tags(
        self,
        user: Mapping[str, FieldStats],
        row: int,
        hist_ids: np.ndarray,
        hist_feats: np.ndarray,
        hist_mask: np.ndarray,
        lookup: Mapping[str, int],
        tag_ids: Mapping[str, list[int]] | None = None,
    ) -> None:
        clicked = user.get(TAG_FIELD) or FieldStats()
        unclicked = user.get(UNCLICKED_FIELD) or FieldStats()
        try:
            recent_h = self.encoder.spec(TAG_FIELD).max_len
        except KeyError:
            recent_h = len(clicked)
        oov = Vocabulary.OOV
        get = lookup.get
        known = tag_ids or {}
        cid = known.get(TAG_FIELD)
        if cid is None:
            cid = list(map(get, clicked.values, repeat(oov)))
        uid = known.get(UNCLICKED_FIELD)
        if uid is None:
            uid = list(map(get, unclicked.values, repeat(oov)))
        n = len(clicked)
        total_count = sum(clicked.count)
        total = total_count or 1.0
        # clicked tags known to the vocabulary, in order (positions p), then the unclicked-only ones
        cp = [p for p, t in enumerate(cid) if t > oov]
        ct = [cid[p] for p in cp]
        up = [p for p, t in enumerate(uid) if t > oov]
        ut = [uid[p] for p in up]
        if len(set(ct)) != len(ct) or len(set(ut)) != len(ut):
            # a tag id twice in a field (values that share an id): the per-tag dict's rules, element by element
            self._history_tags_dict(clicked, unclicked, row, hist_ids, hist_feats, hist_mask, lookup, recent_h)
            return
        row_of = {t: j for j, t in enumerate(ct)}
        n_c = len(ct)
        unclicked_log = [0.0] * n_c
        only_ids: list[int] = []
        only_log: list[float] = []
        for p, t in zip(up, ut, strict=True):
            j = row_of.get(t)
            lg = math.log1p(unclicked.count[p])
            if j is None:
                only_ids.append(t)
                only_log.append(lg)
            else:
                unclicked_log[j] = lg
        n_all = n_c + len(only_ids)
        cnt = [clicked.count[p] for p in cp]
        base = np.zeros((n_all, N_BASE_PHI), np.float64)
        if n_c:
            base[:n_c, 0] = list(map(math.log1p, cnt))
            base[:n_c, 1] = list(map(math.log1p, [clicked.distinct[p] for p in cp]))
            base[:n_c, 2] = list(map(math.log1p, [clicked.recency[p] for p in cp]))
            base[:n_c, 3] = unclicked_log
            base[:n_c, 4] = np.asarray(cp, np.int64) > n - 1 - recent_h
            base[:n_c, 5] = [c / total for c in cnt]
        base[n_c:, 3] = only_log
        key = np.zeros(n_all, np.float64)
        key[:n_c] = cnt
        # most frequent first, ties by recency-weighted count, then by unclicked count (stable)
        order = np.lexsort((-base[:, 3], -base[:, 2], -key))[: self.max_history_tags]
        n_kept = len(order)
        hist = np.asarray(ct + only_ids, np.int64)[order]
        feats = hist_feats[row]
        feats[:n_kept, :N_BASE_PHI] = base[order]
        m = n_kept
        st = self.stats
        if st is not None:
            share = feats[:n_kept, N_BASE_PHI - 1].astype(np.float64)
            # clicked tags propose by their share of the clicks (unclicked-only ones propose nothing)
            nb, score = reference_transition(st, hist, share)
            new = np.ones(len(nb), bool)
            trans = np.zeros(n_kept + self.extra_candidates, np.float64)
            if len(nb) and n_kept:
                # nb is sorted: the history tags found in it keep their score and propose nothing new
                at = np.minimum(np.searchsorted(nb, hist), len(nb) - 1)
                hit = nb[at] == hist
                new[at[hit]] = False
                trans[:n_kept][hit] = score[at[hit]]
            top = _top(score[new], self.extra_candidates)
            extra = nb[new][top]
            trans[n_kept : n_kept + len(top)] = score[new][top]
            need = self.extra_candidates - len(extra)
            if need > 0:
                # the popular tags (not in nb: every new tag of nb is in extra already)
                taken = set(hist.tolist())
                taken.update(extra.tolist())
                pop = [t for t in st.popular.tolist() if t not in taken][:need]
                extra = np.concatenate([extra, np.asarray(pop, np.int64)])
            m = n_kept + len(extra)
            cand = np.concatenate([hist, extra]).astype(np.int64)
            k = N_BASE_PHI
            feats[:m, k] = trans[:m]
            feats[:n_kept, k + 1] = st.repeat[hist]
            feats[:m, k + 2] = st.label_rate[cand]
            feats[:m, k + 3] = math.log1p(total_count)
            hist_ids[row, :m] = cand
        else:
            hist_ids[row, :m] = hist
        hist_mask[row, :m] = 1.0

    def _history_tags_dict(
        self,
        clicked: FieldStats,
        unclicked: FieldStats,
        row: int,
        hist_ids: np.ndarray,
        hist_feats: np.ndarray,
        hist_mask: np.ndarray,
        lookup: Mapping[str, int],
        recent_h: int,
    ) -> None:
        """`_history_tags` with a per-tag dict, for fields in which two values share a tag id."""
        per_tag: dict[int, list[float]] = {}
        n = len(clicked)
        total = sum(clicked.count) or 1.0
        for p, v in enumerate(clicked.values):
            t = lookup.get(v, Vocabulary.OOV)
            if t <= Vocabulary.OOV:
                continue
            c = clicked.count[p]
            per_tag[t] = [
                math.log1p(c),
                math.log1p(clicked.distinct[p]),
                math.log1p(clicked.recency[p]),
                0.0,
                1.0 if n - 1 - p < recent_h else 0.0,
                c / total,
                c,  # sort key, dropped below
            ]
        for p, v in enumerate(unclicked.values):
            t = lookup.get(v, Vocabulary.OOV)
            if t <= Vocabulary.OOV:
                continue
            phi = per_tag.setdefault(t, [0.0] * (N_BASE_PHI + 1))
            phi[3] = math.log1p(unclicked.count[p])
        kept = sorted(per_tag.items(), key=lambda kv: (-kv[1][6], -kv[1][2], -kv[1][3]))[: self.max_history_tags]
        n_kept = len(kept)
        ids = np.zeros(n_kept + self.extra_candidates, np.int64)
        feats = np.zeros((len(ids), len(PHI_NAMES)), np.float32)
        for j, (t, phi) in enumerate(kept):
            ids[j] = t
            feats[j, :N_BASE_PHI] = phi[:N_BASE_PHI]
        m = n_kept
        st = self.stats
        if st is not None:
            hist = ids[:n_kept]
            share = feats[:n_kept, N_BASE_PHI - 1].astype(np.float64)
            nb, score = reference_transition(st, hist, share)
            new = ~np.isin(nb, hist)
            order = np.argsort(-score[new], kind="stable")[: self.extra_candidates]
            extra = nb[new][order]
            pop = st.popular[~np.isin(st.popular, np.concatenate([hist, extra]))]
            extra = np.concatenate([extra, pop[: self.extra_candidates - len(extra)]]).astype(np.int64)
            m = n_kept + len(extra)
            ids[n_kept:m] = extra
            trans = np.zeros(m, np.float64)
            if len(nb):
                at = np.minimum(np.searchsorted(nb, ids[:m]), len(nb) - 1)
                hit = nb[at] == ids[:m]
                trans[hit] = score[at[hit]]
            k = N_BASE_PHI
            feats[:m, k] = trans
            feats[:n_kept, k + 1] = st.repeat[hist]
            feats[:m, k + 2] = st.label_rate[ids[:m]]
            feats[:m, k + 3] = math.log1p(sum(clicked.count))
        hist_ids[row, :m] = ids[:m]
        hist_feats[row, :m] = feats[:m]
        hist_mask[row, :m] = 1.0


def reference_encode(henc, users):
    return _Ref(henc).encode(users)


def reference_transition(self, hist: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tag ids, sum_h weights[h] * lift(h, t)) over the neighbours t of history tag ids `hist`."""
    hist = np.asarray(hist, np.int64)
    lo, hi = self.indptr[hist], self.indptr[hist + 1]
    n = hi - lo
    if not n.sum():
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    # positions lo[j] .. hi[j]-1 of every history tag j, flattened
    idx = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(int(n.sum()))
    w = np.repeat(np.asarray(weights, np.float64), n) * self.lift[idx]
    # = np.unique(self.indices[idx], return_inverse=True) and a bincount, faster: one plain sort of
    # (tag id, position) keys orders the terms by tag and, within a tag, by position, so each tag's
    # terms are summed in the same order (to the same bits)
    total = len(idx)
    shift = total.bit_length()
    key = np.sort((self.indices[idx].astype(np.int64) << shift) | np.arange(total))
    t = key >> shift
    first = np.empty(total, bool)
    first[0] = True
    np.not_equal(t[1:], t[:-1], out=first[1:])
    return t[first], np.bincount(np.cumsum(first) - 1, weights=w[key & ((1 << shift) - 1)])


def _top(score: np.ndarray, k: int) -> np.ndarray:
    """np.argsort(-score, kind="stable")[:k] (ties in index order), sorting only the k best and their ties."""
    neg = -score
    if len(neg) <= k or k <= 0:
        return np.argsort(neg, kind="stable")[: max(k, 0)]
    sel = np.flatnonzero(neg <= np.partition(neg, k - 1)[k - 1])
    return sel[np.argsort(neg[sel], kind="stable")][:k]


def reference_stats_from_sequence(seq, items=None):
    n = len(seq)
    weights = recency_weights(n)
    if items is None and len(set(seq)) == n:
        return FieldStats(values=list(seq), count=[1.0] * n, distinct=[1.0] * n, recency=list(weights))
    recency = {}
    for v, w in zip(seq, weights, strict=True):
        recency[v] = recency.get(v, 0.0) + w
    counts = Counter(seq)
    values = list(dict.fromkeys(reversed(seq)))[::-1]
    if items is None:
        distinct = [float(counts[v]) for v in values]
    else:
        item_sets = {}
        for v, item in zip(seq, items, strict=True):
            item_sets.setdefault(v, set()).add(item)
        distinct = [float(len(item_sets[v])) for v in values]
    return FieldStats(
        values=values,
        count=[float(counts[v]) for v in values],
        distinct=distinct,
        recency=[recency[v] for v in values],
    )
