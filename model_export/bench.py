"""Latency of the user tower: ONNX Runtime against PyTorch eager, same inputs, measured side by side.

Each timed iteration runs both engines once on the same batch, alternating which goes first, so
that anything else happening on the machine (these CPUs are shared) hits both alike; the
medians and 99th percentiles are then comparable. Both engines get the same thread count and
compute the same outputs (u and every attention weight). torch is imported inside the
functions only: `model_export` stays importable without it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from model_export.bundle import load_bundle
from model_export.errors import BundleError
from model_export.inputs import onnx_feed
from model_export.parity import synthetic_users
from model_export.session import SessionConfig, available_cpus, build_session
from utpm.features.encoding import FeatureEncoder
from utpm.features.spec import FieldKind, FieldSpec
from utpm.features.vocab import Vocabulary

if TYPE_CHECKING:
    from utpm.models.user_model import UserModel

DEFAULT_BATCHES = (1, 64)


@dataclass(frozen=True)
class Latency:
    """Milliseconds per call over `n` timed calls."""

    p50_ms: float
    p99_ms: float
    mean_ms: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        return cls(float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.mean()), len(ms))

    def to_dict(self) -> dict[str, float | int]:
        return {"p50_ms": round(self.p50_ms, 4), "p99_ms": round(self.p99_ms, 4), "mean_ms": round(self.mean_ms, 4)}


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def interleaved(
    a: Callable[[], object], b: Callable[[], object], iters: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Time `a` and `b` alternately (a first on even iterations, b first on odd) -> seconds each."""
    for _ in range(warmup):
        a()
        b()
    ta: list[float] = []
    tb: list[float] = []
    clock = time.perf_counter
    for i in range(iters):
        for fn, out in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            t0 = clock()
            fn()
            out.append(clock() - t0)
    return ta, tb


