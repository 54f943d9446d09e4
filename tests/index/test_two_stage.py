"""The default model's served search: the popular tags and the history tags scored exactly, the
index only for users the popular tags' bound does not settle; the result is the exact top-k."""

from __future__ import annotations

import numpy as np
import pytest

from index.tag_index import TagIndex
from index.two_stage import TwoStageSearch
from model_export.bundle import load_bundle
from model_export.scorer import exact_top_k, scores_at


def _heldout(bundle_path):
    b = load_bundle(bundle_path)
    with np.load(bundle_path / "heldout_history.npz") as f:
        hist_ids, hist_g = f["hist_ids"], f["hist_g"]
    u = np.asarray(b.heldout_users, np.float32)
    return b, u, hist_ids, hist_g


def _tie_with_the_first_tag_outside(bundle_path, m: int):
    """(bundle, b_t, the first tag outside the m most popular, a later tag h whose g can put its final
    score exactly on that tag's bias in float32)."""
    b = load_bundle(bundle_path)
    bias = np.asarray(b.tag_bias, np.float32)
    order = 2 + np.argsort(-bias[2:], kind="stable")
    first_out = int(order[m])
    target = bias[first_out]
    h = next(
        int(t) for t in order[m + 1 :] if t > first_out and np.float32(bias[t]) + np.float32(target - bias[t]) == target
    )
    return b, bias, first_out, h


@pytest.mark.parametrize("popular", [1, 5, 40, 100_000])
def test_the_search_returns_the_exact_top_k_whoever_it_settles(hist_bundle, popular: int) -> None:
    b, u, hist_ids, hist_g = _heldout(hist_bundle)
    search = TwoStageSearch(b, TagIndex.load(b), popular=popular)
    found = search.search(u, hist_ids, hist_g, 10)
    _, best = exact_top_k(u, b.embeddings, np.asarray(b.tag_bias), hist_ids, hist_g, 10)
    got = scores_at(u, b.embeddings, np.asarray(b.tag_bias), hist_ids, hist_g, found.ids)
    np.testing.assert_allclose(found.scores, got, rtol=1e-5, atol=1e-4)  # the scores returned are the final ones
    np.testing.assert_allclose(found.scores, best, rtol=1e-5, atol=1e-4)  # and they are the exact top-10's
    assert len(set(found.ids[0].tolist())) == 10 and (found.ids >= 2).all()
    if popular >= len(b.embeddings):  # every tag is a candidate: never a reason to search
        assert not found.searched.any()


def test_the_bound_settles_users_once_enough_popular_tags_are_candidates(hist_bundle) -> None:
    """The test bundle's model kept its start (tag vectors zero: s = b_t + g), so the bound is the
    bias of the first tag outside the candidates: past the 10th most popular tag's ties most users are
    settled without the index (not all: a popular history tag with a negative g scores below its
    bias); with one popular tag and fewer candidates than k, users are sent to it."""
    b, u, hist_ids, hist_g = _heldout(hist_bundle)
    bias = np.asarray(b.tag_bias)
    order = 2 + np.argsort(-bias[2:], kind="stable")
    m = next(i for i in range(10, len(order)) if bias[order[i]] < bias[order[9]] - 1e-3)
    assert m < len(order) // 2
    settled = TwoStageSearch(b, TagIndex.load(b), popular=m).search(u, hist_ids, hist_g, 10)
    assert settled.searched.mean() < 0.5
    k = max(10, int((hist_ids >= 2).sum(1).min()) + 2)  # more candidates than some user has
    searched = TwoStageSearch(b, TagIndex.load(b), popular=1).search(u, hist_ids, hist_g, k)
    assert searched.searched.any()
    np.testing.assert_allclose(settled.scores, searched.scores[:, :10], rtol=1e-5, atol=1e-4)  # the same top-10


