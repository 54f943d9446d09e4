"""Prec@K, the paper's Eq. 5, and recovery of planted interests.

For each user: P = the top K *unique* predicted tags, C = the set of tags of the user's label-1
items in the label period, score = |P ∩ C| / min(K, |C|). The mean is over users with a non-empty
C; users with an empty C are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PrecisionAtK:
    k: int
    value: float
    users: int
    skipped_users: int


def unique_top(ranked: Iterable[str], k: int) -> list[str]:
    """The first k distinct tags of a ranked list."""
    out: list[str] = []
    seen: set[str] = set()
    for t in ranked:
        if t not in seen:
            seen.add(t)
            out.append(t)
            if len(out) == k:
                break
    return out


def user_precision(ranked: Sequence[str], clicked: set[str], k: int) -> float:
    """|P@K ∩ C| / min(K, |C|) for one user with a non-empty C."""
    if not clicked:
        raise ValueError("Prec@K is undefined for a user with no clicked tags")
    top = unique_top(ranked, k)
    return len(set(top) & clicked) / min(k, len(clicked))


def precision_at_k(rankings: Sequence[Sequence[str]], clicked: Sequence[set[str]], k: int) -> PrecisionAtK:
    """Mean Prec@K over users with a non-empty C (the skipped ones are counted)."""
    if len(rankings) != len(clicked):
        raise ValueError(f"{len(rankings)} rankings but {len(clicked)} clicked-tag sets")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = [user_precision(r, c, k) for r, c in zip(rankings, clicked, strict=True) if c]
    skipped = len(clicked) - len(scores)
    return PrecisionAtK(
        k=k, value=sum(scores) / len(scores) if scores else 0.0, users=len(scores), skipped_users=skipped
    )
