"""`TagStats`' pair table, compiled (numba): how many users have history tag h and label tag t, for
every pair that occurs, and each h's best neighbours t.

The counts are a sparse product of the users' history tags with their label tags, row h at a time
(the users with tag h from an inverted index, their label tags summed into one dense row): no
user's block of pairs is built and only each row's distinct tags are sorted. Before, `np.unique`
of every user's codes h * n_tags + t sorted every pair, most of the tag statistics' time at a
million tags; tests/utpm/features/test_tag_stats.py checks the two agree.

The table is the largest thing the tag statistics hold (one entry per distinct pair: hundreds of
millions at a million tags), so it is int32, and its rows are scored `BLOCK_PAIRS` entries at a time
(`top_neighbours_by_block`): a score array of the whole table, and the temporaries that compute it,
would each be as large as the table again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from utpm.features.compiled import compiled

# entries of a pair table scored at once by `top_neighbours_by_block`
BLOCK_PAIRS = 1 << 24


@dataclass
class PairCounts:
    """Row h (a history tag) holds the label tags t != h of its users, `tags[indptr[h] : indptr[h + 1]]`
    ascending, and `counts`, how many users have both (both int32); `same[h]`: how many have h on both
    sides."""

    indptr: np.ndarray
    tags: np.ndarray
    counts: np.ndarray
    same: np.ndarray


def count_pairs(users: Sequence[tuple[np.ndarray, np.ndarray]], n_tags: int) -> PairCounts:
    """The pair table of users given as (history tag ids, label tag ids), each array distinct ids in
    [0, n_tags)."""
    h_ids, h_bounds = _flat([h for h, _ in users])
    c_ids, c_bounds = _flat([c for _, c in users])
    return PairCounts(*_pair_counts(h_bounds, h_ids, c_bounds, c_ids, n_tags))


def top_neighbours(indptr: np.ndarray, score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a table laid out as `PairCounts`, the positions of its at most `k` entries with the
    highest `score` above 0 (ties: the row's order), best first; as (indptr of the choice, positions)."""
    return _top_neighbours(indptr, score, k)


def top_neighbours_by_block(
    indptr: np.ndarray, score_of: Callable[[np.ndarray, slice], np.ndarray], k: int, block: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`top_neighbours` of the scores `score_of(rows, entries)` gives for a run of whole rows: the
    table's `entries` (a slice) and the row of each, asked for about `block` entries at a time, so that
    no score array of the whole table is held; with the chosen entries' scores."""
    block = block or BLOCK_PAIRS
    n_rows = len(indptr) - 1
    ptrs, chosen, scores = [np.zeros(1, np.int64)], [], []
    lo = 0
    while lo < n_rows:
        # the most rows from lo whose entries fit in `block`, at least one
        hi = min(n_rows, max(lo + 1, int(np.searchsorted(indptr, indptr[lo] + block, side="right")) - 1))
        rows = np.repeat(np.arange(lo, hi), np.diff(indptr[lo : hi + 1]))
        score = score_of(rows, slice(int(indptr[lo]), int(indptr[hi])))
        ptr, pos = top_neighbours(indptr[lo : hi + 1] - indptr[lo], score, k)
        ptrs.append(ptr[1:] + ptrs[-1][-1])
        chosen.append(pos + indptr[lo])
        scores.append(score[pos])
        lo = hi
    empty = np.zeros(0, np.int64)
    return np.concatenate(ptrs), np.concatenate([empty, *chosen]), np.concatenate([np.zeros(0), *scores])


def fitting_sample(n_pairs: np.ndarray, budget: int) -> list[int]:
    """The users (indices, ascending) whose pairs are counted under `budget` pairs in all: in a seeded
    order, each user whose pairs still fit in what is left. A user who does not fit is skipped, not
    the end of the sample (a cut there would drop every user after one large one)."""
    left, fits = budget, []
    for j in np.random.default_rng(0).permutation(len(n_pairs)).tolist():
        if n_pairs[j] <= left:
            fits.append(j)
            left -= int(n_pairs[j])
    return sorted(fits)


def _flat(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    bounds = np.zeros(len(arrays) + 1, np.int64)
    np.cumsum([len(a) for a in arrays], out=bounds[1:])
    ids = np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64)
    return ids, bounds


@compiled
def _pair_counts(h_bounds, h_ids, c_bounds, c_ids, n_tags):
    n_users = len(h_bounds) - 1
    # the users of each history tag h: by_tag[starts[h] : starts[h + 1]]
    starts = np.zeros(n_tags + 1, np.int64)
    for j in range(len(h_ids)):
        starts[h_ids[j] + 1] += 1
    for h in range(n_tags):
        starts[h + 1] += starts[h]
    fill = starts[:-1].copy()
    by_tag = np.empty(len(h_ids), np.int64)
    for u in range(n_users):
        for j in range(h_bounds[u], h_bounds[u + 1]):
            h = h_ids[j]
            by_tag[fill[h]] = u
            fill[h] += 1
    acc = np.zeros(n_tags, np.int64)
    touched = np.empty(n_tags, np.int64)
    # first pass: each row's length, so that the output is allocated once
    indptr = np.zeros(n_tags + 1, np.int64)
    same = np.zeros(n_tags, np.int64)
    for h in range(n_tags):
        m, same[h] = _sum_row(h, starts, by_tag, c_bounds, c_ids, acc, touched)
        indptr[h + 1] = indptr[h] + m
        for i in range(m):
            acc[touched[i]] = 0
    tags = np.empty(indptr[n_tags], np.int32)
    counts = np.empty(indptr[n_tags], np.int32)
    for h in range(n_tags):
        m, _ = _sum_row(h, starts, by_tag, c_bounds, c_ids, acc, touched)
        row = np.sort(touched[:m])
        at = indptr[h]
        for i in range(m):
            t = row[i]
            tags[at + i] = t
            counts[at + i] = acc[t]
            acc[t] = 0
    return indptr, tags, counts, same


@compiled
def _sum_row(h, starts, by_tag, c_bounds, c_ids, acc, touched):
    """Row h: the label tags t != h of the users with history tag h counted into `acc` (zero before),
    the distinct ones into `touched`; returns (how many distinct, how many users have h as a label)."""
    m = 0
    same = 0
    for j in range(starts[h], starts[h + 1]):
        u = by_tag[j]
        for x in range(c_bounds[u], c_bounds[u + 1]):
            t = c_ids[x]
            if t == h:
                same += 1
            else:
                if acc[t] == 0:
                    touched[m] = t
                    m += 1
                acc[t] += 1
    return m, same


@compiled
def _top_neighbours(indptr, score, k):
    n_rows = len(indptr) - 1
    out = np.zeros(n_rows + 1, np.int64)
    for r in range(n_rows):
        m = 0
        for j in range(indptr[r], indptr[r + 1]):
            if score[j] > 0:
                m += 1
        out[r + 1] = out[r] + min(m, k)
    chosen = np.empty(out[n_rows], np.int64)
    for r in range(n_rows):
        if out[r + 1] == out[r]:
            continue
        lo, hi = indptr[r], indptr[r + 1]
        pos = np.empty(hi - lo, np.int64)
        m = 0
        for j in range(lo, hi):
            if score[j] > 0:
                pos[m] = j
                m += 1
        pos = pos[:m]
        best = np.argsort(-score[pos], kind="mergesort")  # stable: ties keep the row's order
        for i in range(out[r + 1] - out[r]):
            chosen[out[r] + i] = pos[best[i]]
    return out, chosen