def bench_tower(
    onnx_path: Path,
    model: UserModel,
    encoder: FeatureEncoder,
    *,
    batches: Sequence[int] = DEFAULT_BATCHES,
    iters: int = 300,
    warmup: int = 20,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """ONNX Runtime (session from `session.build_session`) vs `model` in eager mode, per batch size.

    Inputs: synthetic users drawn from the vocabularies (0..2H values per multi field, so some are
    truncated), encoded by `encoder`; the same arrays feed both engines.
    """
    import torch

    threads = threads or available_cpus()
    load_before = _load_average()
    session = build_session(onnx_path, SessionConfig(intra_op_threads=threads, prefer_gpu=True))
    # Like for like: when ONNX Runtime runs on CUDA, so does PyTorch (inputs copied in, results out).
    device = "cuda" if "CUDAExecutionProvider" in session.get_providers() and torch.cuda.is_available() else "cpu"
    model.to(device)
    names = encoder.field_names
    rng = np.random.default_rng(seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    model.eval()
    results = []
    try:
        for b in batches:
            batch = encoder.encode(synthetic_users(encoder, b, rng))
            feed = onnx_feed(batch, names)
            ids = [torch.from_numpy(batch.ids[n]) for n in names]
            masks = [torch.from_numpy(batch.mask[n]) for n in names]

            def run_ort(feed: dict[str, np.ndarray] = feed) -> object:
                return session.run(None, feed)

            def run_torch(ids: list[Any] = ids, masks: list[Any] = masks) -> Any:
                with torch.inference_mode():
                    u, *_ = model.forward_with_attention([t.to(device) for t in ids], [m.to(device) for m in masks])
                    return u.cpu()

            u_ort = np.asarray(session.run(None, feed)[0])
            u_torch = run_torch().numpy()
            t_ort, t_torch = interleaved(run_ort, run_torch, iters, warmup)
            lo, lt = Latency.of(t_ort), Latency.of(t_torch)
            results.append(
                {
                    "batch": b,
                    "iters": iters,
                    "onnxruntime": lo.to_dict(),
                    "pytorch": lt.to_dict(),
                    "speedup_p50": round(lt.p50_ms / lo.p50_ms, 3),
                    "speedup_p99": round(lt.p99_ms / lo.p99_ms, 3),
                    "max_abs_diff_u": float(np.max(np.abs(u_ort - u_torch))),
                }
            )
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "model": model.name,
        "preset": model.preset.name,
        "fields": [{"name": s.name, "kind": s.kind.value, "max_len": s.max_len} for s in encoder.specs],
        "threads": threads,
        "providers": session.get_providers(),
        "torch_device": device,
        "onnxruntime_version": ort.__version__,
        "torch_version": torch.__version__,
        "inputs": "synthetic users drawn from the vocabularies, 0..2H values per multi-valued field",
        # These CPUs are shared: the 1-minute load average says how busy the machine was.
        "load_average_1m": {"before": load_before, "after": _load_average()},
        "results": results,
    }


def bench_bundle(
    bundle_dir: str | Path,
    *,
    run_dir: str | Path | None = None,
    batches: Sequence[int] = DEFAULT_BATCHES,
    iters: int = 300,
    threads: int | None = None,
) -> dict[str, Any]:
    """Benchmark a bundle's tower; the PyTorch side is the run it was exported from.

    run_dir defaults to the run recorded in the manifest; BundleError if it is not there.
    """
    from utpm.training.run import load_run

    bundle = load_bundle(bundle_dir)
    run_path = Path(run_dir) if run_dir is not None else Path(str(bundle.manifest.model.get("run", "")))
    if not (run_path / "config.json").is_file():
        raise BundleError(
            f"the PyTorch side needs the run the bundle came from; {run_path} is not a run directory (pass --run)"
        )
    run = load_run(run_path)
    if run.encoder.field_names != bundle.encoder.field_names:
        raise BundleError(f"run {run_path} has fields {run.encoder.field_names}, bundle {bundle.encoder.field_names}")
    report = bench_tower(bundle.onnx_path, run.model, bundle.encoder, batches=batches, iters=iters, threads=threads)
    return {"bundle": str(bundle.path), "bundle_version": bundle.version, "trained": True, **report}


def industrial_like_fields(preset_h: int) -> tuple[list[FieldSpec], dict[str, Vocabulary]]:
    """Fields shaped like `utpm prepare synthetic` data at scale: 4 multi-valued fields of length H
    (clicked tags / categories / accounts, unclicked tags) and 3 single-valued ones (gender, age, city)."""
    sizes = {
        "clicked_tags": (FieldKind.MULTI, 100_000),
        "clicked_categories": (FieldKind.MULTI, 1_000),
        "clicked_account": (FieldKind.MULTI, 20_000),
        "unclicked_tags": (FieldKind.MULTI, 100_000),
        "gender": (FieldKind.SINGLE, 2),
        "age": (FieldKind.SINGLE, 6),
        "city": (FieldKind.SINGLE, 300),
    }
    specs, vocabs = [], {}
    for name, (kind, n) in sizes.items():
        vocab = Vocabulary(["<pad>", "<oov>", *(f"{name}:{i}" for i in range(n))])
        vocabs[name] = vocab
        specs.append(FieldSpec(name, kind, len(vocab), preset_h if kind is FieldKind.MULTI else 1))
    return specs, vocabs


def bench_preset(
    preset: str = "industrial",
    *,
    model_name: str = "utpm",
    batches: Sequence[int] = DEFAULT_BATCHES,
    iters: int = 300,
    threads: int | None = None,
) -> dict[str, Any]:
    """Benchmark an UNTRAINED model at a named preset over `industrial_like_fields` (latency only:
    the weights' values do not change the work done)."""
    from model_export.onnx_export import export_onnx
    from utpm.models.presets import get_preset
    from utpm.models.registry import build_model

    p = get_preset(preset)
    specs, vocabs = industrial_like_fields(p.H)
    encoder = FeatureEncoder(specs, vocabs)
    model = build_model(model_name, specs, n_tags=1_000, preset=p, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path)
        report = bench_tower(path, model, encoder, batches=batches, iters=iters, threads=threads)
    return {"bundle": None, "trained": False, **report}
