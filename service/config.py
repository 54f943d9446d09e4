"""Service settings: environment variables with the `UTPM_` prefix, validated at start-up.

This is the only module of the service that reads the environment. Naming rules (docs/serving.md,
"Settings"): a group prefix where there is a group (`redis_`, `cache_`, `batch_`, `auth_`), a
limit is `max_<what it counts>`, durations end in `_ms`, sizes in `_bytes`. Everything else the
service needs is a module constant next to the code it tunes, with the reason beside it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.redis_client import check_url

ROLES = ("read", "write", "admin")
_DIGEST = re.compile(r"[0-9a-f]{64}")
# Redis's PX must fit a signed 64-bit count of ms from now; beyond ten years a TTL is a slip of units,
# not a plan (a batch job with a fixed --as-of may still want years).
MAX_CACHE_TTL_MS = 10 * 365 * 24 * 3_600_000
# the most UTPM_MAX_LOOKUP_USERS may allow: the lookup body refuses more ids before reading any
MAX_LOOKUP_USERS_CEILING = 10_000

# Settings that were renamed or became constants (docs/serving.md keeps the table): set, they
# stop the start-up rather than being silently ignored.
RETIRED: dict[str, str] = {
    "UTPM_BATCH_MAX_SIZE": "renamed UTPM_BATCH_MAX_USERS",
    "UTPM_MAX_PENDING": "renamed UTPM_MAX_PENDING_USERS",
    "UTPM_MAX_INFLIGHT": "renamed UTPM_MAX_INFLIGHT_REQUESTS",
    "UTPM_CACHE_TTL_S": "replaced by UTPM_CACHE_TTL_MS (milliseconds)",
    "UTPM_ADMIN_API_KEY": "replaced by UTPM_AUTH_KEYS (admin:<sha256 of the key>)",
    "UTPM_MAX_BATCH_USERS": "now a constant (service.schemas.MAX_USERS_PER_CALL = 256)",
    "UTPM_DEFAULT_K": "now a constant (service.profiles.DEFAULT_K = 50)",
    "UTPM_MAX_K": "now a constant (service.profiles.MAX_K = 1000)",
    "UTPM_MAX_BODY_BYTES": "now a constant (service.middleware.MAX_BODY_BYTES = 1 MiB)",
    "UTPM_MAX_VALUES_PER_FIELD": "now a constant (service.engine.MAX_VALUES_PER_FIELD = 10,000)",
    "UTPM_RETRY_AFTER_S": "now a constant (service.errors.RETRY_AFTER_S = 1)",
    "UTPM_MEMORY_CACHE_MAX_ENTRIES": "now a constant (service.cache.MEMORY_CACHE_MAX_ENTRIES = 100,000)",
    "UTPM_NEAR_CACHE_MAX_ENTRIES": "now a constant (service.cache.NEAR_CACHE_MAX_ENTRIES = 10,000)",
    "UTPM_ORT_INTRA_THREADS": "now a constant (service.engine.ORT_INTRA_THREADS = 1)",
    "UTPM_FAISS_THREADS": "now a constant (service.engine.FAISS_THREADS = 1)",
    "UTPM_GC_YOUNG_THRESHOLD": "now a constant (service.main.GC_YOUNG_THRESHOLD = 10,000)",
    "UTPM_GC_FREEZE": "now a constant (the bundle is always frozen out of the GC's sight)",
}


# UTPM_* variables that other parts of the project read (no service settings): never taken for a slip
OTHER_VARIABLES = ("UTPM_API_KEY", "UTPM_BUNDLE_DIR", "UTPM_IMAGE_PYTHON", "UTPM_NAIVE_RUN", "UTPM_LT_")


def misspelt_settings(environ: Mapping[str, str]) -> list[str]:
    """A warning for each UTPM_* variable that is no setting but looks like one (UTPM_BATCH_MAX_USER):
    the service ignores it, and the operator meant the setting."""
    names = [f"UTPM_{name}".upper() for name in Settings.model_fields]
    warnings = []
    for var in sorted(environ):
        if not var.startswith("UTPM_") or var in names or var in RETIRED or var.startswith(OTHER_VARIABLES):
            continue
        close = difflib.get_close_matches(var, names, n=1, cutoff=0.8)
        if close:
            warnings.append(f"{var} is not a setting and is ignored; did you mean {close[0]}?")
    return warnings


# Settings read only with a Redis (UTPM_REDIS_URL): set without one, they change nothing.
REDIS_ONLY = ("redis_timeout_ms", "near_cache_ttl_ms", "fleet_sync")


def unread_settings(settings: Settings) -> list[str]:
    """A warning for each setting that was set but that this configuration never reads: the operator
    who set UTPM_REDIS_TIMEOUT_MS meant a Redis, and the service runs on its embedded cache."""
    if settings.redis_url is not None:
        return []
    given = sorted(settings.model_fields_set & set(REDIS_ONLY))
    return [
        f"UTPM_{name.upper()} is set but read only with a Redis (UTPM_REDIS_URL), which is not set: the "
        "embedded cache serves, and the setting changes nothing"
        for name in given
    ]


def settings_error(e: ValidationError) -> str:
    """Invalid settings in one line, by environment variable: `UTPM_BATCH_MAX_USERS: Input should be ...`."""
    problems = []
    for err in e.errors():
        name = "_".join(str(part) for part in err["loc"]).upper()
        message = str(err["msg"]).removeprefix("Value error, ")
        problems.append(f"UTPM_{name}: {message}" if name else message)
    return "invalid settings: " + "; ".join(problems)


def hash_key(key: str) -> str:
    """The SHA-256 hex digest UTPM_AUTH_KEYS holds for an API key (`python -m service.auth KEY`)."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_auth_keys(spec: str) -> dict[str, str]:
    """`role:digest` entries (comma, space or newline separated; `@path` reads them from a file,
    `#` starts a comment) -> {digest: role}. Error messages never repeat an entry: it might be a key."""
    text = spec
    if spec.strip().startswith("@"):
        path = Path(spec.strip()[1:])
        try:
            text = path.read_text()
        except OSError as e:
            raise ValueError(f"UTPM_AUTH_KEYS: cannot read key file {path}: {e.strerror}") from None
    keys: dict[str, str] = {}
    entries = [e for line in text.splitlines() for e in re.split(r"[,\s]+", line.split("#", 1)[0]) if e]
    for n, entry in enumerate(entries, 1):
        role, _, digest = entry.partition(":")
        if role not in ROLES:
            raise ValueError(f"UTPM_AUTH_KEYS entry {n}: the role must be one of {list(ROLES)} (role:sha256-hex)")
        if not _DIGEST.fullmatch(digest):
            raise ValueError(
                f"UTPM_AUTH_KEYS entry {n} ({role}): expected the key's SHA-256 as 64 lowercase hex digits, "
                "never the key itself (`python -m service.auth KEY` prints it)"
            )
        keys[digest] = role
    return keys


