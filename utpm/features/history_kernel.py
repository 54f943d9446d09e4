"""The history encoder's per-(user, tag) candidates and phi, compiled (numba), user by user.

`HistoryEncoder.encode` looks every value up in its vocabulary in Python (dicts of strings) and
hands the ids, counts and their log1p to `candidates`, which fills the candidate slots of a batch
without the interpreter: it releases the GIL, so that the service's event loop runs on the other
core while a batch thread encodes. It gives the bits of the numpy batch encoder it replaced: the
same float64 sums in the same order, the same float32 roundings, the same orders and ties (tested
against the per-user reference encoder, tests/utpm/features/reference_history.py).

The first call of a process compiles, or loads what numba cached (`compiled`).
"""

from __future__ import annotations

import threading

import numpy as np

from utpm.features.compiled import compiled
from utpm.features.vocab import Vocabulary

OOV = Vocabulary.OOV
# columns of phi this kernel fills (the order of history.PHI_NAMES)
COUNT, DISTINCT, RECENCY, UNCLICKED, IN_RECENT, SHARE, TRANSITION, REPEAT, LABEL_RATE, HISTORY_LENGTH = range(10)


class Scratch(threading.local):
    """A per-thread slot of every tag id (-1 outside a user's turn): `candidates` sets only a user's own
    tags and clears them before it returns, so a batch costs its tags, not the vocabulary."""

    def mark(self, n_tags: int) -> np.ndarray:
        held = getattr(self, "held", None)
        if held is None or len(held) != n_tags:
            held = self.held = np.full(n_tags, -1, np.int32)
        return held


@compiled
def _lex_order(place, k3, k2, k1):
    """Indices sorted by (-k1, -k2, -k3, place), `place` distinct: stable passes, least key first."""
    order = np.argsort(place, kind="mergesort")
    for key in (k3, k2, k1):
        order = order[np.argsort(-key[order], kind="mergesort")]
    return order


@compiled
def _slot(keys, t):
    """Where tag id `t` is or goes in the open-addressing table `keys` (a power of two; -1 = free)."""
    mask = len(keys) - 1
    i = (t * 0x9E3779B1) & mask
    while keys[i] >= 0 and keys[i] != t:
        i = (i + 1) & mask
    return i


@compiled
def _table(n):
    """An empty open-addressing table for `n` insertions: (keys, sums, the slots in insertion order)."""
    size = 16
    while size < 2 * n:
        size *= 2
    return np.full(size, -1, np.int32), np.zeros(size, np.float64), np.empty(n, np.int64)


@compiled
def _propose(keys, sums, used, n_used, h, w, indptr, indices, lift):
    """Add history tag h's terms w * lift(h, t) to its neighbours t in the table; the new count of slots used."""
    for idx in range(indptr[h], indptr[h + 1]):
        i = _slot(keys, indices[idx])
        if keys[i] < 0:
            keys[i] = indices[idx]
            used[n_used] = i
            n_used += 1
        sums[i] += w * np.float64(lift[idx])
    return n_used


@compiled
def _entry(t, pos, mark, tag, first, n):
    """Tag t's entry among a user's n so far: its own, or a new one at n, first seen at `pos` -> (entry, n)."""
    e = mark[t]
    if e < 0:
        e = n
        mark[t] = n
        tag[n], first[n] = t, pos
        n += 1
    return e, n


