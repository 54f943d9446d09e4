"""`ItemNeighbours`: what users who clicked the same items clicked, as tags (item-based collaborative filtering).

A user's tag history says nothing of the items that carry no tags, and in a catalogue tagged by its
users most items carry none. Their clicks still say which items the user goes on to click: each
item's `k` nearest items with tags, by the cosine of the sets of training users who clicked them
(the co-click counts from `pair_counts`, over sqrt(n_i n_j)). A user's item scores are the sums of
their clicked items' neighbour similarities, the items the user has already seen left out; the tags
of the best `top_items` of them, each weighted by its item's score, give a tag score, divided by the
user's highest so that it lies in (0, 1].

A candidate feature measured by `utpm bench start` ("half-items", docs/results.md), not yet an input
of the default model: the service's request carries tags and categories, not item ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from utpm.features.pair_counts import count_pairs, top_neighbours


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
        row = np.repeat(np.arange(n_items), np.diff(pairs.indptr))
        norm = np.sqrt(clickers[row].astype(np.float64) * clickers[pairs.tags])
        cosine = np.where(has_tags[pairs.tags], pairs.counts / np.maximum(norm, 1.0), 0.0)
        indptr, chosen = top_neighbours(pairs.indptr, cosine, k)
        return cls(indptr, pairs.tags[chosen].astype(np.int64), cosine[chosen])

    def scores(self, clicked: np.ndarray, seen: np.ndarray, top_items: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """The best `top_items` items for a user who clicked `clicked` (ids) and saw `seen` (ids, left
        out), best first (ties by id), with their scores > 0."""
        parts = [np.arange(self.indptr[i], self.indptr[i + 1]) for i in np.asarray(clicked, np.int64).tolist()]
        at = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        items, inverse = np.unique(self.items[at], return_inverse=True)
        score = np.bincount(inverse, weights=self.similarity[at], minlength=len(items))
        keep = ~np.isin(items, seen) & (score > 0)
        items, score = items[keep], score[keep]
        best = np.lexsort((items, -score))[:top_items]
        return items[best], score[best]
