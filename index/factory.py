"""Which index for how many tags: small pure functions of the size, described by faiss factory strings.

    flat   "Flat"            exact inner-product search (IndexFlatIP)
    ivf    "IVF{n},Flat"     inverted lists over k-means cells; search parameter nprobe
    hnsw   "HNSW32"          graph search; search parameter efSearch

`auto` is exact search up to FLAT_MAX_TAGS tags (exact costs O(n) per query and needs no tuning)
or whenever a GPU is present (a GPU scans millions of vectors per query at once); above that on the
CPU, IVF. What each costs at 1M tags: docs/performance.md, "Index: 1M tags" (`utpm bench index`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

IndexKind = Literal["flat", "ivf", "hnsw"]
KINDS: tuple[str, ...] = ("auto", "flat", "ivf", "hnsw")

FLAT_MAX_TAGS = 100_000
MIN_POINTS_PER_LIST = 39  # faiss warns below 39 training points per k-means centroid
HNSW_M = 32


def ivf_nlist(n: int) -> int:
    """Number of IVF lists for n vectors: the power of two nearest 4 sqrt(n) (autofaiss'
    `get_optimal_nb_clusters`), capped so that k-means has MIN_POINTS_PER_LIST points per list.

    1M -> 4096, 100k -> 1024, 20k -> 512, 1k -> 16.
    """
    if n < 1:
        raise ValueError(f"need at least 1 vector, got {n}")
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    cap = max(1, n // MIN_POINTS_PER_LIST)
    while nlist > cap:
        nlist //= 2
    return max(1, nlist)


def choose_kind(n_tags: int, gpus: int = 0) -> IndexKind:
    """`auto`: exact when n_tags <= FLAT_MAX_TAGS or a GPU is present, else IVF."""
    return "flat" if n_tags <= FLAT_MAX_TAGS or gpus > 0 else "ivf"


@dataclass(frozen=True)
class IndexPlan:
    """A chosen index: kind, faiss factory string, and the name of its search parameter (or None)."""

    kind: IndexKind
    factory: str
    search_param: str | None

    @property
    def needs_training(self) -> bool:
        return self.kind == "ivf"


def plan_index(kind: str, n_tags: int, gpus: int = 0) -> IndexPlan:
    """The plan for `kind` ("auto" | "flat" | "ivf" | "hnsw") over n_tags vectors."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; valid: {', '.join(KINDS)}")
    chosen: IndexKind = choose_kind(n_tags, gpus) if kind == "auto" else kind  # type: ignore[assignment]
    if chosen == "flat":
        return IndexPlan("flat", "Flat", None)
    if chosen == "ivf":
        return IndexPlan("ivf", f"IVF{ivf_nlist(n_tags)},Flat", "nprobe")
    return IndexPlan("hnsw", f"HNSW{HNSW_M}", "efSearch")


def search_param_candidates(plan: IndexPlan, n_tags: int, k: int) -> list[int]:
    """Increasing values of the plan's search parameter to try when tuning for recall.

    IVF: nprobe 1, 2, 4, ... up to the number of lists (all lists = exact). HNSW: efSearch from k
    (it must be >= k to return k results) doubling up to 64 k.
    """
    if plan.kind == "ivf":
        nlist = int(plan.factory.split(",")[0][3:])
        return [2**i for i in range(int(math.log2(nlist)) + 1)]
    if plan.kind == "hnsw":
        return [k * 2**i for i in range(7)]
    return []
