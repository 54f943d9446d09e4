"""The Euclidean transform (`index.mips`): an approximate index of transformed rows answers inner-product
queries, exactly when it probes everything and far better than inner-product cells when it probes few."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from index import TagIndex, build_index
from index.build import make_index
from index.factory import IndexPlan
from index.infos import INDEX_FILE
from index.mips import inner_products, transform_queries, transform_rows
from model_export.bundle import load_bundle


def _biased_rows(n: int, dim: int, seed: int) -> np.ndarray:
    """Tag rows [o_t, b_t] as a default-model bundle's index holds them: small vectors, a bias spread
    far wider (log popularity), so that the rows' norms differ by an order of magnitude."""
    rng = np.random.default_rng(seed)
    o = rng.standard_normal((n, dim)).astype(np.float32) * 0.1
    b = np.log1p(rng.zipf(1.3, n).clip(max=10_000)).astype(np.float32)
    return np.concatenate([o, b[:, None]], axis=1)


def test_distances_of_transformed_rows_rank_and_score_as_inner_products() -> None:
    x = _biased_rows(2_000, 8, seed=1)
    xt, top = transform_rows(x)
    assert np.allclose(np.linalg.norm(xt, axis=1), np.sqrt(top), rtol=1e-5)  # every row on one sphere
    q = np.concatenate([np.random.default_rng(2).standard_normal((20, 8)) * 3, np.ones((20, 1))], 1).astype(np.float32)
    flat = faiss.IndexFlatL2(xt.shape[1])
    flat.add(xt)
    d, i = flat.search(transform_queries(q), 50)
    exact = q @ x.T
    want = np.argsort(-exact, axis=1, kind="stable")[:, :50]
    assert (np.sort(i, 1) == np.sort(want, 1)).mean() > 0.99  # the same top-50 (but ties at the cut)
    got = inner_products(q, d, top)
    assert np.allclose(got, np.take_along_axis(exact, i, 1), atol=1e-4 * (1 + top))


def test_an_ivf_index_of_transformed_rows_finds_biased_top_k_probing_few_cells() -> None:
    """The reason for the transform: the same IVF at the same small nprobe, over the raw rows with
    inner-product cells and over the transformed rows with L2 cells."""
    x = _biased_rows(20_000, 16, seed=3)
    q = np.concatenate([np.random.default_rng(4).standard_normal((200, 16)), np.ones((200, 1))], 1).astype(np.float32)
    exact = TagIndex.exact(x, n_reserved=0).search(q, 50)[1]
    plan = IndexPlan("ivf", "IVF256,Flat", "nprobe")
    transformed = make_index(plan, x, np.random.default_rng(0), use_gpu=False)
    raw = faiss.index_factory(x.shape[1], plan.factory, faiss.METRIC_INNER_PRODUCT)
    raw.train(x)
    raw.add(x)
    recall = {}
    for name, index in (("transformed", transformed), ("raw", TagIndex(raw, n_reserved=0))):
        faiss.ParameterSpace().set_index_parameter(index.index, "nprobe", 16)  # of 256 cells
        ids = index.search(q, 50)[1]
        recall[name] = np.mean([len(set(a) & set(b)) / 50 for a, b in zip(ids, exact, strict=True)])
    assert transformed.max_sq_norm is not None and transformed.index.metric_type == faiss.METRIC_L2
    # the raw index's cells hold the high-bias rows in a few cells that [u, 1] does not point at
    assert recall["transformed"] >= 0.95 and recall["raw"] <= 0.5, recall
    faiss.ParameterSpace().set_index_parameter(transformed.index, "nprobe", 256)  # every cell: exact
    scores, ids = transformed.search(q, 50)
    exact_scores = TagIndex.exact(x, n_reserved=0).search(q, 50)[0]
    assert np.allclose(scores, exact_scores, atol=1e-3)


def test_a_built_ivf_index_holds_transformed_rows_and_loads_as_one(bundle_copy: Path) -> None:
    infos = build_index(bundle_copy, "ivf", target_recall=0.95)
    bundle = load_bundle(bundle_copy)
    stored = faiss.read_index(str(bundle_copy / INDEX_FILE))
    assert infos.max_sq_norm is not None and stored.metric_type == faiss.METRIC_L2
    assert stored.d == bundle.index_dim + 1 and infos.dim == bundle.index_dim
    index = TagIndex.load(bundle_copy)
    assert index.max_sq_norm == infos.max_sq_norm and index.dim == bundle.index_dim
    assert build_index(bundle_copy, "flat").max_sq_norm is None  # exact search keeps the rows as they are
    assert TagIndex.load(bundle_copy).index.metric_type == faiss.METRIC_INNER_PRODUCT
