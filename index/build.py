"""Build a bundle's tag index, tune its search parameter for recall, and record what it measured.

`build_index(bundle, kind)` writes `index.faiss` and `index_infos.json` into the bundle directory.
Recall is always measured against exact inner-product search (a flat index over the same
embeddings), through `TagIndex.search`, i.e. with padding and OOV excluded as serving does.

Queries: the held-out users' embeddings the export saved (`heldout_users.npy`), topped up to
MIN_QUERIES with `structured.queries_near` queries when there are fewer. For an approximate index
the queries are split in two: the search parameter (nprobe / efSearch) is the smallest whose
recall@50 on the first half reaches `target_recall`, and the recall reported is measured on the
second half, so the figure is not the one the choice was tuned on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import faiss
import numpy as np

from index.errors import TagIndexError
from index.evaluation import recall_at_k
from index.factory import IndexPlan, plan_index, search_param_candidates
from index.gpu import gpu_count, to_cpu, to_device
from index.infos import INDEX_FILE, INFOS_FILE, IndexInfos
from index.mips import transform_rows
from index.structured import queries_near
from index.tag_index import TagIndex, apply_search_params
from index.two_stage import TwoStageResult, TwoStageSearch
from model_export.bundle import Bundle, load_bundle
from model_export.errors import BundleError
from model_export.manifest import METRIC

DEFAULT_TARGET_RECALL = 0.95
MIN_QUERIES = 500
TRAIN_POINTS_PER_LIST = 64  # k-means sample size per IVF list: enough for stable cells, fast to train
K_SMALL, K_LARGE = 10, 50


def make_index(
    plan: IndexPlan, x: np.ndarray, rng: np.random.Generator, use_gpu: bool | None, n_reserved: int = 0
) -> TagIndex:
    """Build (train if needed, add) the planned index over x (n, U) float32. An approximate one holds
    the rows transformed for nearest-neighbour search (index.mips), an exact one the rows as they are."""
    max_sq_norm = None
    if plan.search_param is not None:
        x, max_sq_norm = transform_rows(x)
    metric = faiss.METRIC_INNER_PRODUCT if max_sq_norm is None else faiss.METRIC_L2
    index = faiss.index_factory(x.shape[1], plan.factory, metric)
    if plan.kind == "hnsw":
        cast(Any, index).hnsw.efConstruction = 80  # faiss' default 40 builds a visibly weaker graph for IP search
    index, on_gpu = to_device(index, use_gpu)
    if plan.needs_training:
        nlist = int(plan.factory.split(",")[0][3:])
        n_train = min(len(x), TRAIN_POINTS_PER_LIST * nlist)
        sample = x[np.sort(rng.choice(len(x), n_train, replace=False))] if n_train < len(x) else x
        index.train(sample)
    index.add(x)
    return TagIndex(index, n_reserved=n_reserved, on_gpu=on_gpu, max_sq_norm=max_sq_norm)


def measure(index: TagIndex, queries: np.ndarray, exact_ids: np.ndarray, k: int) -> dict[str, float]:
    """recall@10, recall@k and batched queries per second of `index` against `exact_ids` (B, k)."""
    t0 = time.perf_counter()
    _, ids = index.search(queries, k)
    seconds = time.perf_counter() - t0
    return {
        f"recall@{min(K_SMALL, k)}": recall_at_k(exact_ids, ids, min(K_SMALL, k)),
        f"recall@{k}": recall_at_k(exact_ids, ids, k),
        "qps": len(queries) / seconds if seconds > 0 else float("inf"),
    }


def tune(
    index: TagIndex,
    plan: IndexPlan,
    n_tags: int,
    queries: np.ndarray,
    exact_ids: np.ndarray,
    k: int,
    target: float,
) -> tuple[dict[str, int], bool, list[dict[str, float]]]:
    """The smallest search-parameter value reaching recall@k >= target -> (params, met, table)."""
    if plan.search_param is None:
        return {}, True, []
    table: list[dict[str, float]] = []
    best: dict[str, int] = {}
    for value in search_param_candidates(plan, n_tags, k):
        apply_search_params(index.index, {plan.search_param: value}, index.on_gpu)
        m = measure(index, queries, exact_ids, k)
        table.append({plan.search_param: value, f"recall@{k}": m[f"recall@{k}"], "qps": m["qps"]})
        best = {plan.search_param: value}
        if m[f"recall@{k}"] >= target:
            return best, True, table
    return best, False, table


def evaluation_queries(bundle: Bundle, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Held-out user embeddings, topped up with structured queries to MIN_QUERIES -> ((Q, U), source)."""
    parts, source = [], {}
    if bundle.heldout_users is not None and len(bundle.heldout_users):
        parts.append(np.asarray(bundle.heldout_users, dtype=np.float32))
        source["heldout_users"] = len(parts[0])
    have = sum(len(p) for p in parts)
    if have < MIN_QUERIES:
        parts.append(queries_near(bundle.embeddings, MIN_QUERIES - have, rng))
        source["structured_near_tags"] = MIN_QUERIES - have
    queries = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    return queries, {"count": len(queries), "sources": source}


