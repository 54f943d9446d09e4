"""`utpm experiment`: the paper's protocol for many models, losses and seeds, and its report.

Every (model, loss, seed) trains on the protocol's training users of that seed and is scored on
its test users; the yardsticks are scored on the same splits. Runs go to a process pool (torch with
one thread per process: these models are small, and two processes use two cores better than one
process with two threads).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utpm.data.loading import Dataset, load_dataset
from utpm.data.protocol import split_protocol
from utpm.evaluation.metrics import precision_at_k
from utpm.evaluation.yardsticks import YARDSTICKS, yardstick_rankings

# The paper's ablation ladder (Tables 2, 3) and UTPM; `utpm` is af2-cf with the joint loss.
PAPER_MODELS = ("youtube", "af1-unshared", "af1", "af2", "af2-cf", "af2-afm", "af2-nfm", "af2-dcn", "af2-autoint")
# `utpm` is af2-cf trained with the joint loss: with --loss both, af2-cf/joint is UTPM.
HPARAM_GRID: dict[str, tuple[Any, ...]] = {
    "E": (8, 16, 32, 64),
    "heads": (1, 2, 3, 4),
    "C": (2, 4, 8, 16),
    "activation": ("relu", "tanh", "sigmoid", "selu"),
}


@dataclass(frozen=True)
class Job:
    model: str
    loss: str
    seed: int
    preset: str
    overrides: tuple[tuple[str, Any], ...] = ()
    epochs: int = 40

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.overrides)
        return f"{self.model}/{self.loss}/seed{self.seed}" + (f"[{extra}]" if extra else "")


@dataclass
class ExperimentResult:
    dataset: str
    protocol: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    def summary(self, ks: Sequence[int], metric: str = "prec") -> list[dict[str, Any]]:
        """Mean and std over seeds per (model, loss, overrides, k)."""
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for r in self.runs:
            groups.setdefault((r["model"], r["loss"], r.get("variant", "")), []).append(r)
        rows = []
        for (model, loss, variant), runs in groups.items():
            for k in ks:
                key = f"{metric}@{k}"
                vals = [r[key] for r in runs if key in r]
                if not vals:
                    continue
                row = {
                    "model": model,
                    "loss": loss,
                    "k": k,
                    "mean": float(np.mean(vals)),
                    "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                    "n_seeds": len(vals),
                }
                if variant:
                    row["variant"] = variant
                rows.append(row)
        return rows


_CACHE: dict[str, Any] = {}


def _dataset(path: str) -> Dataset:
    if _CACHE.get("path") != path:
        _CACHE.clear()
        _CACHE.update(path=path, data=load_dataset(path), truth=_load_truth(Path(path)))
    return _CACHE["data"]


def _load_truth(path: Path) -> dict[str, set[str]] | None:
    f = path / "truth.csv"
    if not f.exists():
        return None
    import pandas as pd

    t = pd.read_csv(f, dtype=str)
    return {str(u): set(g) for u, g in t.groupby("user_id")["tag"]}


def recovery_at_k(ranked: Sequence[Sequence[str]], truth: Sequence[set[str]], k: int) -> float:
    """Profile recovery: Prec@K of the top tags against the planted interests (Eq. 5 with C = truth)."""
    return precision_at_k(ranked, truth, k).value


def run_job(data_path: str, job: Job, ks: Sequence[int]) -> dict[str, Any]:
    """Train and score one job (runs in a worker process)."""
    import torch

    from utpm.models.presets import get_preset
    from utpm.training.samples import encode_rows
    from utpm.training.trainer import TrainConfig, rank_tags, train

    torch.set_num_threads(1)
    data = _dataset(data_path)
    split = split_protocol(data, seed=job.seed)
    preset = get_preset(job.preset).replace(**dict(job.overrides))
    config = TrainConfig(
        model=job.model,
        loss=job.loss,
        preset=preset,
        seed=job.seed,
        epochs=job.epochs,
        eval_ks=tuple(ks),
        early_stop_ks=tuple(ks),
    )
    t0 = time.perf_counter()
    result = train(split, config, data=data)
    out: dict[str, Any] = {
        "model": job.model,
        "loss": job.loss,
        "seed": job.seed,
        "best_epoch": result.best_epoch,
        "seconds": time.perf_counter() - t0,
        "samples_per_s": result.samples_per_s,
        **{f"prec@{k}": v for k, v in result.test.items()},
    }
    if job.overrides:
        out["variant"] = ",".join(f"{k}={v}" for k, v in job.overrides)
    truth = _CACHE.get("truth")
    if truth is not None:
        rows = split.indices(test=True)
        ids, masks = encode_rows(split, result.encoder, rows)
        ranked = rank_tags(result.model, ids, masks, result.tags, max(ks))
        planted = [truth.get(str(split.user_ids[i]), set()) for i in rows]
        out.update({f"recovery@{k}": recovery_at_k(ranked, planted, k) for k in ks})
    return out


def yardstick_runs(data_path: str, seeds: Sequence[int], ks: Sequence[int], max_tags: int) -> list[dict[str, Any]]:
    data = _dataset(data_path)
    truth = _CACHE.get("truth")
    runs = []
    for seed in seeds:
        split = split_protocol(data, seed=seed)
        train_rows, test_rows = split.indices(test=False), split.indices(test=True)
        clicked = [split.clicked_tags(int(i), max_tags) for i in test_rows]
        for name in YARDSTICKS:
            ranked = yardstick_rankings(name, split, train_rows, test_rows, max_tags, limit=max(ks))
            run: dict[str, Any] = {
                "model": name,
                "loss": "-",
                "seed": seed,
                **{f"prec@{k}": precision_at_k(ranked, clicked, k).value for k in ks},
            }
            if truth is not None:
                planted = [truth.get(str(split.user_ids[i]), set()) for i in test_rows]
                run.update({f"recovery@{k}": recovery_at_k(ranked, planted, k) for k in ks})
            runs.append(run)
    return runs


def run_experiment(
    data_path: str | Path,
    models: Sequence[str],
    losses: Sequence[str],
    seeds: int,
    ks: Sequence[int] = (1, 2, 3),
    preset: str = "movielens",
    hparams: bool = False,
    hparam_seeds: int | None = None,
    epochs: int = 40,
    workers: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> ExperimentResult:
    """Run every (model, loss, seed) job and the yardsticks; optionally the hyper-parameter study."""
    from utpm.models.presets import get_preset
    from utpm.models.registry import default_loss

    path = str(data_path)
    seed_list = list(range(seeds))
    jobs: list[Job] = []
    for m in models:
        for loss in losses:
            chosen = default_loss(m) if loss == "default" else loss
            jobs.extend(Job(m, chosen, s, preset, epochs=epochs) for s in seed_list)
    if hparams:
        for key, values in HPARAM_GRID.items():
            for v in values:
                jobs.extend(Job("utpm", "joint", s, preset, ((key, v),), epochs) for s in range(hparam_seeds or seeds))
    jobs = list(dict.fromkeys(jobs))
    split0 = split_protocol(_dataset(path), seed=0)
    result = ExperimentResult(
        dataset=path,
        protocol={**split0.protocol_info(), "seeds": seed_list, "preset": get_preset(preset).to_dict(), "ks": list(ks)},
    )
    result.runs.extend(yardstick_runs(path, seed_list, ks, get_preset(preset).N))
    workers = workers or min(2, os.cpu_count() or 1)
    done = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_job, path, job, tuple(ks)): job for job in jobs}
        for fut in as_completed(futures):
            result.runs.append(fut.result())
            done += 1
            if progress is not None:
                progress(done, len(jobs), futures[fut].label)
    return result


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}"


def paired_gap(
    runs: list[dict[str, Any]], a: tuple[str, str], b: tuple[str, str], key: str
) -> tuple[float, float, int]:
    """Mean and std over seeds of (b - a) on `key`, pairing runs by seed."""
    by = {(r["model"], r["loss"], r["seed"]): r[key] for r in runs if key in r and "variant" not in r}
    seeds = sorted({s for (m, lo, s) in by if (m, lo) == a} & {s for (m, lo, s) in by if (m, lo) == b})
    gaps = [by[(*b, s)] - by[(*a, s)] for s in seeds]
    if not gaps:
        return math.nan, math.nan, 0
    return float(np.mean(gaps)), float(np.std(gaps, ddof=1)) if len(gaps) > 1 else 0.0, len(gaps)


def verdict(mean_gap: float, std_gap: float) -> str:
    """A gap inside the spread of the paired differences across seeds is a tie, not a win."""
    if math.isnan(mean_gap):
        return "n/a"
    if mean_gap > std_gap:
        return "holds"
    if mean_gap < -std_gap:
        return "reversed"
    return "tie"
