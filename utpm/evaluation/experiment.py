"""`utpm experiment`: the paper's protocol for many models, losses and seeds, and its report.

Every (model, loss, seed) trains on the protocol's training users of that seed and is scored on
its test users; the yardsticks are scored on the same splits. Runs go to a process pool (torch with
one thread per process: these models are small, and two processes use two cores better than one
process with two threads).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from utpm.data.loading import Dataset, load_dataset
from utpm.data.protocol import ProtocolSplit, split_protocol, train_val_rows
from utpm.evaluation.metrics import precision_at_k, user_precision
from utpm.evaluation.personalisation import bootstrap_mean_ci, personalisation
from utpm.evaluation.yardsticks import ORACLES, REFERENCES, YARDSTICKS, tag_order, tune_blend, yardstick_rankings

if TYPE_CHECKING:  # torch: imported by the jobs that train
    from utpm.training.history import HistoryTrainConfig

# The paper's ablation ladder (Tables 2, 3) and UTPM; `utpm` is af2-cf with the joint loss.
PAPER_MODELS = ("youtube", "af1-unshared", "af1", "af2", "af2-cf", "af2-afm", "af2-nfm", "af2-dcn", "af2-autoint")
# `utpm` is af2-cf trained with the joint loss: with --loss both, af2-cf/joint is UTPM.
# The project's default model (utpm.models.history): `--models default` names it.
DEFAULT_MODEL = "utpm-hist"
# the default model's test users ranked as the service ranks them: each sent as the request built from
# the log (`ProtocolSplit.request`), parsed as the service parses it (`--served-requests`)
SERVED_MODEL = f"{DEFAULT_MODEL} (served)"
# the paired gap of a served row to the same runs' own evaluation, next to the yardsticks'
EVALUATED = "evaluated"
# Top-k lists compared by the personalisation metrics.
PERSONAL_K = 10
# Share of training users held out for early stopping and for tuning the blend yardstick.
VAL_FRACTION = 0.2
HPARAM_GRID: dict[str, tuple[Any, ...]] = {
    "E": (8, 16, 32, 64),
    "heads": (1, 2, 3, 4),
    "C": (2, 4, 8, 16),
    "activation": ("relu", "tanh", "sigmoid", "selu"),
}


class ExperimentError(ValueError):
    """An experiment asks for a run that cannot be made (a variant that no configuration takes)."""


@dataclass(frozen=True)
class Job:
    """One training run. With `folds` > 0 it is fold `seed % folds` of repetition `seed // folds`."""

    model: str
    loss: str
    seed: int
    preset: str
    overrides: tuple[tuple[str, Any], ...] = ()
    epochs: int = 40
    folds: int = 0
    served: bool = False  # also rank the test users from their requests (SERVED_MODEL)

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.overrides)
        return f"{self.model}/{self.loss}/seed{self.seed}" + (f"[{extra}]" if extra else "")


def make_split(data: Dataset, seed: int, folds: int = 0) -> ProtocolSplit:
    """The split of run `seed`: the protocol's seeded 80/20 user draw, or with `folds` > 0 k-fold over users.

    k-fold: repetition r = seed // folds permutes the users with `default_rng(r)` and fold f = seed % folds
    is the test set, so within one repetition every user is a test user exactly once.
    """
    if folds <= 0:
        return split_protocol(data, seed=seed)
    rep, fold = divmod(seed, folds)
    split = split_protocol(data, seed=rep)
    fold_of = np.empty(split.n_users, np.int64)
    fold_of[np.random.default_rng(rep).permutation(split.n_users)] = np.arange(split.n_users) % folds
    split.is_test = fold_of == fold
    split.seed = seed
    return split


def score_rankings(
    out: dict[str, Any],
    split: ProtocolSplit,
    rows: np.ndarray,
    ranked: list[list[str]],
    ks: Sequence[int],
    max_tags: int,
    truth: dict[str, set[str]] | None = None,
) -> None:
    """Prec@k, per-user scores (for the paired bootstrap; not written to JSON), personalisation, and with
    `truth` (user -> planted interests) recovery."""
    clicked = [split.clicked_tags(int(i), max_tags) for i in rows]
    has = [j for j, c in enumerate(clicked) if c]
    out.update({f"prec@{k}": precision_at_k(ranked, clicked, k).value for k in ks})
    out["per_user"] = {
        "users": [str(split.user_ids[rows[j]]) for j in has],
        **{f"prec@{k}": [user_precision(ranked[j], clicked[j], k) for j in has] for k in ks},
    }
    out["personalisation"] = personalisation(ranked, PERSONAL_K, seed=int(split.seed))
    if truth is not None:
        planted = [truth.get(str(split.user_ids[i]), set()) for i in rows]
        out.update({f"recovery@{k}": recovery_at_k(ranked, planted, k) for k in ks})
        hasr = [j for j, c in enumerate(planted) if c]
        out["per_user"]["recovery_users"] = [str(split.user_ids[rows[j]]) for j in hasr]
        out["per_user"].update({f"recovery@{k}": [user_precision(ranked[j], planted[j], k) for j in hasr] for k in ks})


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
                row["yardstick"] = model in REFERENCES
                rows.append(row)
        return rows

    def variant_differences(
        self, ks: Sequence[int], metric: str = "val_prec"
    ) -> dict[str, dict[int, dict[str, float]]]:
        """Per variant of the default model, `metric@k` minus the default run's of the same seed (the same
        fold, so the same validation users): {variant: {k: mean, std over runs, wins, ties, runs}}."""
        trained = [r for r in self.runs if not r.get("yardstick") and r["model"] == DEFAULT_MODEL]
        base = {r["seed"]: r for r in trained if not r.get("variant")}
        out: dict[str, dict[int, dict[str, float]]] = {}
        for variant in dict.fromkeys(r["variant"] for r in trained if r.get("variant")):
            runs = [r for r in trained if r.get("variant") == variant and r["seed"] in base]
            out[variant] = {}
            for k in ks:
                key = f"{metric}@{k}"
                diff = np.asarray([r[key] - base[r["seed"]][key] for r in runs if key in r and key in base[r["seed"]]])
                if len(diff):
                    out[variant][k] = {
                        "mean": float(diff.mean()),
                        "std": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0,
                        "wins": int((diff > 0).sum()),
                        "ties": int((diff == 0).sum()),
                        "runs": len(diff),
                    }
        return out

    def _per_user(self, model: str, loss: str, variant: str, key: str) -> dict[tuple[int, str], float]:
        users_key = "recovery_users" if key.startswith("recovery") else "users"
        out: dict[tuple[int, str], float] = {}
        for r in self.runs:
            if (r["model"], r["loss"], r.get("variant", "")) != (model, loss, variant) or "per_user" not in r:
                continue
            pu = r["per_user"]
            out.update({(r["seed"], u): v for u, v in zip(pu.get(users_key, []), pu.get(key, []), strict=True)})
        return out

    def intervals(self, ks: Sequence[int], metric: str = "prec", n_boot: int = 2000) -> list[dict[str, Any]]:
        """`summary` plus 95% bootstrap intervals: of each mean, and of every model's paired gap to each yardstick.

        Users are resampled with replacement; a user's value is the mean over the runs in which they
        were a test user (with k-fold, once per repetition), and a gap pairs the model's and the
        yardstick's score of the same user in the same run.
        """
        rows = self.summary(ks, metric)
        for row in rows:
            key = f"{metric}@{row['k']}"
            mine = self._per_user(row["model"], row["loss"], row.get("variant", ""), key)
            if not mine:
                continue
            row["ci95"] = list(bootstrap_mean_ci(_by_user(mine), n_boot))
            row["users"] = len({u for _, u in mine})
            if row["yardstick"]:
                continue
            row["vs"] = {}
            against = [(y, y, "-", "") for y in REFERENCES]
            if row["model"] == SERVED_MODEL:
                against.append((EVALUATED, DEFAULT_MODEL, row["loss"], row.get("variant", "")))
            for y, model, loss, variant in against:
                theirs = self._per_user(model, loss, variant, key)
                pairs = {k: v - theirs[k] for k, v in mine.items() if k in theirs}
                if not pairs:
                    continue
                gaps = _by_user(pairs)
                lo, hi = bootstrap_mean_ci(gaps, n_boot)
                row["vs"][y] = {"gap": float(np.mean(gaps)), "ci95": [lo, hi]}
        return rows

    def personalisation(self) -> list[dict[str, Any]]:
        """Mean personalisation metrics over runs per (model, loss, variant)."""
        groups: dict[tuple[str, str, str], list[dict[str, float]]] = {}
        for r in self.runs:
            if "personalisation" in r:
                groups.setdefault((r["model"], r["loss"], r.get("variant", "")), []).append(r["personalisation"])
        out = []
        for (model, loss, variant), ps in groups.items():
            row: dict[str, Any] = {"model": model, "loss": loss, "yardstick": model in REFERENCES, "k": PERSONAL_K}
            if variant:
                row["variant"] = variant
            row.update({k: float(np.mean([p[k] for p in ps])) for k in ("jaccard", "distinct_tags", "top1_share")})
            out.append(row)
        return out


def _by_user(values: dict[tuple[int, str], float]) -> list[float]:
    """Each user's mean over runs, users in a fixed order: the runs arrive in the order their jobs
    finished, and the bootstrap's seeded resampling must not depend on it."""
    per: dict[str, list[float]] = {}
    for (_, u), v in sorted(values.items()):
        per.setdefault(u, []).append(v)
    return [float(np.mean(v)) for v in per.values()]


