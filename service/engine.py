"""The profile engine: one bundle's encoder, ONNX Runtime session and FAISS index, used together.

An engine is immutable once loaded; a reload builds a new one and swaps the reference, so every
request runs start to finish on one bundle. `lease()` counts the requests using an engine, so the
old one is closed only after its last request is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from index.tag_index import TagIndex
from index.two_stage import TwoStageSearch
from model_export.bundle import Bundle, load_bundle
from model_export.inputs import TowerOutputs, history_feed
from model_export.manifest import (
    HISTORY_SCORES_OUTPUT,
    MERGE_ATTENTION_OUTPUT,
    USER_EMBEDDING_OUTPUT,
    attention_output,
    ids_input,
    mask_input,
)
from model_export.scorer import linear_history_scores
from model_export.session import (
    CUDA,
    SessionConfig,
    build_session,
    check_signature,
    verify_linear_reference,
    verify_reference,
)
from service.batching import MicroBatcher
from service.config import Settings
from service.errors import InvalidInput, UnknownFields
from service.profile_record import RenderedProfile, render
from utpm.features.history import ITEM_FIELD, FieldStats, HistoryBatch, HistoryEncoder, compile_kernel, parse_field
from utpm.features.values import clean_values
from utpm.features.vocab import Vocabulary

log = logging.getLogger("utpm.service")

# One thread per ONNX Runtime run and per FAISS search: `batch_workers` batches already run in
# parallel, and more threads per run only contend for the same cores (docs/performance.md).
ORT_INTRA_THREADS = 1
FAISS_THREADS = 1
# numpy's and FAISS's OpenBLAS (the two-stage search's matmuls): with more threads their idle workers
# spin on the cores the batch threads need (docs/performance.md, "BLAS threads").
BLAS_THREADS = 1
# Longer lists are refused (422) before encoding: no field keeps more than its max length anyway.
MAX_VALUES_PER_FIELD = 10_000


def init_batch_thread() -> None:
    """Run in each batch worker thread: OpenMP's thread count is per thread, so the loading
    thread's setting never reached the workers, which searched with one OpenMP thread per core."""
    import faiss

    faiss.omp_set_num_threads(FAISS_THREADS)


