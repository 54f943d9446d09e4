"""Index benchmark: exact vs the chosen ANN index vs hnswlib, side by side on structured data.

One run generates `n_tags` structured tag vectors and user queries (`structured.py`), computes
the exact top-k of every query with a flat inner-product index, builds the ANN index that `auto`
would choose at this size (IVF on the CPU; at <= 100k tags `auto` would pick exact search, so the
benchmark builds IVF anyway to have something to compare), tunes its search parameter on separate
tuning queries to reach `target_recall`, and measures recall and batched queries per second on the
evaluation queries. hnswlib is then built on the same vectors and its `ef` raised until its
recall@k on the tuning queries reaches faiss' measured recall, and measured the same way: the
peers are compared at equal-or-better recall. All engines get the same thread count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from index.build import TRAIN_POINTS_PER_LIST, make_index, tune
from index.evaluation import recall_at_k
from index.factory import plan_index
from index.gpu import gpu_count, to_device
from index.structured import StructuredSpec, structured_queries, structured_tags
from index.tag_index import TagIndex, apply_search_params
from model_export.session import available_cpus

HNSW_M = 16
HNSW_EF_CONSTRUCTION = 100
HNSW_EF_MAX_FACTOR = 64  # stop raising ef at 64 k


def _timed_search(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, min_seconds: float = 1.0, max_repeats: int = 5
) -> tuple[np.ndarray, float]:
    """(ids, queries per second): one batched search of all queries, repeated until `min_seconds`
    have passed (at most `max_repeats` times); the median rate counts, so a hiccup on these shared
    CPUs does not decide a figure."""
    rates: list[float] = []
    spent = 0.0
    ids = np.empty(0)
    while not rates or (spent < min_seconds and len(rates) < max_repeats):
        t0 = time.perf_counter()
        ids = search(queries)
        dt = time.perf_counter() - t0
        spent += dt
        rates.append(len(queries) / dt)
    return ids, float(np.median(rates))


def _exact(x: np.ndarray, eval_q: np.ndarray, tune_q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact top-k ids of the evaluation (timed) and tuning queries; the flat index is freed on return."""
    exact = TagIndex.exact(x, n_reserved=0)  # synthetic rows have no padding / OOV rows
    eval_ids, qps = _timed_search(lambda q: exact.search(q, k)[1], eval_q)
    return eval_ids, exact.search(tune_q, k)[1], qps


def _exact_on_gpu(x: np.ndarray, eval_q: np.ndarray, eval_exact: np.ndarray, k: int) -> dict[str, float] | None:
    """Exact search on the GPU (when the faiss build has one): q/s, and its agreement with the CPU."""
    if gpu_count() == 0:
        return None
    flat, on_gpu = to_device(faiss.IndexFlatIP(x.shape[1]))
    if not on_gpu:
        return None
    flat.add(x)
    gpu = TagIndex(flat, n_reserved=0, on_gpu=True)
    ids, qps = _timed_search(lambda q: gpu.search(q, k)[1], eval_q)
    # Ties and float summation order can swap equal scores: recall, not equality, is the check.
    return {"qps": round(qps, 1), f"recall@{k}_vs_cpu_exact": round(recall_at_k(eval_exact, ids, k), 5)}