_CACHE: dict[str, Any] = {}


def experiment_dataset(path: str) -> Dataset:
    """The data set at `path`, loaded once per process (the CLI's first call is the experiment's)."""
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


# In a worker process: the parent's event that says "stop": set when a job has failed, so that the
# jobs running then end at their next epoch instead of training to the end for nothing.
_STOP: Any = None


class JobStopped(Exception):
    """A job ended early because another job of the experiment failed."""


def _worker_start(stop: Any) -> None:
    global _STOP
    _STOP = stop


def run_job(data_path: str, job: Job, ks: Sequence[int], updates: Any = None) -> dict[str, Any]:
    """Train and score one job (runs in a worker process); `updates` (a queue shared with the parent)
    gets (job label, epoch, epochs, validation score) when the job starts (epoch 0) and after each epoch."""
    import torch

    from utpm.models.presets import get_preset
    from utpm.training.samples import encode_rows
    from utpm.training.trainer import TrainConfig, TrainResult, rank_tags, train

    torch.set_num_threads(1)

    def epoch_done(epoch: int, total: int, point: dict[str, float]) -> None:
        if _STOP is not None and _STOP.is_set():
            raise JobStopped(f"{job.label}: stopped at epoch {epoch} (another job failed)")
        if updates is not None:
            updates.put((job.label, epoch, total, point.get("val_score")))

    epoch_done(0, job.epochs, {})
    data = experiment_dataset(data_path)
    split = make_split(data, job.seed, job.folds)
    rows = split.indices(test=True)
    top = max(PERSONAL_K, *ks)
    t0 = time.perf_counter()
    served_ranked: list[list[str]] | None = None  # with `job.served`: the rankings of the test users' requests
    if job.model.startswith(DEFAULT_MODEL):
        from utpm.training.history import rank_users, train_history

        hconfig = history_config(job, ks)
        hresult = train_history(split, hconfig, progress=epoch_done)
        assert hresult.history_encoder is not None
        from utpm.training.history import UserSequences

        seqs = UserSequences(split, hconfig.preset.N, all_item_tags=hconfig.history.all_item_tags)
        ranked = rank_users(hresult.model, seqs, hresult.history_encoder, rows, top)  # type: ignore[arg-type]
        if job.served:
            from utpm.training.history import rank_requests

            sent = [split.request(int(i)) for i in rows]
            served_ranked = rank_requests(hresult.model, hresult.history_encoder, sent, top)  # type: ignore[arg-type]
        result: TrainResult = hresult
        max_tags = hconfig.preset.N
        start = hresult.start
        ungated: int | None = hresult.best_epoch_ungated  # the early stopping's choice, before the epoch gate
    else:
        start, ungated = {}, None
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
        result = train(split, config, data=data, progress=epoch_done)
        ids, masks = encode_rows(split, result.encoder, rows)
        ranked = rank_tags(result.model, ids, masks, result.tags, top)
        max_tags = preset.N
    out: dict[str, Any] = {
        "model": job.model,
        "loss": job.loss,
        "seed": job.seed,
        "best_epoch": result.best_epoch,
        "seconds": time.perf_counter() - t0,
        "samples_per_s": result.samples_per_s,
        "yardstick": False,
    }
    if start:
        out["start"] = start
    if ungated is not None:
        out["best_epoch_ungated"] = ungated
    # the validation users' Prec@K at the kept epoch: what a variant (an ablation) is decided on
    out.update({f"val_prec@{k}": float(v) for k, v in result.val.items()})
    if job.overrides:
        out["variant"] = ",".join(f"{k}={v}" for k, v in job.overrides)
    score_rankings(out, split, rows, ranked, ks, max_tags, _CACHE.get("truth"))
    if served_ranked is not None:
        served: dict[str, Any] = {"model": SERVED_MODEL, "loss": job.loss, "seed": job.seed, "yardstick": False}
        if job.overrides:
            served["variant"] = out["variant"]
        score_rankings(served, split, rows, served_ranked, ks, max_tags, _CACHE.get("truth"))
        out["served_run"] = served  # `run_experiment` makes it a run of its own
    return out


