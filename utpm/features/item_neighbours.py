"""`ItemNeighbours`: what users who clicked the same items clicked, as tags (item-based collaborative filtering).

A user's tag history says nothing of the items that carry no tags, and in a catalogue tagged by its
users most items carry none. Their clicks still say which items the user goes on to click: each
item's `k` nearest items with tags, by the cosine of the sets of training users who clicked them
(the co-click counts from `pair_counts`, over sqrt(n_i n_j)). A user's item scores are the sums of
their clicked items' neighbour similarities, the items the user has already seen left out; the tags
of the best `top_items` of them, each weighted by its item's score, give a tag score, divided by the
user's highest so that it lies in (0, 1].

`ItemNeighbourTags` is what the default model's history encoder holds: the item vocabulary, the
neighbours and each item's tags, so that a request's `clicked_items` give the phi feature
`item_neighbour_score` and candidate tags (`utpm.features.history`); measured first by
`utpm bench start` ("half-items", docs/results.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from utpm.features.compiled import compiled
from utpm.features.pair_counts import count_pairs, fitting_sample, top_neighbours_by_block
from utpm.features.vocab import Vocabulary

# neighbours kept per item: 50 did as well as 200 on validation users (docs/results.md)
NEIGHBOURS = 50
# a user's best items whose tags are scored
TOP_ITEMS = 100
# a user's most recent distinct clicked items that are read, by a training example as by a request (a
# request built from the log carries as many); 1000 did better than 100 and 300 on validation users
# (docs/results.md), and it bounds what one request costs
RECENT_ITEMS = 1000
# The co-click counting holds every (item, item) pair of a user's clicked items: each user's most
# recent MAX_USER_ITEMS distinct items count, and past MAX_FIT_PAIRS pairs over all users (sum of
# n_u^2) the neighbours come from a seeded sample of the users, as `TagStats`' counting does.
MAX_USER_ITEMS = 3_000
MAX_FIT_PAIRS = 100_000_000


@dataclass
class ItemNeighbours:
    """Row i: item i's neighbours `items[indptr[i] : indptr[i + 1]]`, best first, with `similarity`."""

    indptr: np.ndarray
    items: np.ndarray
    similarity: np.ndarray

    @classmethod
    def fit(cls, clicked: Sequence[np.ndarray], n_items: int, has_tags: np.ndarray, k: int = 200) -> ItemNeighbours:
        """From each training user's clicked items (ids in [0, n_items)); only items with
        `has_tags[j]` can be neighbours, as only they give tags."""
        users = [np.unique(np.asarray(c, np.int64)) for c in clicked]
        pairs = count_pairs([(u, u) for u in users], n_items)
        clickers = np.bincount(np.concatenate(users) if users else np.zeros(0, np.int64), minlength=n_items)

        def cosine_of(row: np.ndarray, pairs_at: slice) -> np.ndarray:
            """The cosine of the item pairs (row, col); 0 where the neighbour has no tags."""
            col = pairs.tags[pairs_at]
            norm = np.sqrt(clickers[row].astype(np.float64) * clickers[col])
            return np.where(has_tags[col], pairs.counts[pairs_at] / np.maximum(norm, 1.0), 0.0)

        indptr, chosen, cosine = top_neighbours_by_block(pairs.indptr, cosine_of, k)
        return cls(indptr, pairs.tags[chosen].astype(np.int64), cosine)

    def scores(self, clicked: np.ndarray, seen: np.ndarray, top_items: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """The best `top_items` items for a user who clicked `clicked` (ids) and saw `seen` (ids, left
        out), best first (ties by id), with their scores > 0."""
        at = _ranges(self.indptr, np.asarray(clicked, np.int64))
        items, inverse = np.unique(self.items[at], return_inverse=True)
        score = np.bincount(inverse, weights=self.similarity[at], minlength=len(items))
        keep = ~np.isin(items, seen) & (score > 0)
        items, score = items[keep], score[keep]
        best = np.lexsort((items, -score))[:top_items]
        return items[best], score[best]


class _Scratch(threading.local):
    """Per thread, a score slot of every item and of every tag, zero outside a call of `_user_tags`
    (which clears what it set): a request costs its items, not the catalogue."""

    def arrays(self, n_items: int, n_tags: int) -> tuple[np.ndarray, np.ndarray]:
        held = getattr(self, "held", None)
        if held is None or len(held[0]) != n_items or len(held[1]) != n_tags:
            held = self.held = (np.zeros(n_items, np.float64), np.zeros(n_tags, np.float64))
        return held


@compiled
def _by_score(ids, score, limit):
    """The positions of the `limit` best of `ids` by score, ties by id (ids distinct)."""
    order = np.argsort(ids, kind="mergesort")
    order = order[np.argsort(-score[order], kind="mergesort")]
    return order[:limit]


@compiled
def _user_tags(clicked, indptr, items, similarity, tag_indptr, tag_ids, top_items, item_score, tag_total):
    """`ItemNeighbourTags.tag_scores` of one user (`clicked`: distinct item ids, ascending), the sums
    in numpy's order: item by item as `ItemNeighbours.scores` adds them, then tag by tag."""
    n_terms = 0
    for c in clicked:
        n_terms += indptr[c + 1] - indptr[c]
    touched = np.empty(n_terms, np.int64)
    n_touched = 0
    for c in clicked:
        for p in range(indptr[c], indptr[c + 1]):
            j = items[p]
            if item_score[j] == 0.0:
                touched[n_touched] = j
                n_touched += 1
            item_score[j] += np.float64(similarity[p])
    # the clicked items are left out (seen), as are scores of 0
    cand = np.empty(n_touched, np.int64)
    n_cand = 0
    for k in range(n_touched):
        j = touched[k]
        if item_score[j] > 0.0:
            pos = np.searchsorted(clicked, j)
            if pos >= len(clicked) or clicked[pos] != j:
                cand[n_cand] = j
                n_cand += 1
    cand = cand[:n_cand]
    cand_score = np.empty(n_cand, np.float64)
    for k in range(n_cand):
        cand_score[k] = item_score[cand[k]]
    for k in range(n_touched):
        item_score[touched[k]] = 0.0
    best = _by_score(cand, cand_score, top_items)
    n_tag_terms = 0
    for b in best:
        n_tag_terms += tag_indptr[cand[b] + 1] - tag_indptr[cand[b]]
    tags = np.empty(n_tag_terms, np.int64)
    n_tags = 0
    for b in best:
        i = cand[b]
        for p in range(tag_indptr[i], tag_indptr[i + 1]):
            t = tag_ids[p]
            if tag_total[t] == 0.0:
                tags[n_tags] = t
                n_tags += 1
            tag_total[t] += cand_score[b]
    tags = tags[:n_tags]
    total = np.empty(n_tags, np.float64)
    for k in range(n_tags):
        total[k] = tag_total[tags[k]]
        tag_total[tags[k]] = 0.0
    order = _by_score(tags, total, n_tags)
    tags, total = tags[order], total[order]
    if n_tags:
        total = total / total[0]
    return tags, total


@dataclass
class ItemNeighbourTags:
    """The tag score of the items users who clicked the same items clicked, as the history encoder
    and a bundle hold it: the item vocabulary (item ids as the event log and a request name them),
    `ItemNeighbours` over its ids and each item's tag ids (`tag_indptr`, `tag_ids`, CSR, ids of the
    tag vocabulary)."""

    items: Vocabulary
    neighbours: ItemNeighbours
    tag_indptr: np.ndarray
    tag_ids: np.ndarray
    top_items: int = TOP_ITEMS
    recent_items: int = RECENT_ITEMS
    _scratch: _Scratch = field(default_factory=_Scratch, init=False, repr=False, compare=False)

    PREFIX = "items_"

    def __post_init__(self) -> None:
        # one past the highest tag id an item gives: the size of the tag scratch, read per request
        self.n_tags = int(self.tag_ids.max()) + 1 if len(self.tag_ids) else 0

    @classmethod
    def fit(
        cls,
        clicked: Sequence[np.ndarray],
        item_ids: Sequence[str],
        item_tag_ids: Callable[[int], np.ndarray],
        k: int = NEIGHBOURS,
        top_items: int = TOP_ITEMS,
        recent_items: int = RECENT_ITEMS,
        max_user_items: int = MAX_USER_ITEMS,
        max_pairs: int = MAX_FIT_PAIRS,
    ) -> ItemNeighbourTags:
        """From each fitting user's clicked items (codes into the catalogue `item_ids`, oldest first);
        `item_tag_ids(code)`: the tag ids (> OOV) an item gives. The vocabulary holds the items the
        users clicked: no other item has a neighbour or is one. The counting's budget:
        `_within_budget`."""
        codes = np.concatenate(clicked).astype(np.int64) if clicked else np.zeros(0, np.int64)
        items = Vocabulary.build(str(item_ids[c]) for c in codes.tolist())
        vid = np.full(len(item_ids), Vocabulary.OOV, np.int64)  # catalogue code -> vocabulary id
        per_item = [np.zeros(0, np.int32)] * len(items)
        for c in np.unique(codes).tolist():
            vid[c] = items.lookup[str(item_ids[c])]
            t = np.unique(np.asarray(item_tag_ids(c), np.int64))
            per_item[vid[c]] = t[t > Vocabulary.OOV].astype(np.int32)
        tag_indptr = np.zeros(len(items) + 1, np.int64)
        np.cumsum([len(t) for t in per_item], out=tag_indptr[1:])
        tag_ids = np.concatenate(per_item)
        users = _within_budget([vid[np.asarray(u, np.int64)] for u in clicked], max_user_items, max_pairs)
        nb = ItemNeighbours.fit(users, len(items), np.diff(tag_indptr) > 0, k)
        # float32, as a bundle holds it: training and serving sum the same similarities
        nb.similarity = nb.similarity.astype(np.float32)
        return cls(items, nb, tag_indptr, tag_ids, top_items, recent_items)

    def tag_scores(self, clicked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A user's tag ids and scores in (0, 1], best first (ties by tag id): the tags of their best
        `top_items` unclicked items (`ItemNeighbours.scores`), each weighted by its item's score, over
        the user's highest. `clicked`: item ids of this vocabulary, distinct, oldest first, of which
        the most recent `recent_items` are read (0: all); OOV and padding take their place and are ignored.

        Compiled (`_user_tags`): it runs for every request that carries items, in the batch thread,
        and numpy's per-call overheads were most of its cost; it gives the bits of the numpy
        version (tests/utpm/features/test_item_neighbours.py holds the two equal)."""
        clicked = np.asarray(clicked, np.int64)
        if self.recent_items > 0:
            clicked = clicked[-self.recent_items :]
        clicked = np.unique(clicked)
        clicked = clicked[clicked > Vocabulary.OOV]
        nb = self.neighbours
        item_score, tag_total = self._scratch.arrays(len(nb.indptr) - 1, self.n_tags)
        return _user_tags(
            clicked,
            nb.indptr,
            nb.items,
            nb.similarity,
            self.tag_indptr,
            self.tag_ids,
            self.top_items,
            item_score,
            tag_total,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        p = self.PREFIX
        return {
            p + "tokens": np.asarray(self.items.tokens, dtype=str),
            p + "neighbour_indptr": self.neighbours.indptr,
            p + "neighbours": self.neighbours.items.astype(np.int32),
            p + "similarity": self.neighbours.similarity.astype(np.float32),
            p + "tag_indptr": self.tag_indptr,
            p + "tag_ids": self.tag_ids.astype(np.int32),
            p + "top_items": np.asarray(self.top_items, np.int64),
            p + "recent_items": np.asarray(self.recent_items, np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ItemNeighbourTags | None:
        """The inverse of `to_arrays`; None when `arrays` holds no item neighbours."""
        p = cls.PREFIX
        if p + "tokens" not in arrays:
            return None
        return cls(
            Vocabulary([str(t) for t in arrays[p + "tokens"].tolist()]),
            ItemNeighbours(
                np.asarray(arrays[p + "neighbour_indptr"], np.int64),
                np.asarray(arrays[p + "neighbours"], np.int64),
                np.asarray(arrays[p + "similarity"], np.float32),
            ),
            np.asarray(arrays[p + "tag_indptr"], np.int64),
            np.asarray(arrays[p + "tag_ids"], np.int32),
            int(arrays[p + "top_items"]),
            # bundles exported before the setting read up to what their requests carried
            int(arrays[p + "recent_items"]) if p + "recent_items" in arrays else RECENT_ITEMS,
        )


def _ranges(indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The positions of CSR rows `rows`, row after row (one `np.arange` per row, without the loop)."""
    lo = indptr[rows]
    n = indptr[rows + 1] - lo
    return np.repeat(lo - np.cumsum(n) + n, n) + np.arange(int(n.sum()))


def _within_budget(users: Sequence[np.ndarray], max_user_items: int, max_pairs: int) -> list[np.ndarray]:
    """Each user's most recent `max_user_items` distinct items (oldest first in, any order out); past
    `max_pairs` pairs in all (sum of n_u^2), only the users of `fitting_sample` (the others count nothing)."""
    kept = []
    for u in users:
        latest = np.unique(u[::-1], return_index=True)[1]  # each item's last click, counted from the end
        kept.append(u[::-1][np.sort(latest)[:max_user_items]])
    n_pairs = np.asarray([len(u) ** 2 for u in kept], np.int64)
    if n_pairs.sum() <= max_pairs:
        return kept
    out = [np.zeros(0, np.int64)] * len(kept)
    for j in fitting_sample(n_pairs, max_pairs):
        out[j] = kept[j]
    return out