@pytest.mark.parametrize("popular", [40, 100_000])
def test_settled_users_get_the_exact_ids_with_ties_by_the_lower_id(hist_bundle, popular: int) -> None:
    """The test bundle's model kept its start (tag vectors zero), so many tags tie on b_t + g: the
    search and the exact scan both order them by the lower id (utpm.ranking), to the same list."""
    b, u, hist_ids, hist_g = _heldout(hist_bundle)
    found = TwoStageSearch(b, TagIndex.load(b), popular=popular).search(u, hist_ids, hist_g, 10)
    ids, scores = exact_top_k(u, b.embeddings, np.asarray(b.tag_bias), hist_ids, hist_g, 10)
    assert (scores[:, :-1] == scores[:, 1:]).any()  # ties inside the top-10: the rule is exercised
    settled = ~found.searched
    assert settled.any()
    np.testing.assert_array_equal(found.ids[settled], ids[settled])


def test_a_tag_outside_the_candidates_that_ties_the_kth_sends_the_user_to_the_index(hist_bundle) -> None:
    """With u = 0 every score is b_t (+ g): a history tag scored exactly at the bias of the first tag
    outside the popular ones ties that tag, which has the lower id and so belongs in the top-k. The
    bound must not settle such a user: it goes to the index, and the result is the exact top-k."""
    b, bias, first_out, h = _tie_with_the_first_tag_outside(hist_bundle, m := 5)
    target = bias[first_out]
    u = np.zeros((1, b.embeddings.shape[1]), np.float32)
    hist_ids = np.asarray([[h]], np.int64)
    hist_g = np.asarray([[target - bias[h]]], np.float32)
    found = TwoStageSearch(b, TagIndex.load(b), popular=m).search(u, hist_ids, hist_g, m + 1)
    ids, _ = exact_top_k(u, b.embeddings, bias, hist_ids, hist_g, m + 1)
    assert first_out in ids[0].tolist() and h not in ids[0].tolist()  # the tie goes to the lower id
    assert found.searched[0]
    np.testing.assert_array_equal(found.ids, ids)


@pytest.mark.parametrize("k", [1, 10, 50, 5_000])
def test_the_linear_search_is_the_exact_top_k_without_u_or_the_index(hist_bundle, k: int) -> None:
    """A linear scorer's search (u . o_t = 0: b_t, + g on the history tags) gives the exact scan's
    ids, ties by the lower id, down to k beyond the vocabulary (padded with -1)."""
    b, u, hist_ids, hist_g = _heldout(hist_bundle)
    zero = np.zeros_like(u)
    bias = np.asarray(b.tag_bias, np.float32)
    found = TwoStageSearch(b, TagIndex.load(b)).search_linear(hist_ids, hist_g, k)
    kk = min(k, len(bias) - 2)
    ids, scores = exact_top_k(zero, np.zeros_like(b.embeddings), bias, hist_ids, hist_g, kk)
    np.testing.assert_array_equal(found.ids[:, :kk], ids)
    np.testing.assert_array_equal(found.scores[:, :kk], scores)
    assert (found.ids[:, kk:] == -1).all() and found.ids.shape == (len(u), k) and not found.searched.any()


def test_the_linear_search_gives_a_tie_at_the_kth_to_the_lower_id_outside_the_history(hist_bundle) -> None:
    """The case the bound sends to the index: a history tag scored exactly at the bias of a more
    popular tag outside the candidates of `search`. The linear search holds k + Hh popular tags, so it
    ranks the lower id first without the index."""
    b, bias, first_out, h = _tie_with_the_first_tag_outside(hist_bundle, m := 5)
    target = bias[first_out]
    hist_ids = np.asarray([[h, 0]], np.int64)
    hist_g = np.asarray([[target - bias[h], 0.0]], np.float32)
    found = TwoStageSearch(b, TagIndex.load(b), popular=m).search_linear(hist_ids, hist_g, m + 1)
    ids, _ = exact_top_k(np.zeros((1, b.dim), np.float32), np.zeros_like(b.embeddings), bias, hist_ids, hist_g, m + 1)
    assert first_out in ids[0].tolist() and h not in ids[0].tolist()
    np.testing.assert_array_equal(found.ids, ids)