def yardstick_runs(
    data_path: str, seeds: Sequence[int], ks: Sequence[int], max_tags: int, folds: int = 0
) -> list[dict[str, Any]]:
    """mostpop, histfreq and the tuned blend on each run's split, from the models' training rows; with
    planted interests (truth.csv) also the `planted-first` and `planted-seen-first` references."""
    data = experiment_dataset(data_path)
    truth = _CACHE.get("truth")
    return [
        run for seed in seeds for run in split_yardstick_runs(make_split(data, seed, folds), seed, ks, max_tags, truth)
    ]


def split_yardstick_runs(
    split: ProtocolSplit, seed: int, ks: Sequence[int], max_tags: int, truth: dict[str, set[str]] | None = None
) -> list[dict[str, Any]]:
    """`yardstick_runs` of one split already made (run `seed`: its training and validation rows)."""
    train_rows, val_rows = train_val_rows(split, VAL_FRACTION, seed)
    test_rows = split.indices(test=True)
    order = tag_order(split, train_rows, max_tags)  # one read of the training events per split
    blend = tune_blend(split, train_rows, val_rows, max_tags, ks, order=order)
    planted = None if truth is None else [truth.get(str(split.user_ids[i]), set()) for i in test_rows]
    runs = []
    for name in YARDSTICKS if planted is None else REFERENCES:
        ranked = yardstick_rankings(
            name,
            split,
            train_rows,
            test_rows,
            max_tags,
            limit=max(PERSONAL_K, *ks),
            blend=blend,
            order=order,
            planted=planted,
        )
        run: dict[str, Any] = {"model": name, "loss": "-", "seed": seed, "yardstick": True}
        if name in ("blend", *ORACLES):
            run["blend_a"], run["blend_c"], run["blend_popularity"] = blend
        score_rankings(run, split, test_rows, ranked, ks, max_tags, truth)
        runs.append(run)
    return runs


