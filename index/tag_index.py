"""TagIndex: top-k tags for user embeddings by inner product, with a query-time block list.

Exclusion works by over-fetching and filtering: search k + |excluded| results, drop the excluded
ids, keep the first k. Chosen over faiss `SearchParameters(sel=IDSelectorNot(...))` because it
behaves the same on every index type (flat, IVF, HNSW) and on GPU indexes, which do not all accept
selectors, and it keeps the flat index's batched BLAS path. Its cost grows with the block list
(the search fetches that many more results), which suits the short per-user lists a profile
service sees; padding (0) and OOV (1) are always excluded. When an approximate index finds fewer
than k admissible results (a very long block list, or too few IVF cells probed), the rows are
padded with id -1 and score -inf.

An approximate index (IVF, HNSW) holds the rows transformed so that nearest by distance is
largest by inner product (`index.mips`; `max_sq_norm` set, faiss metric L2); `search` transforms the
queries and turns distances back into inner products. An exact index holds the rows as they are.

Thread safety: CPU faiss indexes support concurrent searches as long as nobody changes their
parameters, and the search parameter (nprobe / efSearch) is set once at load; GPU indexes do not,
so searches on a GPU index take a lock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np

from index.errors import IndexMismatchError, TagIndexError
from index.gpu import to_device
from index.infos import INDEX_FILE, INFOS_FILE, IndexInfos
from index.mips import inner_products, transform_queries
from model_export.bundle import Bundle, load_bundle
from model_export.errors import BundleError
from model_export.manifest import METRIC, RESERVED_TAG_IDS

Exclude = Iterable[int] | Sequence[Iterable[int]] | np.ndarray | None


def _exclusion_keys(exclude: Exclude, batch: int, lo: int, hi: int) -> np.ndarray:
    """The block list as sorted distinct keys row * hi + id, for the ids in [lo, hi) that a search can
    return. `exclude`: one iterable of ids for every row, one iterable per row, or a (B, H) array per
    row whose other ids (padding) are ignored. Keys, not per-row sets: one membership test per batch."""
    if exclude is None:
        return np.zeros(0, np.int64)
    if isinstance(exclude, np.ndarray) and exclude.ndim == 2:
        if len(exclude) != batch:
            raise ValueError(f"per-query exclusions: got {len(exclude)} lists for {batch} queries")
        ids = exclude.astype(np.int64, copy=False).ravel()
        row = np.repeat(np.arange(batch, dtype=np.int64), exclude.shape[1])
    else:
        items = list(exclude)
        if bool(items) and all(not isinstance(x, int | np.integer) for x in items):
            if len(items) != batch:
                raise ValueError(f"per-query exclusions: got {len(items)} lists for {batch} queries")
            per_row = [np.asarray(x if isinstance(x, np.ndarray) else list(x), np.int64).ravel() for x in items]
            ids = np.concatenate(per_row)
            row = np.repeat(np.arange(batch, dtype=np.int64), [len(x) for x in per_row])
        else:
            shared = np.asarray(items, np.int64)
            ids = np.tile(shared, batch)
            row = np.repeat(np.arange(batch, dtype=np.int64), len(shared))
    ok = (ids >= lo) & (ids < hi)
    return np.unique(row[ok] * hi + ids[ok])


def apply_search_params(index: faiss.Index, params: dict[str, int], on_gpu: bool = False) -> None:
    """Set nprobe / efSearch through faiss' ParameterSpace (the GPU flavour on a GPU index)."""
    space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, int(value))