def two_stage_search(
    bundle: Bundle, index: TagIndex, u: np.ndarray, hist_ids: np.ndarray, hist_g: np.ndarray, k: int
) -> TwoStageResult:
    """The service's search (`index.two_stage.TwoStageSearch`) for users u (B, U) with history tags
    (B, Hh) and their g (0 = padding) -> ids, scores (B, k), -1 / -inf padded, and who needed the index."""
    return TwoStageSearch(bundle, index).search(u, hist_ids, hist_g, k)


def two_stage_recall(bundle: Bundle, index: TagIndex, k: int) -> dict[str, Any] | None:
    """Recall@10 and @k of `two_stage_search` against exact final scores over every tag, on the
    held-out users the export saved with their history (heldout_history.npz); None without them."""
    from model_export.manifest import HELDOUT_HISTORY_FILE
    from model_export.scorer import exact_top_k, scores_at

    path = bundle.path / HELDOUT_HISTORY_FILE
    if bundle.heldout_users is None or bundle.tag_bias is None or not path.is_file():
        return None
    u = np.asarray(bundle.heldout_users, np.float32)
    with np.load(path) as f:
        hist_ids, hist_g = f["hist_ids"], f["hist_g"]
    table, bias = bundle.embeddings, np.asarray(bundle.tag_bias)
    _, exact_scores = exact_top_k(u, table, bias, hist_ids, hist_g, k)
    t0 = time.perf_counter()
    found = two_stage_search(bundle, index, u, hist_ids, hist_g, k)
    seconds = time.perf_counter() - t0
    got = found.ids
    got_scores = scores_at(u, table, bias, hist_ids, hist_g, got)  # exact final scores of what was returned

    def recall(n: int) -> float:
        # a returned tag counts when its exact score reaches the exact n-th best: tags tied at the cut
        # (many, when the model is near its popularity start) are all right answers
        kth = exact_scores[:, n - 1 : n] - 1e-5 * np.maximum(1.0, np.abs(exact_scores[:, n - 1 : n]))
        return float(np.mean(np.minimum((got_scores[:, :n] >= kth).sum(1), n) / n)) if len(u) else 1.0

    return {
        f"recall@{min(K_SMALL, k)}": round(recall(min(K_SMALL, k)), 5),
        f"recall@{k}": round(recall(k), 5),
        "recall_definition": "share of the returned top-k whose exact final score reaches the exact k-th best",
        "users": len(u),
        "users_are": bundle.manifest.parity.get("inputs"),  # the export's parity users: test, trained or synthetic
        # the rest were settled by the popular tags' bound without searching the index
        "index_searched_share": round(float(found.searched.mean()), 5) if len(u) else 0.0,
        "history_tags_mean": round(float((hist_ids > 1).sum(1).mean()), 2) if len(u) else 0.0,
        "users_per_s": round(len(u) / seconds, 1) if seconds > 0 else None,
        "against": "exact u . o_t + b_t + g(phi) over every tag",
    }


