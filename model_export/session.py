"""The one place ONNX Runtime sessions are built (torch-free): providers, threads, optimisation, warm-up.

Export parity checks, the benchmark and the service all call `build_session`, so what was
measured is what serves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_export.bundle import Bundle
from model_export.errors import BundleError
from model_export.manifest import REFERENCE_FILE, Manifest, ids_input, mask_input

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

GRAPH_OPTIMIZATION_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class SessionConfig:
    """How a session runs.

    intra_op_threads: threads inside one operator (the MatMuls); None = every CPU this process may
        use (`available_cpus()`), which is what a single-model server wants. 1 suits a process that
        runs many sessions side by side.
    inter_op_threads: threads across independent operators; 1, with sequential execution, because
        the tower is a chain: parallel execution only adds scheduling overhead.
    graph_optimization: "disable" | "basic" | "extended" | "all" (default: all fusions; the
        optimised graph is numerically equal within float32 rounding, checked by the parity test).
    allow_spinning: let idle intra-op threads busy-wait for the next operator (ORT's own default).
        Off here: spinning threads keep every core busy after each call, starving whatever shares
        the process (FAISS searches, the web server, PyTorch in the side-by-side benchmark, where it
        made eager PyTorch look 10-100x slower than it is).
    prefer_gpu: use the CUDA provider when onnxruntime-gpu is installed and finds a GPU.
    warmup: run one batch of zeros at build time, so the first request does not pay for
        allocator growth and kernel selection.
    log_severity: ONNX Runtime's own log level (3 = errors only; 2 would also print warnings such
        as the fp16 variant's unfolded constants on every load).
    """

    intra_op_threads: int | None = None
    inter_op_threads: int = 1
    graph_optimization: str = "all"
    allow_spinning: bool = False
    prefer_gpu: bool = True
    warmup: bool = True
    log_severity: int = 3

    def __post_init__(self) -> None:
        if self.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise ValueError(
                f"graph_optimization {self.graph_optimization!r} is not one of {sorted(GRAPH_OPTIMIZATION_LEVELS)}"
            )
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1 or None, got {self.intra_op_threads}")
        if self.inter_op_threads < 1:
            raise ValueError(f"inter_op_threads must be >= 1, got {self.inter_op_threads}")

    @property
    def threads(self) -> int:
        """The intra-op thread count actually used."""
        return self.intra_op_threads if self.intra_op_threads is not None else available_cpus()


def select_providers(available: Sequence[str], prefer_gpu: bool = True) -> list[str]:
    """Execution providers to request, best first: CUDA (when offered and wanted), then CPU.

    Pure function of what the installed onnxruntime offers; whether a GPU is really there shows
    only when the session is created (see `build_session`).
    """
    if prefer_gpu and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


def session_options(config: SessionConfig) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = config.threads
    opts.inter_op_num_threads = config.inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[config.graph_optimization]
    opts.log_severity_level = config.log_severity
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.allow_spinning else "0")
    return opts


def zero_feed(session: ort.InferenceSession, batch: int = 1) -> dict[str, np.ndarray]:
    """Inputs of zeros (every field empty) for `batch` users, shaped from the model's own signature."""
    feed: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        shape = [batch if not isinstance(d, int) else d for d in inp.shape]
        dtype = np.int64 if inp.type == "tensor(int64)" else np.float32
        feed[inp.name] = np.zeros(shape, dtype=dtype)
    return feed


def build_session(model_path: str | Path, config: SessionConfig | None = None) -> ort.InferenceSession:
    """An InferenceSession for `model_path` with `config` (defaults documented on SessionConfig).

    Requests CUDA then CPU when CUDA is offered; if the CUDA provider cannot start (no GPU, driver
    mismatch) the session is rebuilt on the CPU. `session.get_providers()` says what runs.
    """
    config = config or SessionConfig()
    providers = select_providers(ort.get_available_providers(), config.prefer_gpu)
    opts = session_options(config)
    try:
        session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types per failure
        if providers == [CPU]:
            raise
        log.warning("CUDA provider failed to start (%s); using the CPU", e)
        session = ort.InferenceSession(str(model_path), sess_options=opts, providers=[CPU])
    if config.warmup:
        session.run(None, zero_feed(session, 1))
    return session


def check_signature(session: ort.InferenceSession, manifest: Manifest) -> None:
    """BundleError unless the session's inputs and outputs are the ones the manifest describes."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != manifest.input_names:
        raise BundleError(f"ONNX inputs {inputs} != manifest {manifest.input_names}")
    if outputs != manifest.output_names:
        raise BundleError(f"ONNX outputs {outputs} != manifest {manifest.output_names}")
    lengths = {f.name: f.max_len for f in manifest.fields}
    for inp in session.get_inputs():
        name = inp.name.rsplit("_", 1)[0]
        if name not in lengths:  # utpm-hist's history inputs: their length is dynamic
            continue
        if inp.shape[-1] != lengths[name]:
            raise BundleError(f"ONNX input {inp.name} has length {inp.shape[-1]}, manifest max_len {lengths[name]}")
    u_shape = session.get_outputs()[0].shape
    if u_shape[-1] != manifest.user_dim:
        raise BundleError(f"ONNX user_embedding has dimension {u_shape[-1]}, manifest says {manifest.user_dim}")


def verify_reference(session: ort.InferenceSession, bundle: Bundle, atol: float = 1e-4) -> float | None:
    """Re-check parity at load: the session must reproduce the u that PyTorch computed at export for
    the held-out users stored in the bundle (`parity_reference.npz`). Returns the max |du|, None for
    a bundle exported without a reference; BundleError when parity does not hold."""
    path = bundle.path / REFERENCE_FILE
    if REFERENCE_FILE not in bundle.manifest.files:
        log.warning("bundle %s has no %s: ONNX parity is not re-checked", bundle.version, REFERENCE_FILE)
        return None
    with np.load(path) as ref:
        feed = {}
        if bundle.manifest.scorer is not None:  # utpm-hist: the whole feed was saved, and g beside u
            feed = {k.removeprefix("feed__"): ref[k] for k in ref.files if k.startswith("feed__")}
        else:
            for name in bundle.manifest.field_names:
                feed[ids_input(name)] = ref[f"ids__{name}"].astype(np.int64)
                feed[mask_input(name)] = ref[f"mask__{name}"].astype(np.float32)
        expected = ref["u"]
        expected_g = ref["g"] if "g" in ref.files else None
    if expected_g is not None:
        got, got_g = session.run(["user_embedding", "history_scores"], feed)
        got = np.concatenate([got.ravel(), (got_g * feed["hist_mask"]).ravel()])
        expected = np.concatenate([expected.ravel(), (expected_g * feed["hist_mask"]).ravel()])
    else:
        got = session.run(["user_embedding"], feed)[0]
    return _within(
        got, expected, atol, f"{bundle.onnx_path.name} does not reproduce the PyTorch model it was exported from", "du"
    )


def _within(got: np.ndarray, expected: np.ndarray, atol: float, problem: str, what: str) -> float:
    """max |got - expected|; BundleError saying `problem` when it is over atol or got is not finite."""
    diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
    if not np.isfinite(got).all() or diff > atol:
        raise BundleError(f"{problem}: max |{what}| {diff:.2e} > {atol:g} on {len(expected)} held-out users")
    return diff


def verify_linear_reference(bundle: Bundle, atol: float = 1e-4) -> float | None:
    """For a bundle marked linear (`Bundle.linear_phi_weights`): w . phi must reproduce the g that
    PyTorch computed at export for the stored held-out users. Returns the max |dg|, None when the
    bundle is not linear or has no reference; BundleError when it does not hold."""
    from model_export.scorer import linear_history_scores

    w = bundle.linear_phi_weights
    if w is None or REFERENCE_FILE not in bundle.manifest.files:
        return None
    with np.load(bundle.path / REFERENCE_FILE) as ref:
        mask = ref["feed__hist_mask"]
        expected = ref["g"] * mask
        got = linear_history_scores(ref["feed__hist_feats"], w) * mask
    problem = f"bundle {bundle.version} is marked linear, but its weights do not reproduce its history path"
    return _within(got, expected, atol, problem, "dg")
