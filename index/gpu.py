"""One code path for CPU and GPU: an index moves to the GPU only when the faiss build reports one.

faiss-cpu (what these machines and the tests have) reports 0 GPUs, so everything stays on the
CPU. The GPU branch is written against the faiss-gpu API but is untested here.
"""

from __future__ import annotations

import logging

import faiss

log = logging.getLogger(__name__)


def gpu_count() -> int:
    """GPUs visible to this faiss build (0 for faiss-cpu, which has no get_num_gpus)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def to_device(index: faiss.Index, use_gpu: bool | None = None) -> tuple[faiss.Index, bool]:
    """(index, on_gpu): the index moved to every visible GPU when `use_gpu` (None = when any)."""
    wanted = gpu_count() > 0 if use_gpu is None else use_gpu
    if not wanted or gpu_count() == 0:
        return index, False
    try:
        return faiss.index_cpu_to_all_gpus(index), True
    except RuntimeError as e:  # e.g. HNSW has no GPU implementation: it stays on the CPU
        log.warning("index stays on the CPU: %s", str(e).splitlines()[0])
        return index, False


def to_cpu(index: faiss.Index, on_gpu: bool) -> faiss.Index:
    """A CPU copy of the index for faiss.write_index (GPU indexes cannot be written)."""
    return faiss.index_gpu_to_cpu(index) if on_gpu else index