def _hnswlib_peer(
    x: np.ndarray,
    tune_q: np.ndarray,
    tune_exact: np.ndarray,
    eval_q: np.ndarray,
    eval_exact: np.ndarray,
    k: int,
    target: float,
    threads: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    import hnswlib

    say(f"building hnswlib (M={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION})")
    t0 = time.perf_counter()
    h = hnswlib.Index(space="ip", dim=x.shape[1])
    h.init_index(max_elements=len(x), M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, random_seed=0)
    h.add_items(x, np.arange(len(x)), num_threads=threads)
    build_s = time.perf_counter() - t0
    sweep: list[dict[str, float]] = []

    def reaches_target(ef: int) -> bool:
        """Recall@k on the tuning queries at this ef (recorded in `sweep`): at least `target`?"""
        h.set_ef(ef)
        labels, qps = _timed_search(lambda q: h.knn_query(q, k=k, num_threads=threads)[0], tune_q, 0.0)
        r = recall_at_k(tune_exact, labels.astype(np.int64), k)
        sweep.append({"ef": ef, f"recall@{k}": round(r, 5), "qps": round(qps, 1)})
        return r >= target

    ef = k
    reached = False
    while ef <= HNSW_EF_MAX_FACTOR * k:
        if reaches_target(ef):
            reached = True
            break
        ef *= 2
    # Refine between the last two powers of two: the smallest ef that still reaches the target.
    if reached and ef > k:
        lo, hi = ef // 2, ef
        for step in (0.25, 0.5, 0.75):
            trial = int(lo + step * (hi - lo))
            if reaches_target(trial):
                ef = trial
                break
    h.set_ef(ef)
    labels, qps = _timed_search(lambda q: h.knn_query(q, k=k, num_threads=threads)[0], eval_q)
    labels = labels.astype(np.int64)
    return {
        "library": f"hnswlib {getattr(hnswlib, '__version__', '')}".strip(),
        "params": {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef": ef},
        "qps": round(qps, 1),
        "recall@10": round(recall_at_k(eval_exact, labels, min(10, k)), 5),
        f"recall@{k}": round(recall_at_k(eval_exact, labels, k), 5),
        "build_s": round(build_s, 2),
        "index_mb": round(h.index_file_size() / 1e6, 1),
        "matched_faiss_recall_on_tuning_queries": reached,
        "sweep": sweep,
    }


def bench_index(
    n_tags: int = 1_000_000,
    dim: int = 128,
    n_queries: int = 2000,
    *,
    kind: str = "auto",
    k: int = 50,
    target_recall: float = 0.95,
    tuning_queries: int = 500,
    peers: bool = True,
    threads: int | None = None,
    seed: int = 0,
    spec: StructuredSpec | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring) and return its figures as a JSON-able dict."""
    say = progress or (lambda _msg: None)
    if n_tags < 1000 or dim < 2 or n_queries < 10 or k < 1 or k > n_tags:
        raise ValueError(
            f"need tags >= 1000, dim >= 2, queries >= 10, 1 <= k <= tags; got {n_tags}, {dim}, {n_queries}, {k}"
        )
    if kind not in ("auto", "ivf", "hnsw"):
        raise ValueError(f"the benchmark compares an approximate index: kind must be auto, ivf or hnsw, not {kind!r}")
    spec = spec or StructuredSpec()
    threads = threads or available_cpus()
    faiss.omp_set_num_threads(threads)
    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(seed)
    t_start = time.perf_counter()

    say(f"generating {n_tags:,} structured tag vectors (dim {dim}) and {n_queries + tuning_queries:,} queries")
    tags = structured_tags(n_tags, dim, rng, spec)
    x = tags.vectors
    queries = structured_queries(tags, n_queries + tuning_queries, rng, spec)
    tune_q, eval_q = queries[:tuning_queries], queries[tuning_queries:]
    generate_s = time.perf_counter() - t_start

    say("exact search (IndexFlatIP)")
    eval_exact, tune_exact, exact_qps = _exact(x, eval_q, tune_q, k)
    exact_mb = x.nbytes / 1e6
    exact_gpu = _exact_on_gpu(x, eval_q, eval_exact, k)

    plan = plan_index(kind, n_tags, gpu_count())
    if plan.kind == "flat":
        plan = plan_index("ivf", n_tags)
    say(f"building {plan.factory}")
    t0 = time.perf_counter()
    ann = make_index(plan, x, rng, None)
    build_s = time.perf_counter() - t0
    params, met, table = tune(ann, plan, n_tags, tune_q, tune_exact, k, target_recall)
    apply_search_params(ann.index, params, ann.on_gpu)
    on_gpu, index = ann.on_gpu, ann.index
    ann_ids, ann_qps = _timed_search(lambda q: ann.search(q, k)[1], eval_q)
    recall_small = recall_at_k(eval_exact, ann_ids, min(10, k))
    recall_k = recall_at_k(eval_exact, ann_ids, k)
    index_mb = faiss.serialize_index(faiss.index_gpu_to_cpu(index) if on_gpu else index).size / 1e6

    report: dict[str, Any] = {
        "tags": n_tags,
        "dim": dim,
        "queries": n_queries,
        "tuning_queries": tuning_queries,
        "k": k,
        "threads": threads,
        "gpu": on_gpu,
        "data": spec.describe(n_tags),
        "exact_qps": round(exact_qps, 1),
        "exact_mb": round(exact_mb, 1),
        "exact_gpu": exact_gpu,  # None without a GPU; then exact_qps is the CPU's
        "ann_factory": plan.factory,
        "ann_params": params,
        "ann_qps": round(ann_qps, 1),
        "speedup": round(ann_qps / exact_qps, 1),
        "recall@10": round(recall_small, 5),
        f"recall@{k}": round(recall_k, 5),
        "target_recall": target_recall,
        "target_met_on_tuning_queries": met,
        "build_s": round(build_s, 2),
        "train_points": min(n_tags, TRAIN_POINTS_PER_LIST * int(plan.factory.split(",")[0][3:]))
        if plan.kind == "ivf"
        else 0,
        "index_mb": round(index_mb, 1),
        "tuning": [{key: round(v, 5) if isinstance(v, float) else v for key, v in row.items()} for row in table],
        "faiss_version": faiss.__version__,
    }
    if peers:
        peer = _hnswlib_peer(x, tune_q, tune_exact, eval_q, eval_exact, k, recall_k, threads, say)
        report["peers"] = {"hnswlib": peer}
        gap = peer[f"recall@{k}"] - recall_k
        report["hnswlib_recall_minus_faiss"] = round(gap, 5)
        # "Equal recall" allows half a point of sampling noise between tuning and evaluation queries.
        report["faiss_ahead_at_equal_recall"] = bool(gap >= -0.005 and ann_qps > peer["qps"])
    report["timings_s"] = {"generate": round(generate_s, 1), "total": round(time.perf_counter() - t_start, 1)}
    # These CPUs are shared: the 1-minute load average says how busy the machine was.
    report["load_average_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    return report
