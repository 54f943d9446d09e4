"""The one tie rule of the default model's rankings (`utpm.ranking`): equal scores by the lower id."""

from __future__ import annotations

import numpy as np
import pytest

from utpm import ranking
from utpm.ranking import top_k


def _by_rule(row: np.ndarray, k: int) -> list[int]:
    return np.lexsort((np.arange(len(row)), -row))[:k].tolist()  # by score, then by the lower column


@pytest.mark.parametrize("seed", range(5))
def test_top_k_orders_equal_scores_by_the_lower_column_even_at_the_kth_place(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(50, 40)).astype(np.float32)  # many ties, also at the k-th place
    scores[:, :2] = -np.inf  # as the reserved ids are
    for k in (1, 3, 10, 38):
        got = top_k(scores, k)
        assert got.shape == (50, k) and got.dtype == np.int64
        assert got.tolist() == [_by_rule(row, k) for row in scores]


def test_top_k_of_more_than_there_is_and_of_nothing() -> None:
    s = np.asarray([[1.0, 2.0, 2.0]], np.float32)
    assert top_k(s, 5).tolist() == [[1, 2, 0]]
    assert top_k(s, 0).shape == (1, 0)
    assert top_k(np.zeros((0, 3), np.float32), 2).shape == (0, 2)


def test_candidates_from_several_sources_are_ordered_by_score_then_id() -> None:
    scores = np.asarray([[1.0, 3.0, 1.0, -np.inf, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    ids = np.asarray([[9, 7, 4, -1, 5], [8, 6, 7, 3, 9]])
    assert top_k(scores, 5, ids=ids).tolist() == [[4, 1, 2, 0, 3], [3, 1, 2, 0, 4]]
    assert top_k(scores, 2, ids=ids).tolist() == [[4, 1], [3, 1]]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("extra", [37, 4 * ranking.BLOCK_WIDTH * 10 + 5])
def test_wide_rows_bounded_by_block_maxima_rank_as_a_full_partition_does(seed: int, extra: int) -> None:
    """Rows of BLOCKED_MIN_COLUMNS or more take the block-maxima bound and search only the blocks
    that reach it: the same columns, ties and rows with fewer finite scores than k included, as the
    rule. Blocks of BLOCK_WIDTH where the row is wide enough for them, else 4k blocks."""
    rng = np.random.default_rng(seed)
    m = ranking.BLOCKED_MIN_COLUMNS + extra  # with a tail beyond the last whole block
    scores = rng.integers(0, 50, size=(12, m)).astype(np.float32)  # ties everywhere, at the k-th place too
    scores[:, :2] = -np.inf
    scores[3, 100:] = -np.inf  # a row with 98 finite scores
    scores[5] = 7.0  # one value throughout
    scores[7, -1] = 1000.0  # the best score in the tail
    scores[8:] = rng.normal(size=(4, m))  # no ties: few blocks reach the bound
    scores[9, 5000:5100] = 3.0 + rng.integers(0, 3, 100)  # the best in one block, tied
    for k in (1, 10, 120):
        got = top_k(scores, k)
        assert got.tolist() == [_by_rule(row, k) for row in scores], k
