"""Two honest non-neural yardsticks the paper omits.

- `mostpop`: tags ranked by how often they occur among training labels (tags of training users'
  label-1 items). Everyone gets the same list.
- `histfreq`: the user's own history tags (of label-1 history items) ranked by frequency, ties by
  popularity, back-filled by `mostpop`.

A model that does not beat these is not learning the user.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from utpm.data.protocol import ProtocolSplit

YARDSTICKS = ("mostpop", "histfreq")


def popularity(split: ProtocolSplit, train_rows: np.ndarray, max_tags: int | None) -> list[str]:
    """Tags ranked by frequency among the training users' label-1 items (ties alphabetical)."""
    counts: Counter[str] = Counter()
    for i in train_rows:
        for tags, y in split.label_items(int(i), max_tags):
            if y == 1:
                counts.update(tags)
    return [t for t, _ in sorted(counts.items(), key=lambda tc: (-tc[1], tc[0]))]


def history_frequency(
    split: ProtocolSplit, user: int, popular: list[str], limit: int, max_tags: int | None
) -> list[str]:
    """User's label-1 history tags by frequency (ties by popularity), then popular tags."""
    rank = {t: r for r, t in enumerate(popular)}
    counts: Counter[str] = Counter()
    lo, hi = split.history.offsets[user], split.history.offsets[user + 1]
    for item, y in zip(split.history.codes[lo:hi], split.history_values[lo:hi], strict=True):
        if y == 1:
            counts.update(split.item_tags.row(int(item))[:max_tags])
    own = sorted(counts, key=lambda t: (-counts[t], rank.get(t, len(rank)), t))
    seen = set(own)
    return own + [t for t in popular[: limit + len(own)] if t not in seen]


def yardstick_rankings(
    name: str,
    split: ProtocolSplit,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    max_tags: int | None,
    limit: int = 50,
) -> list[list[str]]:
    """Ranked tags for each test user under yardstick `name`, items cut to their first `max_tags` tags."""
    popular = popularity(split, train_rows, max_tags)
    if name == "mostpop":
        return [popular[:limit]] * len(test_rows)
    if name == "histfreq":
        return [history_frequency(split, int(i), popular, limit, max_tags)[:limit] for i in test_rows]
    raise ValueError(f"unknown yardstick {name!r}; valid: {YARDSTICKS}")