@compiled
def _kept_history(u, clicked, unclicked, users, max_history_tags, mark, out):
    """User u's kept history tags into its first slots with their base phi; `mark` holds each kept tag's
    slot afterwards (and -1 for the rest). Returns how many were kept."""
    c_bounds, c_ids, c_count, c_log = clicked
    u_bounds, u_ids, u_log = unclicked
    recent_h, totals, _ = users
    hist_ids, hist_feats, hist_mask = out
    cs, ce = c_bounds[u], c_bounds[u + 1]
    us, ue = u_bounds[u], u_bounds[u + 1]
    clen = ce - cs
    n_max = clen + (ue - us)
    tag = np.empty(n_max, np.int64)
    first = np.empty(n_max, np.int64)
    last = np.empty(n_max, np.int64)
    ulog = np.zeros(n_max, np.float64)
    # one entry per tag: a clicked tag keeps the place of its first occurrence, the phi of its last
    n = 0
    for p in range(cs, ce):
        if c_ids[p] > OOV:
            e, n = _entry(c_ids[p], p - cs, mark, tag, first, n)
            last[e] = p
    n_c = n
    # an unclicked tag sets the unclicked count (its last occurrence) of its clicked entry, or comes after them
    for p in range(us, ue):
        if u_ids[p] > OOV:
            e, n = _entry(u_ids[p], p - us, mark, tag, first, n)
            ulog[e] = u_log[p]
    base = np.zeros((n, SHARE + 1), np.float64)
    key = np.zeros(n, np.float64)
    place = np.empty(n, np.int64)
    total = totals[u] if totals[u] != 0 else 1.0
    for e in range(n):
        base[e, UNCLICKED] = ulog[e]
        if e < n_c:
            p = last[e]
            cnt = c_count[p]
            base[e, COUNT], base[e, DISTINCT], base[e, RECENCY] = c_log[0, p], c_log[1, p], c_log[2, p]
            base[e, IN_RECENT] = 1.0 if p - cs > clen - 1 - recent_h[u] else 0.0
            base[e, SHARE] = cnt / total
            key[e] = cnt
            place[e] = first[e]
        else:
            place[e] = first[e] + 1 + clen
        mark[tag[e]] = -1
    # the kept history tags: most frequent first, ties by recency-weighted count, unclicked count, place
    order = _lex_order(place, base[:, UNCLICKED].copy(), base[:, RECENCY].copy(), key)
    kept = min(n, max_history_tags)
    for s in range(kept):
        e = order[s]
        hist_ids[u, s] = tag[e]
        hist_mask[u, s] = 1.0
        for j in range(SHARE + 1):
            hist_feats[u, s, j] = base[e, j]
        mark[tag[e]] = s
    return kept