class TagIndex:
    """Inner-product search over a bundle's tag embeddings (row i = tag id i).

    `search(u (B, U) float32, k)` -> (scores (B, k) float32, ids (B, k) int64), best first; ids
    below `n_reserved` (padding, OOV) and any caller-excluded id are never returned.
    """

    def __init__(
        self,
        index: faiss.Index,
        *,
        n_reserved: int = len(RESERVED_TAG_IDS),
        infos: IndexInfos | None = None,
        on_gpu: bool = False,
        max_sq_norm: float | None = None,
    ) -> None:
        if max_sq_norm is None and index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexMismatchError(
                f"index metric is faiss metric {index.metric_type}, not inner product "
                f"({faiss.METRIC_INNER_PRODUCT}): user-tag scores are u . t"
            )
        if max_sq_norm is not None and index.metric_type != faiss.METRIC_L2:
            raise IndexMismatchError(
                f"index metric is faiss metric {index.metric_type}, not L2 ({faiss.METRIC_L2}): "
                "an index of transformed rows (index.mips) is searched by distance"
            )
        self.index = index
        self.n_reserved = n_reserved
        self.infos = infos
        self.on_gpu = on_gpu
        self.max_sq_norm = max_sq_norm  # M of the rows' transform (index.mips), None: rows as they are
        self._lock: contextlib.AbstractContextManager[object] = threading.Lock() if on_gpu else contextlib.nullcontext()

    @property
    def dim(self) -> int:
        return int(self.index.d) - (self.max_sq_norm is not None)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def exact(cls, embeddings: np.ndarray, n_reserved: int = len(RESERVED_TAG_IDS)) -> TagIndex:
        """An exact (flat) index over `embeddings` (n, U), kept on the CPU: the yardstick of recall."""
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        flat = faiss.IndexFlatIP(x.shape[1])
        flat.add(x)
        return cls(flat, n_reserved=n_reserved)

    @classmethod
    def load(cls, bundle: Bundle | str | Path, *, use_gpu: bool | None = None) -> TagIndex:
        """Open the index built into a bundle directory, refusing one built for anything else.

        IndexMismatchError when the index's bundle version, dimension, metric or size differ from
        the bundle's; TagIndexError when the files are missing or unreadable.
        """
        if not isinstance(bundle, Bundle):
            try:
                bundle = load_bundle(bundle)
            except BundleError as e:
                raise TagIndexError(str(e)) from None
        infos = IndexInfos.read(bundle.path)
        rebuild = f"rebuild it with `utpm index build {bundle.path}`"
        if infos.bundle_version != bundle.version:
            raise IndexMismatchError(
                f"the index in {bundle.path} was built for bundle {infos.bundle_version}, "
                f"this bundle is {bundle.version}; {rebuild}"
            )
        if infos.metric != METRIC:
            raise IndexMismatchError(f"the index metric is {infos.metric!r}, the bundle's is {METRIC!r}; {rebuild}")
        if infos.dim != bundle.index_dim:
            raise IndexMismatchError(f"the index has dimension {infos.dim}, the bundle {bundle.index_dim}; {rebuild}")
        path = bundle.path / INDEX_FILE
        if not path.is_file():
            raise TagIndexError(f"{path} is missing; {rebuild}")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise TagIndexError(f"{path}: cannot read: {str(e).splitlines()[0]}") from None
        extra = infos.max_sq_norm is not None  # the transform's coordinate (index.mips)
        if index.d != bundle.index_dim + extra:
            raise IndexMismatchError(
                f"{path} has dimension {index.d}, the bundle {bundle.index_dim}"
                + (" (+ 1 for the transform)" if extra else "")
                + f"; {rebuild}"
            )
        if index.metric_type != (faiss.METRIC_L2 if extra else faiss.METRIC_INNER_PRODUCT):
            raise IndexMismatchError(
                f"{path} uses faiss metric {index.metric_type}, not "
                + ("L2 over transformed rows" if extra else "inner product")
                + f" as its {INFOS_FILE} says; {rebuild}"
            )
        if index.ntotal != bundle.manifest.tag_count:
            raise IndexMismatchError(
                f"{path} holds {index.ntotal} vectors, the bundle {bundle.manifest.tag_count} tags; {rebuild}"
            )
        index, on_gpu = to_device(index, use_gpu)
        apply_search_params(index, infos.params, on_gpu)
        return cls(
            index, n_reserved=len(bundle.reserved_tag_ids), infos=infos, on_gpu=on_gpu, max_sq_norm=infos.max_sq_norm
        )

    def search(self, user_embeddings: np.ndarray, k: int, exclude: Exclude = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k tags of each user by u . t.

        user_embeddings: (B, U) float32. exclude: tag ids never to return, either one iterable
        applied to every query, a sequence of B iterables (one per query), or a (B, H) int array (one
        row per query; ids outside the index, such as padding -1, are ignored); ids 0 and 1 are always
        excluded. Returns scores (B, k) float32 and ids (B, k) int64, best first, padded with
        (-inf, -1) when fewer than k admissible tags were found.
        """
        x = np.ascontiguousarray(user_embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"user_embeddings must be (B, {self.dim}), got {x.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        b, n = x.shape[0], self.ntotal
        # only ids that can be returned are kept, and need room in the over-fetch
        keys = _exclusion_keys(exclude, b, self.n_reserved, n)
        longest = int(np.bincount(keys // n, minlength=b).max()) if len(keys) else 0
        fetch = min(n, k + self.n_reserved + longest)
        scores = np.full((b, k), -np.inf, dtype=np.float32)
        ids = np.full((b, k), -1, dtype=np.int64)
        if b == 0 or fetch == 0:
            return scores, ids
        with self._lock:
            if self.max_sq_norm is None:
                d, i = self.index.search(x, fetch)  # (B, fetch) each
            else:
                d, i = self.index.search(transform_queries(x), fetch)
                d = inner_products(x, d, self.max_sq_norm)
        keep = (i >= self.n_reserved) & np.isfinite(d)
        if len(keys):
            found = np.arange(b, dtype=np.int64)[:, None] * n + i  # (ids -1 are not kept already)
            at = np.minimum(np.searchsorted(keys, found), len(keys) - 1)
            keep &= keys[at] != found
        # Position of each kept result among its row's kept results; the first k survive.
        pos = np.cumsum(keep, axis=1) - 1
        take = keep & (pos < k)
        rr, cc = np.nonzero(take)
        scores[rr, pos[rr, cc]] = d[rr, cc]
        ids[rr, pos[rr, cc]] = i[rr, cc]
        return scores, ids