def history_config(job: Job, ks: Sequence[int]) -> HistoryTrainConfig:
    """The `HistoryTrainConfig` of a default-model job: its overrides (a `--variant`) applied to the
    sizes (dim, max_values), the model's `HistoryOptions` and the training config; ValueError or
    TypeError for an override none of them has, or a value one refuses."""
    from utpm.models.history import HistoryOptions
    from utpm.training.history import HistoryTrainConfig, history_preset

    over = dict(job.overrides)
    fixed = {"model", "loss", "preset", "seed", "epochs", "eval_ks", "early_stop_ks", "val_fraction", "history"}
    keys = {
        "dim",
        "max_values",
        *HistoryOptions.__dataclass_fields__,
        *HistoryTrainConfig.__dataclass_fields__.keys() - fixed,
    }
    unknown = sorted(set(over) - keys)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; valid: loss, {', '.join(sorted(keys))}")
    sizes = {k: over.pop(k) for k in ("dim", "max_values") if k in over}
    opts = HistoryOptions(**{k: over.pop(k) for k in list(over) if k in HistoryOptions.__dataclass_fields__})
    return HistoryTrainConfig(
        loss=job.loss,
        preset=history_preset(job.preset, **sizes),
        seed=job.seed,
        epochs=job.epochs,
        eval_ks=tuple(ks),
        early_stop_ks=tuple(ks),
        val_fraction=VAL_FRACTION,
        history=opts,
        **over,
    )


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
    folds: int = 0,
    repeats: int = 1,
    variants: Sequence[tuple[tuple[str, Any], ...]] = (),
    served: bool = False,
) -> ExperimentResult:
    """Run every (model, loss, seed) job and the three yardsticks; optionally the hyper-parameter study.

    `folds` > 0: k-fold over users, `repeats` times (runs 0 .. folds * repeats - 1), instead of
    `seeds` 80/20 draws. `variants`: extra `utpm-hist` runs with these overrides (ablations). `served`:
    each `utpm-hist` run's test users are also ranked from their requests (`SERVED_MODEL`).
    """
    from utpm.models.losses import LOSS_NAMES
    from utpm.models.presets import get_preset
    from utpm.models.registry import default_loss
    from utpm.training.history import DEFAULT_HISTORY_LOSS

    path = str(data_path)
    seed_list = list(range(folds * repeats)) if folds > 0 else list(range(seeds))
    jobs: list[Job] = []
    for m in models:
        for loss in losses:
            if m.startswith(DEFAULT_MODEL):
                chosen = DEFAULT_HISTORY_LOSS if loss in ("default", "separate") else loss
            else:
                chosen = default_loss(m) if loss == "default" else loss
                if chosen not in LOSS_NAMES:  # refused now, not when its first job starts
                    raise ExperimentError(f"--loss {loss}: not a loss of {m} (valid: {', '.join(LOSS_NAMES)})")
            rank_served = served and m.startswith(DEFAULT_MODEL)
            jobs.extend(Job(m, chosen, s, preset, epochs=epochs, folds=folds, served=rank_served) for s in seed_list)
    for over in variants:
        ov = dict(over)
        loss = str(ov.pop("loss", DEFAULT_HISTORY_LOSS))
        jobs.extend(Job(DEFAULT_MODEL, loss, s, preset, tuple(ov.items()), epochs, folds, served) for s in seed_list)
    if hparams:
        for key, values in HPARAM_GRID.items():
            for v in values:
                jobs.extend(
                    Job("utpm", "joint", s, preset, ((key, v),), epochs, folds) for s in range(hparam_seeds or seeds)
                )
    jobs = list(dict.fromkeys(jobs))
    # a variant that cannot run is refused now, not after the jobs before it: one job per variant
    first_of = {(j.loss, j.overrides): j for j in reversed(jobs) if j.model.startswith(DEFAULT_MODEL)}
    for job in first_of.values():
        try:
            history_config(job, ks)
        except (TypeError, ValueError) as e:
            variant = ",".join(f"{k}={v}" for k, v in job.overrides)
            raise ExperimentError(f"variant {variant!r} cannot run: {e}") from None
    split0 = split_protocol(experiment_dataset(path), seed=0)
    protocol = {**split0.protocol_info(), "seeds": seed_list, "preset": get_preset(preset).to_dict(), "ks": list(ks)}
    if folds > 0:
        protocol.update(folds=folds, repeats=repeats)
    result = ExperimentResult(dataset=path, protocol=protocol)
    result.runs.extend(yardstick_runs(path, seed_list, ks, get_preset(preset).N, folds))
    workers = workers or min(2, os.cpu_count() or 1)
    done = 0
    # a fold can train for many minutes: its workers report every epoch through this queue (a
    # manager process, started only when someone listens)
    listening = multiprocessing.Manager() if progress is not None else contextlib.nullcontext()
    stop = multiprocessing.get_context().Event()  # handed to each worker as it starts
    with (
        listening as manager,
        ProcessPoolExecutor(max_workers=workers, initializer=_worker_start, initargs=(stop,)) as pool,
    ):
        updates = manager.Queue() if manager is not None else None
        futures = {pool.submit(run_job, path, job, tuple(ks), updates): job for job in jobs}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            while updates is not None and progress is not None:
                try:
                    label, epoch, total, val = updates.get_nowait()
                except queue.Empty:
                    break
                score = "" if val is None else f", validation score {val:.4f}"
                what = f"epoch {epoch}/{total}{score}" if epoch else "started"
                progress(done, len(jobs), f"{label}: {what}")
            for fut in finished:
                try:
                    run = fut.result()
                    result.runs.extend([run, run.pop("served_run")] if "served_run" in run else [run])
                except Exception as e:  # the rest are not run: those queued are cancelled, and
                    stop.set()  # those running end at their next epoch (JobStopped)
                    pool.shutdown(wait=True, cancel_futures=True)
                    if isinstance(e, ValueError):  # a job this data cannot make (DataError too)
                        raise ExperimentError(f"{futures[fut].label}: {e}") from None
                    raise
                done += 1
                if progress is not None:
                    progress(done, len(jobs), f"{futures[fut].label}: done")
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