def _http_url(text: object) -> SplitResult | None:
    """`text` split as an http(s) URL with a host, or None."""
    url = urlsplit(text) if isinstance(text, str) else None
    return url if url is not None and url.scheme in ("http", "https") and url.hostname else None


def _check_origin(origin: object) -> None:
    """What a browser sends as Origin: anything else (a path, a trailing slash) would never match."""
    if origin == "*":
        return
    url = _http_url(origin)
    if url is None or url.path or url.query:
        raise ValueError(f"{origin!r} is not an origin: expected scheme://host[:port] without a path, or *")


class Settings(BaseSettings):
    """Every public knob of the profile service. Defaults suit `make demo` on a laptop."""

    # hide_input_in_errors: a validation error must not print the Redis URL's password or the keys
    model_config = SettingsConfigDict(env_prefix="UTPM_", extra="ignore", hide_input_in_errors=True)

    # -- server ----------------------------------------------------------------------------------
    bundle: Path = Field(description="Bundle directory (from `utpm export` + `utpm index build`).")
    bundle_root: Path | None = Field(
        None,
        description="/admin/reload only loads bundles under this directory "
        "(default: the parent of the start-up bundle).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="auto: the GPU when one is usable, else the CPU; cuda: refuse to start without the CUDA "
        "execution provider and a GPU index; cpu: never touch a GPU.",
    )
    linear_scorer: bool = Field(
        True,
        description="A bundle marked at export as its linear start (b_t + w . phi) is served without the model "
        "run and without loading its index (explain requests still run the model); false: through the ONNX "
        "graph and the index, as any bundle.",
    )
    log_level: str = Field("INFO")
    # NoDecode: a plain comma-separated list is read by `_origins`, not refused by a JSON parser
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS (scheme://host[:port], or *), comma-separated or a JSON list; "
        "CORS is off unless origins are listed.",
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces endpoint (e.g. http://otel-collector:4318/v1/traces); unset: no tracing, "
        "and the OpenTelemetry packages are not even imported.",
    )
    # -- auth ------------------------------------------------------------------------------------
    auth_keys: SecretStr | None = Field(
        None,
        description="API keys as role:sha256-hex entries (roles read, write, admin), or @/path/to/file with one "
        "per line. Writes need a write key once one is configured, reads a read (or write) key once one is; "
        "without an admin key /admin/* is off.",
    )
    auth_open_compute: bool = Field(
        False,
        description='POST with "store": false (computes, writes nothing) is allowed to whoever may read, '
        "without a write key.",
    )
    # -- cache -----------------------------------------------------------------------------------
    redis_url: SecretStr | None = Field(
        None,
        description="redis://, rediss:// (TLS), redis+cluster:// or redis+sentinel://host:port,.../master[/db] "
        "(rediss+sentinel:// for TLS, ?sentinel_password= for the Sentinels' own); "
        "unset: the embedded in-process TTL cache.",
    )
    # 200 ms, not tighter: the timeout runs on the event loop's clock, and a busy loop alone
    # pushes replies past 50 ms (docs/performance.md, "Redis timeout").
    redis_timeout_ms: int = Field(
        200, ge=1, description="Per-command Redis timeout: a slow Redis never stalls a request longer than this."
    )
    cache_ttl_ms: int = Field(
        3_600_000, ge=1000, le=MAX_CACHE_TTL_MS, description="How long a computed profile stays readable."
    )
    cache_tags: int = Field(100, ge=1, le=1000, description="Tags stored per cached profile (at least the k asked).")
    near_cache_ttl_ms: int = Field(
        1000,
        ge=0,
        description="With Redis: profiles read or written in the last this-many ms are answered from process "
        "memory (a profile recomputed by another replica can be this late); 0 turns the near cache off.",
    )
    cache_stale_fallback: bool = Field(
        True,
        description="When the served model has no profile for a user, GET answers the most recently served other "
        'model version\'s, marked "stale": true with its own model_version (no 404 storm on a rollout); '
        "false: 404.",
    )
    max_lookup_users: int = Field(
        1000,
        ge=1,
        le=MAX_LOOKUP_USERS_CEILING,
        description="Users per POST /profiles/lookup (one Redis round trip for all of them).",
    )
    # -- batching and overload -------------------------------------------------------------------
    # 8: per-user cost falls steeply up to a batch of 8 and little beyond, while waiting grows
    # (docs/performance.md, "What each setting bought").
    batch_max_users: int = Field(8, ge=1, description="Users per ONNX Runtime run / FAISS search.")
    batch_max_wait_ms: float = Field(2.0, ge=0, le=1000, description="Longest a request waits for company.")
    batch_workers: int = Field(2, ge=1, description="Batches computed at once (threads).")
    # Python's own 5 ms: shorter ones did not win through the whole service (docs/performance.md,
    # "What each setting bought"); a setting, to measure it again where batches leave the lock longer
    gil_switch_interval_ms: float = Field(
        5.0,
        gt=0,
        le=100,
        description="Python's switch interval (sys.setswitchinterval): how long a batch thread back from "
        "ONNX Runtime, FAISS or the compiled encoding waits before the event loop must hand it the "
        "interpreter lock.",
    )
    batch_second_full: bool = Field(
        True,
        description="A batch that would start while another runs waits until it is full or that one has "
        "finished (false: it starts at once, half full).",
    )
    max_pending_users: int = Field(
        512, ge=1, description="Users queued for the model before new work is shed with 503 + Retry-After."
    )
    max_inflight_requests: int = Field(
        256,
        ge=1,
        description="Requests handled at once before new ones are shed "
        "with 503 + Retry-After without being parsed (protects the event loop).",
    )

    # -- A/B (service.ab; the admin API changes both at run time) ------------------------------
    ab_challenger_bundle: Path | None = Field(
        None, description="A second bundle served to a share of users (the challenger); unset: no experiment."
    )
    ab_challenger_share: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of users (by a stable hash of the user id) the challenger serves."
    )
    fleet_sync: bool = Field(
        True,
        description="With Redis: an admin call (reload, challenger) changes every replica sharing the Redis, "
        "and a starting replica takes the fleet's arms (service.fleet); false: only the replica called.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_retired(cls, data: object) -> object:
        given = {f"UTPM_{k}".upper() for k in data} if isinstance(data, dict) else set()
        set_now = sorted(name for name in RETIRED if name in os.environ or name in given)
        if set_now:
            raise ValueError("; ".join(f"{name} is no longer read: {RETIRED[name]}" for name in set_now))
        return data

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, not {v!r}")
        return v

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, v: object) -> object:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                try:
                    v = json.loads(text)
                except ValueError:
                    raise ValueError(
                        "a JSON list of origins that does not parse (or give them comma-separated)"
                    ) from None
            else:
                v = [o for o in re.split(r"[,\s]+", text) if o]
        if isinstance(v, list):
            for origin in v:
                _check_origin(origin)
        return v

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp(cls, v: str | None) -> str | None:
        if v is not None and _http_url(v) is None:
            raise ValueError(f"expected an OTLP/HTTP URL such as http://collector:4318/v1/traces, got {v!r}")
        return v

    @field_validator("bundle_root")
    @classmethod
    def _root(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_dir():
            raise ValueError(f"{v} is not a directory (bundles for /admin/reload are loaded from under it)")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            check_url(v.get_secret_value())  # its ValueError names what is wrong
        return v

    @field_validator("auth_keys")
    @classmethod
    def _keys(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            parse_auth_keys(v.get_secret_value())  # fail at start-up, not on the first request
        return v

    @property
    def reload_root(self) -> Path:
        return (self.bundle_root or self.bundle.resolve().parent).resolve()

    @property
    def key_roles(self) -> dict[str, str]:
        """{sha256 digest: role} of the configured API keys."""
        return parse_auth_keys(self.auth_keys.get_secret_value()) if self.auth_keys is not None else {}