def build_index(
    bundle: Bundle | str | Path,
    kind: str = "auto",
    *,
    target_recall: float = DEFAULT_TARGET_RECALL,
    use_gpu: bool | None = None,
    seed: int = 0,
    queries: np.ndarray | None = None,
    progress: Callable[[str], None] | None = None,
) -> IndexInfos:
    """Build the tag index of `bundle` ("auto" | "flat" | "ivf" | "hnsw"), write it into the bundle
    directory with `index_infos.json`, and return the infos (recall@10/@50 against exact search).

    `queries` (Q, U) replaces the default tuning and evaluation queries (the bundle's held-out
    users): e.g. users shaped like a converged model's when the bundle's tower is under-trained."""
    say = progress or (lambda _msg: None)
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    if not isinstance(bundle, Bundle):
        try:
            bundle = load_bundle(bundle)
        except BundleError as e:
            raise TagIndexError(str(e)) from None
    if bundle.metric != METRIC:  # load_bundle refuses this already; the index depends on it
        raise TagIndexError(f"bundle metric {bundle.metric!r} is not {METRIC!r}")
    rng = np.random.default_rng(seed)
    x = bundle.index_table()  # (T, U) or, bias folded in, (T, U + 1); read into memory once
    n_tags = len(x)
    plan = plan_index(kind, n_tags, gpu_count() if use_gpu is not False else 0)
    n_reserved = len(bundle.reserved_tag_ids)
    k = min(K_LARGE, n_tags - n_reserved)
    if k < 1:
        raise TagIndexError(f"bundle has {n_tags} tag rows, none beyond the {n_reserved} reserved ones")

    say(f"building {plan.factory} over {n_tags:,} x {x.shape[1]} embeddings")
    t0 = time.perf_counter()
    index = make_index(plan, x, rng, use_gpu, n_reserved)
    build_seconds = time.perf_counter() - t0

    say("measuring recall against exact search")
    if queries is None:
        queries, query_info = evaluation_queries(bundle, rng)
    else:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        query_info = {"count": len(queries), "sources": {"given": len(queries)}}
    if queries.shape[1] == bundle.dim:
        queries = bundle.index_queries(queries)  # [u, 1] . [o_t, b_t] when the bias is folded in
    _, exact_ids = TagIndex.exact(x, n_reserved).search(queries, k)
    if plan.search_param is not None:
        tune_rows, eval_rows = np.arange(0, len(queries), 2), np.arange(1, len(queries), 2)
        query_info["tuned_on"], query_info["evaluated_on"] = "even rows", "odd rows"
    else:
        tune_rows = eval_rows = np.arange(len(queries))
        query_info["evaluated_on"] = "all"
    params, met, table = tune(index, plan, n_tags, queries[tune_rows], exact_ids[tune_rows], k, target_recall)
    apply_search_params(index.index, params, index.on_gpu)
    result = measure(index, queries[eval_rows], exact_ids[eval_rows], k)
    two_stage = None
    if bundle.has_history:
        say("measuring the two-stage search (ANN + history tags) against exact final scores")
        two_stage = two_stage_recall(bundle, index, k)

    cpu_index = to_cpu(index.index, index.on_gpu)
    # Infos go first so that a crash in between leaves no infos rather than stale ones.
    (bundle.path / INFOS_FILE).unlink(missing_ok=True)
    tmp = bundle.path / f".{INDEX_FILE}.tmp"
    faiss.write_index(cpu_index, str(tmp))
    os.replace(tmp, bundle.path / INDEX_FILE)
    infos = IndexInfos(
        bundle_version=bundle.version,
        dim=bundle.index_dim,
        metric=METRIC,
        kind=plan.kind,
        factory=plan.factory,
        ntotal=index.ntotal,
        params=params,
        build_seconds=round(build_seconds, 3),
        memory_bytes=int(faiss.serialize_index(cpu_index).size),
        recall={key: round(v, 5) for key, v in result.items() if key.startswith("recall@")},
        queries=query_info,
        target_recall=target_recall if plan.search_param is not None else None,
        target_met=met if plan.search_param is not None else None,
        search_qps=round(result["qps"], 1),
        tuning=table,
        gpu=index.on_gpu,
        two_stage=two_stage,
        max_sq_norm=index.max_sq_norm,
        faiss_version=faiss.__version__,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    infos.write(bundle.path)
    return infos