def _widest_history(encoded: HistoryBatch, users: Sequence[EncodedUser]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """hist_ids, hist_feats, hist_mask cut to the batch's widest user: the kept history tags come
    first in each row, zeros after."""
    n = max(1, max(len(u.hist_ids) for u in users if u.hist_ids is not None))
    return (
        encoded.hist_ids[:, :n],
        np.ascontiguousarray(encoded.hist_feats[:, :n]),
        np.ascontiguousarray(encoded.hist_mask[:, :n]),
    )


class DeviceUnavailable(ValueError):
    """UTPM_DEVICE=cuda, but the model or the index would run on the CPU."""


@dataclass
class EncodedUser:
    """One user's model input: per field a (H_f,) id row and mask row, plus what the caller asked.

    utpm-hist bundles add per field the values' counts, and the user's history tags (n,) with their
    features phi (n, P) (`HistoryEncoder`). Their requests leave the event loop parsed (`stats`) and
    are encoded a batch at a time in the batch thread (`compute` fills ids, mask, counts, the history
    tags, `unknown` and `all_unknown`: read them after `compute`)."""

    ids: dict[str, np.ndarray]
    mask: dict[str, np.ndarray]
    k: int
    explain: bool
    unknown: dict[str, list[str]]
    all_unknown: bool
    counts: dict[str, np.ndarray] | None = None
    hist_ids: np.ndarray | None = None
    hist_feats: np.ndarray | None = None
    stats: Mapping[str, FieldStats] | None = None  # utpm-hist: the parsed request, until `compute` encodes it


@dataclass
class BatchTimings:
    model_s: float = 0.0
    index_s: float = 0.0
    encode_s: float = 0.0  # utpm-hist: the batch's encoding, in the batch thread


@dataclass
class ComputedProfile:
    tag_ids: np.ndarray  # (k,) int64, best first
    scores: np.ndarray  # (k,) float32
    timings: BatchTimings  # of the batch this user was computed in
    attention: dict[str, np.ndarray] | None = None  # field -> (heads, H_f); "__merge__" -> (heads, M)
    # explain on a utpm-hist bundle: each returned tag's u . o_t + b_t and g(phi) (0 off history)
    model_part: np.ndarray | None = None
    history_part: np.ndarray | None = None


@dataclass
class ProfileEngine:
    bundle: Bundle
    session: object  # onnxruntime.InferenceSession
    index: TagIndex | None  # None for a bundle served by its linear scorer, which needs no index
    settings: Settings
    batcher: MicroBatcher[EncodedUser, ComputedProfile] | None = None
    history: HistoryEncoder | None = None  # utpm-hist bundles: the request -> history features
    two_stage: TwoStageSearch | None = None  # utpm-hist bundles: top-k of the final score
    # utpm-hist bundles that are exactly b_t + w . phi (their linear start): w, scored without the tower
    linear: np.ndarray | None = None
    # fields another served arm takes and this bundle does not: accepted in a request and left out
    # (service.arms.align_fields), so that one request body is valid for every arm of an A/B
    ignored_fields: frozenset[str] = frozenset()
    _leases: int = 0
    _idle: asyncio.Event | None = None

    @classmethod
    def load(cls, path: str | Path, settings: Settings) -> ProfileEngine:
        """Open and check a bundle (manifest, hashes, ONNX signature, index version/dim/metric), on
        the device `settings.device` asks for; DeviceUnavailable when `cuda` cannot be honoured."""
        import faiss

        bundle = load_bundle(path)
        config = SessionConfig(intra_op_threads=ORT_INTRA_THREADS, prefer_gpu=settings.device != "cpu")
        session = build_session(bundle.onnx_path, config)
        check_signature(session, bundle.manifest)
        verify_reference(session, bundle)
        verify_linear_reference(bundle)
        faiss.omp_set_num_threads(FAISS_THREADS)
        threadpool_limits(BLAS_THREADS, user_api="blas")  # process-wide, as OpenBLAS's setting is
        sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)  # process-wide too
        linear = bundle.linear_phi_weights if bundle.has_history and settings.linear_scorer else None
        # the linear scorer's top-k is exact without u or the index (`TwoStageSearch.search_linear`)
        use_gpu = {"auto": None, "cpu": False, "cuda": True}[settings.device]
        index = TagIndex.load(bundle, use_gpu=use_gpu) if linear is None else None
        history = bundle.history_encoder() if bundle.has_history else None
        if history is not None:
            compile_kernel()  # before the first request, not in it
            for vocab in bundle.encoder.vocabs.values():
                vocab.ids_of((), 0)  # a large vocabulary's hash table, built and compiled here too
        two_stage = TwoStageSearch(bundle, index) if bundle.has_history else None
        engine = cls(
            bundle=bundle,
            session=session,
            index=index,
            settings=settings,
            history=history,
            two_stage=two_stage,
            linear=linear,
        )
        if settings.device == "cuda" and (engine.execution_provider != CUDA or engine.index_device == "cpu"):
            raise DeviceUnavailable(
                f"UTPM_DEVICE=cuda, but the model runs on {engine.execution_provider} and {engine.index_where}: "
                "install onnxruntime-gpu and faiss-gpu and give the process a GPU, "
                "or set UTPM_DEVICE=auto to accept the CPU"
            )
        fallback = engine.gpu_fallback()
        if fallback:
            log.warning("GPU build installed but running on the CPU: %s", fallback)
        # A bundle is millions of long-lived objects (vocabularies, tag names): frozen, full GC
        # collections no longer walk them and stall the loop (docs/performance.md, "GC").
        gc.collect()
        gc.freeze()
        return engine

    # -- identity -----------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def model_name(self) -> str:
        return str(self.bundle.manifest.model.get("name", "?"))

    @property
    def field_names(self) -> list[str]:
        return self.bundle.encoder.field_names

    @property
    def scorer(self) -> str:
        """How a profile is computed: "linear" (a bundle at its linear start: b_t + w . phi, no model
        run, no index; explain requests still run the model) or "model" (the ONNX model and the index)."""
        return "linear" if self.linear is not None else "model"

    @property
    def n_tags(self) -> int:
        """Rows of the tag table (the reserved ids included), as many as the index holds."""
        return self.bundle.manifest.tag_count

    @property
    def execution_provider(self) -> str:
        """The ONNX Runtime provider the session really runs on (CUDA may have fallen back)."""
        return str(self.session.get_providers()[0])  # type: ignore[attr-defined]

    @property
    def index_device(self) -> str:
        """ "gpu", "cpu", or "none" (the linear scorer loads no index)."""
        if self.index is None:
            return "none"
        return "gpu" if self.index.on_gpu else "cpu"

    @property
    def index_where(self) -> str:
        """Where the index runs, in words: "the index on the cpu", or "no index (linear scorer)"."""
        return f"the index on the {self.index_device}" if self.index is not None else "no index (linear scorer)"

    def gpu_fallback(self) -> str | None:
        """What runs on the CPU although a GPU build of its library is installed (the GPU image
        without a usable GPU), or None."""
        import faiss
        import onnxruntime as ort

        if self.settings.device == "cpu":
            return None
        fell = []
        if CUDA in ort.get_available_providers() and self.execution_provider != CUDA:
            fell.append(f"onnxruntime-gpu runs on {self.execution_provider}")
        if hasattr(faiss, "StandardGpuResources") and self.index_device == "cpu":
            fell.append("the faiss-gpu index is on the CPU")
        return "; ".join(fell) or None

    # -- request side (event loop) ------------------------------------------------------------
    def encode(
        self, features: Mapping[str, Sequence[str] | str | Mapping[str, Any]], k: int, explain: bool
    ) -> EncodedUser:
        """Map one request's raw strings to ids exactly as training did.

        A field is a value, a list of values (repeats count) or an object {value: count}. Unknown
        field names -> UnknownFields (422) listing the valid ones (a field of `ignored_fields` is
        accepted and left out); a count that is not a finite number
        >= 0 -> InvalidInput (422); a count of 0 drops its value. Values not in a field's vocabulary
        take the OOV bucket and are reported back.
        """
        encoder = self.bundle.encoder
        extra = [f for f in features if f not in encoder.vocabs]
        if extra:
            unknown = [f for f in extra if f not in self.ignored_fields and f != ITEM_FIELD]
            if unknown:
                valid = [*self.field_names, ITEM_FIELD, *sorted(self.ignored_fields)]
                raise UnknownFields(f"unknown field(s) {sorted(unknown)}; valid fields: {valid}")
            # clicked_items is part of the API: read by a bundle with item neighbours, left out by the rest
            drop = self.ignored_fields if self.history is not None else self.ignored_fields | {ITEM_FIELD}
            features = {name: values for name, values in features.items() if name not in drop}
        limit = MAX_VALUES_PER_FIELD
        for name, values in features.items():
            if not isinstance(values, str) and len(values) > limit:
                raise InvalidInput(f"field {name!r} has {len(values)} values; at most {limit} are accepted")
        # the paper's models take no counts: only {value: count} objects are parsed, to their values
        # (count > 0, in order); lists go to the encoder, cleaned as the event log was
        parse = features if self.history is not None else {n: v for n, v in features.items() if isinstance(v, Mapping)}
        try:
            stats = {name: parse_field(name, raw) for name, raw in parse.items()}
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        if self.history is not None:
            return self._encode_history(stats, k, explain)
        plain: dict[str, Sequence[str] | str] = {
            n: (list(stats[n].values) if n in stats else clean_values([v] if isinstance(v, str) else v))
            for n, v in features.items()
        }
        batch = encoder.encode([plain])
        known = any(bool((batch.ids[f][0] > Vocabulary.OOV).any()) for f in self.field_names)
        return EncodedUser(
            ids={f: batch.ids[f][0] for f in self.field_names},
            mask={f: batch.mask[f][0] for f in self.field_names},
            k=k,
            explain=explain,
            unknown=batch.unknown[0],
            all_unknown=not known,
        )

    def _encode_history(self, stats: Mapping[str, FieldStats], k: int, explain: bool) -> EncodedUser:
        # encoded with the rest of its batch, in the batch thread (`_encode_batch`)
        return EncodedUser(ids={}, mask={}, k=k, explain=explain, unknown={}, all_unknown=False, stats=stats)

    def _encode_batch(self, users: Sequence[EncodedUser], tower: bool = True) -> HistoryBatch:
        """utpm-hist: the batch's users through `HistoryEncoder.encode` at once; each user gets its rows
        (tower=False: the history tags only, for the linear path)."""
        assert self.history is not None
        b = self.history.encode([u.stats or {} for u in users], tower=tower)
        names = self.field_names if tower else []
        n_hist = b.hist_mask.sum(axis=1).astype(np.int64).tolist()  # kept history tags come first
        assert b.known is not None
        for row, (u, n) in enumerate(zip(users, n_hist, strict=True)):
            u.ids = {f: b.ids[j][row] for j, f in enumerate(names)}
            u.mask = {f: b.masks[j][row] for j, f in enumerate(names)}
            u.counts = {f: b.counts[j][row] for j, f in enumerate(names)}
            u.hist_ids, u.hist_feats = b.hist_ids[row, :n], b.hist_feats[row, :n]
            u.unknown, u.all_unknown = b.unknown[row], not bool(b.known[row])
        return b

    def value_name(self, field_name: str, value_id: int) -> str:
        return self.bundle.encoder.vocabs[field_name].token(value_id)

    # -- batch side (worker threads) ----------------------------------------------------------
    def compute(self, users: Sequence[EncodedUser]) -> list[ComputedProfile]:
        """One ONNX Runtime run and one FAISS search for a batch of users."""
        if self.history is not None:
            return self._compute_history(users)
        t0 = time.perf_counter()
        feed: dict[str, np.ndarray] = {}
        for f in self.field_names:
            feed[ids_input(f)] = np.stack([u.ids[f] for u in users])
            feed[mask_input(f)] = np.stack([u.mask[f] for u in users])
        want_attention = any(u.explain for u in users)
        outputs = self.session.run(None if want_attention else ["user_embedding"], feed)  # type: ignore[attr-defined]
        t1 = time.perf_counter()
        k = max(u.k for u in users)
        assert self.index is not None  # the paper models always load theirs
        scores, ids = self.index.search(outputs[0], k)
        t2 = time.perf_counter()
        timings = BatchTimings(model_s=t1 - t0, index_s=t2 - t1)
        tower = TowerOutputs.from_list(outputs, self.field_names) if want_attention else None
        out = []
        for row, user in enumerate(users):
            keep = ids[row, : user.k] >= 0
            attention = None
            if user.explain and tower is not None:
                attention = {f: a[row] for f, a in tower.field_attention.items()}
                attention["__merge__"] = tower.merge_attention[row]
            out.append(ComputedProfile(ids[row, : user.k][keep], scores[row, : user.k][keep], timings, attention))
        return out

    def render(
        self, user_id: str, user: EncodedUser, computed: ComputedProfile, computed_at_ms: int, expires_at_ms: int
    ) -> RenderedProfile:
        """A computed profile rendered once (service.profile_record): a response is a slice of it, the
        cache keeps it whole; what the service, its roofline and the batch job all write."""
        tokens = self.bundle.tags.tokens  # id -> tag name, indexed directly (no call per tag)
        return render(
            user_id,
            self.version,
            list(map(tokens.__getitem__, computed.tag_ids.tolist())),
            computed.scores.tolist(),
            user.unknown,
            user.all_unknown,
            computed_at_ms=computed_at_ms,
            expires_at_ms=expires_at_ms,
        )

    def _compute_history(self, users: Sequence[EncodedUser]) -> list[ComputedProfile]:
        """utpm-hist: the batch encoded at once, one ONNX run gives u and g(phi) of each user's history
        tags; the two-stage search takes the index's top-k over the other tags by [u, 1] . [o_t, b_t] and
        the history tags scored exactly (u . o_t + b_t + g), and keeps the top-k of the union.

        A linear bundle (b_t + w . phi): g = w . phi of the history tags and `TwoStageSearch.search_linear`,
        no tower and no index; the model runs only for explain requests' attention weights, so that an
        explained profile is the same list as an unexplained one. `model_s` is then g's computation."""
        want_attention = any(u.explain for u in users)
        run_model = self.linear is None or want_attention
        t_enc = time.perf_counter()
        encoded = self._encode_batch(users, tower=run_model)
        t0 = time.perf_counter()
        names = self.field_names
        hist_ids, hist_feats, hist_mask = _widest_history(encoded, users)
        named: dict[str, np.ndarray] = {}
        if run_model:
            tower = (encoded.ids, encoded.masks, encoded.counts)
            feed = history_feed(self._input_names, names, *tower, hist_feats, hist_mask)
            wanted = self._output_names if want_attention else [USER_EMBEDDING_OUTPUT, HISTORY_SCORES_OUTPUT]
            outputs = self.session.run(None if want_attention else wanted, feed)  # type: ignore[attr-defined]
            named = dict(zip(wanted, outputs, strict=True))
        k = max(u.k for u in users)
        assert self.two_stage is not None
        if self.linear is not None:
            g = linear_history_scores(hist_feats, self.linear) * hist_mask
            t1 = time.perf_counter()
            found = self.two_stage.search_linear(hist_ids, g, k)
        else:
            u_vec, g = named[USER_EMBEDDING_OUTPUT], named[HISTORY_SCORES_OUTPUT] * hist_mask
            t1 = time.perf_counter()
            found = self.two_stage.search(u_vec, hist_ids, g, k)
        t2 = time.perf_counter()
        timings = BatchTimings(t1 - t0, t2 - t1, t0 - t_enc)
        out = []
        for row, user in enumerate(users):
            got = found.ids[row, : user.k] >= 0
            ids, scores = found.ids[row, : user.k][got], found.scores[row, : user.k][got]
            attention = model_part = history_part = None
            if user.explain:
                m = len(user.hist_ids) if user.hist_ids is not None else 0
                attention = {f: named[attention_output(f)][row] for f in names}
                attention["__merge__"] = named[MERGE_ATTENTION_OUTPUT][row]
                g_of = dict(zip(hist_ids[row, :m].tolist(), g[row, :m].tolist(), strict=True))
                history_part = np.array([g_of.get(int(t), 0.0) for t in ids], np.float32)
                model_part = (scores - history_part).astype(np.float32)
            out.append(ComputedProfile(ids, scores.astype(np.float32), timings, attention, model_part, history_part))
        return out

    @property
    def _input_names(self) -> list[str]:
        return self.bundle.manifest.input_names

    @property
    def _output_names(self) -> list[str]:
        return self.bundle.manifest.output_names

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, on_batch: Callable[[int], None] | None = None) -> None:
        s = self.settings
        self.batcher = MicroBatcher(
            self.compute,
            s.batch_max_users,
            s.batch_max_wait_ms,
            s.max_pending_users,
            s.batch_workers,
            on_batch=on_batch,
            thread_init=init_batch_thread,
            full_second_batch=s.batch_second_full,
        )
        self.batcher.start()
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[ProfileEngine]:
        self._leases += 1
        if self._idle is not None:
            self._idle.clear()
        try:
            yield self
        finally:
            self._leases -= 1
            if self._leases == 0 and self._idle is not None:
                self._idle.set()

    async def retire(self) -> None:
        """Close once every request that leased this engine has been answered."""
        if self._idle is not None:
            await self._idle.wait()
        if self.batcher is not None:
            await self.batcher.close()
