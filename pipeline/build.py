"""`build_bundle`: a data source to an indexed, servable bundle, in four stages.

    out/data    the data set in the generic format (prepared from the source, or the source itself)
    out/run     the training run (`utpm.training`; without a config, the default model utpm-hist)
    out/bundle  the exported bundle (`model_export`) with its FAISS index (`index`)

`isolate=True` runs each stage in a fresh process: at a million tags the split of 20M events and
the export each peak at several GB, and in one process the peaks would add up. Each stage's report
gives `peak_rss_gib`: with `isolate`, the stage's own peak; without, the process's peak so far.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Say = Callable[[str], None]
# How often an isolated stage checks that the build that started it still runs.
PARENT_CHECK_S = 0.5
QueryFn = Callable[[Path], np.ndarray]


@dataclass(frozen=True)
class DataSource:
    """Where the data comes from: a MovieLens directory, the synthetic generator, or a data set
    already in the generic format."""

    kind: Literal["movielens", "synthetic", "generic"]
    path: Path | None = None
    synthetic: dict[str, Any] = field(default_factory=dict)  # generate_synthetic's n_tags, n_users, ...
    # Also write tag vectors of this size clustered like learned ones (utpm.data.tag_geometry).
    tag_vector_dim: int = 0

    def describe(self) -> str:
        return f"{self.kind} {self.path or self.synthetic}"


@dataclass
class BuiltBundle:
    data: Path
    run: Path
    bundle: Path
    stages: dict[str, Any] = field(default_factory=dict)  # what each stage reported, and its seconds


def build_bundle(
    out: Path,
    source: DataSource,
    config: Any = None,  # utpm.training.TrainConfig (imported lazily: torch is loaded only to train)
    *,
    index_kind: str | None = "auto",
    index_queries: QueryFn | None = None,
    parity_users: int = 1024,
    test_fraction: float = 0.2,
    isolate: bool = False,
    progress: Say | None = None,
    first_stage: str = "prepare",
) -> BuiltBundle:
    """Prepare, train, export and index into `out`; returns the paths and each stage's report.

    `index_kind=None` stops after the export. `index_queries(bundle_dir)` may supply the queries the
    index is tuned and measured on (the default is the bundle's held-out users); with `isolate` it
    must pickle (a module-level function or a functools.partial of one). `test_fraction` is the
    protocol's share of test users. `first_stage` skips the stages before it, whose outputs must be
    there: "export" re-exports and re-indexes a trained run (after a change to the export).
    """
    say = progress or (lambda _m: None)
    if config is None:  # the default model, utpm-hist
        from utpm.training.history import HistoryTrainConfig

        config = HistoryTrainConfig()
    out = Path(out)
    built = BuiltBundle(data=out / "data", run=out / "run", bundle=out / "bundle")
    if source.kind == "generic":
        if source.path is None:
            raise ValueError("a generic data source needs a path")
        built.data = Path(source.path)
    stages: list[tuple[str, Callable[..., dict[str, Any]], tuple[Any, ...]]] = [
        ("prepare", _prepare, (source, built.data)),
        ("train", _train, (built.data, built.run, config, test_fraction)),
        ("export", _export, (built.run, built.bundle, built.data, parity_users)),
        ("index", _index, (built.bundle, index_kind, config.seed, index_queries)),
    ]
    if index_kind is None:  # an exported bundle that is not servable yet
        stages.pop()
    names = [name for name, _, _ in stages]
    if first_stage not in names:
        raise ValueError(f"unknown first stage {first_stage!r}; valid: {', '.join(names)}")
    stages = stages[names.index(first_stage) :]
    if first_stage in ("export", "index") and not (built.run / "model.pt").is_file():
        raise FileNotFoundError(f"no trained run in {built.run} to start at the {first_stage} stage from")
    for name, fn, args in stages:
        t0 = time.perf_counter()
        say(f"{name}: {_what(name, source, config, built)}")
        report = _run_isolated(fn, args) if isolate else {**fn(*args, say=say), "peak_rss_gib": peak_rss_gib()}
        built.stages[name] = {**report, "seconds": round(time.perf_counter() - t0, 1)}
    return built


def peak_rss_gib() -> float | None:
    """This process's peak resident memory so far, in GiB; in an isolated stage, that stage's own.
    Read from VmHWM (Linux), not `ru_maxrss`, which a spawned process inherits from the process that
    forked it; None where neither is available."""
    try:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError, IndexError):
        try:
            import resource  # not on Windows
        except ImportError:
            return None
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 2**20, 2)


def _what(stage: str, source: DataSource, config: Any, built: BuiltBundle) -> str:
    return {
        "prepare": source.describe(),
        "train": f"{config.model} ({config.preset.name} preset, {config.loss} loss) into {built.run}",
        "export": f"ONNX bundle into {built.bundle}",
        "index": "FAISS tag index",
    }[stage]


def _run_isolated(fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> dict[str, Any]:
    """`fn(*args)` in a fresh spawned process; its progress goes to that process's stderr. The process
    ends if this one does: a killed build must not leave a stage writing into its output."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_while_parent_lives, os.getpid(), fn, *args).result()


def _while_parent_lives(parent: int, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)  # the parent is gone (re-parented to init): nobody wants this stage's output

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    return {**fn(*args), "peak_rss_gib": peak_rss_gib()}


def _stderr(message: str) -> None:
    import sys

    sys.stderr.write(f"  {message}\n")


def prepare_data(source: DataSource, data: Path, progress: Say | None = None) -> dict[str, Any]:
    """Only the first stage: the data set of `source` in the generic format at `data` (reused when
    it is the same synthetic recipe), e.g. shared by two bundles of different models."""
    return _prepare(source, Path(data), say=progress or _stderr)


def _prepare(source: DataSource, data: Path, say: Say = _stderr) -> dict[str, Any]:
    from utpm.data.loading import load_dataset

    if source.kind == "movielens":
        from utpm.data.movielens import prepare_movielens

        summary = prepare_movielens(source.path or Path("data/movielens-small"), data).summary()
    elif source.kind == "synthetic":
        from utpm.data.synthetic import generate_synthetic
        from utpm.data.tag_geometry import tag_vectors_path, write_structured_tag_vectors

        if (data / "meta.json").is_file() and _same_synthetic(data, source):
            summary = f"reused the synthetic data in {data}"
        else:
            report = generate_synthetic(data, **source.synthetic)
            summary = f"{report.rows} in {report.seconds:.1f}s"
        if source.tag_vector_dim and not tag_vectors_path(data, source.tag_vector_dim).is_file():
            write_structured_tag_vectors(data, source.tag_vector_dim, source.synthetic.get("seed", 0))
    else:
        load_dataset(data)  # validates the data set before anything is trained on it
        return {"summary": f"used {data} as it is"}
    say(summary)
    return {"summary": summary}


def _same_synthetic(data: Path, source: DataSource) -> bool:
    import json

    meta = json.loads((data / "meta.json").read_text())
    return all(meta.get("params", {}).get(k) == v for k, v in source.synthetic.items())


def _train(data: Path, run: Path, config: Any, test_fraction: float, say: Say = _stderr) -> dict[str, Any]:
    import gc

    from utpm.data.loading import load_dataset
    from utpm.data.protocol import split_protocol
    from utpm.training.trainer import train

    dataset: Any = load_dataset(data)
    split = split_protocol(dataset, seed=config.seed, test_fraction=test_fraction)
    if not config.augment_cuts:  # the extra cuts need the frames; without them the split suffices
        del dataset
        gc.collect()
        dataset = None

    def progress(epoch: int, total: int, point: dict[str, float]) -> None:
        say(f"epoch {epoch}/{total}: loss {point['loss']:.4f}")

    result = train(split, config, data=dataset, out=run, progress=progress)
    return {
        "best_epoch": result.best_epoch,
        "test": {f"prec@{k}": round(v, 4) for k, v in result.test.items()},
        "samples_per_s": round(result.samples_per_s, 1),
        "tags": len(result.tags) - 2,
        "train_users": result.train_users,
    }


def _export(run: Path, bundle: Path, data: Path, parity_users: int, say: Say = _stderr) -> dict[str, Any]:
    from model_export.onnx_export import export_bundle

    manifest = export_bundle(run, bundle, data=data, parity_users=parity_users, overwrite=True, progress=say)
    return {
        "bundle_version": manifest.bundle_version,
        "tags": manifest.tag_count - 2,  # rows 0 and 1 are padding and OOV
        "model": manifest.model.get("name"),
        "parity": {
            k: manifest.parity.get(k)
            for k in ("max_abs_diff_u", "max_abs_diff_history", "max_abs_diff_score", "top_k", "top_k_agreement")
        },
    }


def _index(bundle: Path, kind: str | None, seed: int, queries: QueryFn | None, say: Say = _stderr) -> dict[str, Any]:
    from index.build import build_index

    infos = build_index(
        bundle, kind=kind or "auto", seed=seed, queries=queries(bundle) if queries else None, progress=say
    )
    return {"factory": infos.factory, "params": infos.params, "recall": infos.recall, "two_stage": infos.two_stage}
