"""Service settings: environment variables with the `UTPM_` prefix, validated at start-up.

This is the only place that reads the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the profile service. Defaults suit `make demo` on a laptop."""

    model_config = SettingsConfigDict(env_prefix="UTPM_", extra="ignore")

    bundle: Path = Field(description="Bundle directory (from `utpm export` + `utpm index build`).")
    # cache
    redis_url: SecretStr | None = Field(
        None, description="redis://, rediss:// (TLS) or redis+cluster://; unset: the embedded in-process TTL cache."
    )
    # 200 ms, not tighter: the timeout runs on the event loop's clock, and at 3.5k GET/s a busy loop
    # alone pushed a few replies past 50 ms (30 spurious 503s in `utpm bench serve`, 06:10 UTC run).
    redis_timeout_ms: int = Field(
        200, ge=1, description="Per-command Redis timeout: a slow Redis never stalls a request longer than this."
    )
    cache_ttl_s: int = Field(3600, ge=1, description="How long a computed profile stays readable.")
    cache_tags: int = Field(100, ge=1, le=1000, description="Tags stored per cached profile (at least the k asked).")
    memory_cache_max_entries: int = Field(100_000, ge=1)
    near_cache_ttl_ms: int = Field(
        1000,
        ge=0,
        description="With Redis: profiles read or written in the last this-many ms are answered from process "
        "memory (a profile recomputed by another replica can be this late); 0 turns the near cache off.",
    )
    near_cache_max_entries: int = Field(10_000, ge=1, description="Near-cache size (LRU), in profiles.")
    # request limits
    default_k: int = Field(50, ge=1, le=1000)
    max_k: int = Field(1000, ge=1, le=10_000)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Larger request bodies get 413.")
    max_batch_users: int = Field(256, ge=1, description="Users per POST /profiles call.")
    max_values_per_field: int = Field(10_000, ge=1, description="Longer lists are refused (422) before parsing.")
    # micro-batching and overload
    # 8: the industrial tower's cost per user falls from 2.6 ms alone to 0.78 ms in a batch of 8
    # (0.44 at 64); larger batches add waiting, and with 2 workers they leave one idle. POST at
    # 16 connections on the 1M-tag bundle: +31% at 8 vs 64 (`utpm bench tune`, docs/performance.md).
    batch_max_size: int = Field(8, ge=1, description="Users per ONNX Runtime run / FAISS search.")
    batch_max_wait_ms: float = Field(2.0, ge=0, description="Longest a request waits for company.")
    batch_workers: int = Field(2, ge=1, description="Batches computed at once (threads).")
    max_pending: int = Field(
        512, ge=1, description="Users queued for the model before new work is shed with 503 + Retry-After."
    )
    max_inflight: int = Field(
        256,
        ge=1,
        description="Requests handled at once before new ones are shed "
        "with 503 + Retry-After without being parsed (protects the event loop).",
    )
    retry_after_s: int = Field(1, ge=1)
    # inference
    ort_intra_threads: int = Field(1, ge=0, description="ONNX Runtime intra-op threads per run (0: ORT default).")
    gc_young_threshold: int = Field(
        10_000,
        ge=0,
        description="Allocations between young-generation GC collections (Python's default: 700; 0 keeps it).",
    )
    gc_freeze: bool = Field(
        True, description="Move a loaded bundle's objects out of the cyclic GC's sight (no full-collection stalls)."
    )
    faiss_threads: int = Field(1, ge=0, description="FAISS OpenMP threads (0: library default).")
    # access
    admin_api_key: SecretStr | None = Field(None, description="Key for /admin/*; unset: admin endpoints are off.")
    bundle_root: Path | None = Field(
        None,
        description="/admin/reload only loads bundles under this directory "
        "(default: the parent of the start-up bundle).",
    )
    cors_origins: list[str] = Field(default_factory=list, description="CORS is off unless origins are listed.")
    log_level: str = Field("INFO")

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, not {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) exceeds max_k ({self.max_k})")
        return self

    @property
    def reload_root(self) -> Path:
        return (self.bundle_root or self.bundle.resolve().parent).resolve()
