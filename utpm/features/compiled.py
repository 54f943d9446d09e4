"""numba's njit as the feature kernels use it (the history encoding, the pair counts, the hashed lookups)."""

from __future__ import annotations

from numba import njit


def compiled(fn):
    """njit without the GIL, cached by numba where it can write (NUMBA_CACHE_DIR, or __pycache__ beside
    the kernel's file); where it cannot (a read-only install) it compiles at each start instead of failing."""
    try:
        return njit(nogil=True, cache=True)(fn)
    except RuntimeError:
        return njit(nogil=True)(fn)