@compiled
def _new_and_popular(u, kept, extra_candidates, stats, log_total, mark, out):
    """User u's transition scores, the best new tags and the popular fill after its `kept` history tags
    (`mark`: the kept tags' slots), and the per-tag phi of every slot."""
    indptr, indices, lift, repeat, label_rate, popular = stats
    hist_ids, hist_feats, hist_mask = out
    # transitions from the kept clicked tags, weighted by their share as stored (float32); terms summed
    # per tag in slot order, then neighbour order, in an open-addressing table of the user's own tags
    # that stays in cache
    n_terms = 0
    for s in range(kept):
        if hist_feats[u, s, SHARE] != 0:
            h = hist_ids[u, s]
            n_terms += indptr[h + 1] - indptr[h]
    keys, sums, used = _table(n_terms)
    n_used = 0
    unweighted = False
    for s in range(kept):
        w = np.float64(hist_feats[u, s, SHARE])
        if w == 0:
            unweighted = True
        else:
            n_used = _propose(keys, sums, used, n_used, hist_ids[u, s], w, indptr, indices, lift)
    if unweighted:
        # a tag of share 0 (unclicked only) adds +0.0 terms: the sums stay the same bits, but its
        # neighbours become new tags of score 0, which a user with too few positive ones needs
        positive = 0
        for j in range(n_used):
            if mark[keys[used[j]]] < 0 and sums[used[j]] > 0:
                positive += 1
        if positive < extra_candidates:
            for s in range(kept):
                if hist_feats[u, s, SHARE] == 0:
                    h = hist_ids[u, s]
                    n_terms += indptr[h + 1] - indptr[h]
            old_keys, old_sums, old_used = keys, sums, used
            keys, sums, used = _table(n_terms)
            for j in range(n_used):
                i = _slot(keys, old_keys[old_used[j]])
                keys[i], sums[i], used[j] = old_keys[old_used[j]], old_sums[old_used[j]], i
            for s in range(kept):
                if hist_feats[u, s, SHARE] == 0:
                    n_used = _propose(keys, sums, used, n_used, hist_ids[u, s], 0.0, indptr, indices, lift)
    chosen = np.zeros(len(keys), np.bool_)
    n_new = 0
    new_at = np.empty(n_used, np.int64)
    new_tag = np.empty(n_used, np.int64)
    new_neg = np.empty(n_used, np.float64)
    for j in range(n_used):
        i = used[j]
        t = keys[i]
        s = mark[t]
        if s >= 0:
            hist_feats[u, s, TRANSITION] = sums[i]
        else:
            new_at[n_new], new_tag[n_new], new_neg[n_new] = i, t, -sums[i]
            n_new += 1
    # the best new tags, ties by tag id
    new_at, new_tag, new_neg = new_at[:n_new], new_tag[:n_new], new_neg[:n_new]
    if extra_candidates > 0 and n_new > extra_candidates:
        cut = np.partition(new_neg, extra_candidates - 1)[extra_candidates - 1]
        sel = np.flatnonzero(new_neg <= cut)
        new_at, new_tag, new_neg = new_at[sel], new_tag[sel], new_neg[sel]
    by_tag = np.argsort(new_tag, kind="mergesort")
    new_at, new_tag, new_neg = new_at[by_tag], new_tag[by_tag], new_neg[by_tag]
    best = np.argsort(new_neg, kind="mergesort")[: max(extra_candidates, 0)]
    slot = kept
    for j in best:
        hist_ids[u, slot] = new_tag[j]
        hist_mask[u, slot] = 1.0
        hist_feats[u, slot, TRANSITION] = -new_neg[j]
        chosen[new_at[j]] = True
        slot += 1
    # then the popular tags the user has neither kept nor been proposed
    end = kept + max(extra_candidates, 0)
    for t in popular:
        if slot >= end:
            break
        if mark[t] >= 0:
            continue
        i = _slot(keys, t)
        if keys[i] == t and chosen[i]:
            continue
        hist_ids[u, slot] = t
        hist_mask[u, slot] = 1.0
        slot += 1
    for s in range(slot):
        t = hist_ids[u, s]
        if s < kept:
            hist_feats[u, s, REPEAT] = repeat[t]
        hist_feats[u, s, LABEL_RATE] = label_rate[t]
        hist_feats[u, s, HISTORY_LENGTH] = log_total[u]


@compiled
def candidates(clicked, unclicked, users, max_history_tags, extra_candidates, has_stats, stats, mark, out):
    """Fill `out` = (hist_ids, hist_feats, hist_mask), (B, width[, P]), for every user of the batch.

    `clicked` = (c_bounds, c_ids, c_count, c_log): user u's clicked values are c_bounds[u] ..
    c_bounds[u + 1] of c_ids (tag ids, OOV if unknown), c_count (raw counts) and c_log (3, n): log1p
    of count, distinct items, recency-weighted count; `unclicked` = (u_bounds, u_ids, u_log), u_log =
    log1p(count). `users` = (recent_h, totals, log_total) per user: totals the sum of the clicked
    counts, log_total its log1p. `stats` = TagStats' (indptr, indices, lift, repeat, label_rate,
    popular), read only when `has_stats`. `mark`: `Scratch.mark`, left clear.
    """
    for u in range(len(clicked[0]) - 1):
        kept = _kept_history(u, clicked, unclicked, users, max_history_tags, mark, out)
        if has_stats:
            _new_and_popular(u, kept, extra_candidates, stats, users[2], mark, out)
        for s in range(kept):
            mark[out[0][u, s]] = -1
