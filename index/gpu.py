"""One code path for CPU and GPU: an index moves to the GPU only when the faiss build reports one
and a probe search on it succeeds.

faiss-cpu (what these machines and the tests have) reports 0 GPUs, so everything stays on the CPU.
The probe exists because a faiss GPU build can report a GPU it has no kernels for: faiss-gpu-cu12
1.14.1 from PyPI on an H200 (compute capability 9.0) aborts the whole process at the first search
("no kernel image is available", docs/performance.md, "GPU"; the `gpu` extra now installs Meta's
faiss-gpu, which has sm_90 code). The probe runs in a child process, once per process, so such a
build costs a warning instead of the service.
"""

from __future__ import annotations

import functools
import logging
import subprocess
import sys

import faiss

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 120.0
# A tiny search on every GPU, as `to_device` would run it.
PROBE = (
    "import faiss, numpy as np\n"
    "x = np.ones((64, 8), dtype='float32')\n"
    "index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(8))\n"
    "index.add(x)\n"
    "index.search(x[:2], 4)\n"
)


def reported_gpus() -> int:
    """GPUs this faiss build reports (0 for faiss-cpu, which has no get_num_gpus)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def gpu_count() -> int:
    """GPUs indexes can use: those reported, when a probe search on them succeeds."""
    return reported_gpus() if gpu_usable() else 0


def probe(code: str = PROBE, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when `code` runs to the end in a child Python, else why not (exit status and last line)."""
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"no answer in {timeout_s:.0f}s"
    if done.returncode == 0:
        return None
    last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return f"exit status {done.returncode}: {last[:300]}"


@functools.cache
def gpu_usable() -> bool:
    """The faiss build reports a GPU and a probe search on it succeeds (checked once per process)."""
    if reported_gpus() == 0:
        return False
    why = probe()
    if why is not None:
        log.warning(
            "faiss reports %d GPU(s) but a search on them fails (%s); indexes stay on the CPU", reported_gpus(), why
        )
    return why is None


def to_device(index: faiss.Index, use_gpu: bool | None = None) -> tuple[faiss.Index, bool]:
    """(index, on_gpu): the index moved to every visible GPU when `use_gpu` (None = when usable)."""
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
