"""The training loop of the paper's models: Adam, shuffled samples, early stopping on validation Prec@K.

Training, validation and test users come from the paper's protocol; validation users are a seeded
share of the training users. Vocabularies (input fields and tags) are built from the remaining
training users only. Why the defaults of `TrainConfig` are what they are (augmented cuts, ten
negatives per positive, a 20% validation share scored on Prec@1..3), with the measurements and
the commands behind them: docs/training.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utpm.data.loading import Dataset
from utpm.data.protocol import ProtocolSplit, split_protocol
from utpm.evaluation.metrics import precision_at_k
from utpm.features.encoding import FeatureEncoder
from utpm.features.vocab import Vocabulary
from utpm.models.history import HISTORY_MODEL
from utpm.models.losses import LOSS_NAMES, joint_loss, separate_loss
from utpm.models.presets import Preset
from utpm.models.registry import build_model
from utpm.models.user_model import UserModel
from utpm.training.early_stopping import EarlyStopping, epoch_point
from utpm.training.run import HISTORY_ARRAYS_FILE, save_run
from utpm.training.samples import SampleSet, build_encoder, build_tag_vocab, encode_rows
from utpm.training.warm_start import apply_tag_vectors

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that decides a training run besides the data."""

    model: str = "utpm"
    loss: str = "joint"
    preset: Preset = field(default_factory=lambda: Preset("movielens", E=16, H=10, T=8, F=8, C=4, U=16, K=10, N=3))
    seed: int = 0
    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-5
    patience: int = 5
    # Share of the training users held out to choose the epoch (see the module docstring).
    val_fraction: float = 0.2
    min_count: int = 2
    # Uniform pseudo-item negatives per label-1 item (`SampleSet`).
    negatives_per_positive: int = 10
    # The epoch kept is the one with the best mean validation Prec@k over these k.
    early_stop_ks: tuple[int, ...] = (1, 2, 3)
    # Extra history fractions at which *training* users are cut again (each one more training
    # example per user); validation and test users keep the protocol's cut. Needs `train(data=...)`.
    augment_cuts: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    eval_ks: tuple[int, ...] = (1, 2, 3)
    threads: int = 0  # 0: torch's default
    # A training budget: gradient steps on a seeded sample of this many training users (0: all);
    # the vocabularies still come from every training user, so every tag stays servable.
    max_train_users: int = 0
    # Warm start of the tag tables from an .npz of (tokens, vectors), optionally frozen
    # (`utpm.training.warm_start`; the serving benchmark's bundle uses it).
    tag_vectors: str = ""
    freeze_tag_vectors: bool = False

    def __post_init__(self) -> None:
        # utpm-hist's losses are checked by HistoryTrainConfig (`as_history_config` in train)
        if self.model != HISTORY_MODEL and self.loss not in LOSS_NAMES:
            raise ValueError(f"unknown loss {self.loss!r}; valid: {LOSS_NAMES}")
        if not self.early_stop_ks or min(self.early_stop_ks) < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("early_stop_ks must be non-empty and >= 1; epochs and batch_size must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:  # 0: no validation, the last epoch is kept
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_train_users < 0:
            raise ValueError(f"max_train_users must be >= 0, got {self.max_train_users}")
        if any(not 0.0 < c < 1.0 for c in self.augment_cuts):
            raise ValueError(f"augment_cuts must lie in (0, 1), got {self.augment_cuts}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preset"] = self.preset.to_dict()
        d["eval_ks"] = list(self.eval_ks)
        d["early_stop_ks"] = list(self.early_stop_ks)
        d["augment_cuts"] = list(self.augment_cuts)
        return d


@dataclass
class TrainResult:
    model: UserModel
    encoder: FeatureEncoder
    tags: Vocabulary
    best_epoch: int
    val: dict[int, float]
    test: dict[int, float]
    curve: list[dict[str, float]]
    samples_per_s: float
    train_users: int
    val_users: int
    test_users: int
    skipped_test_users: int


def rank_tags(
    model: UserModel,
    ids: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    tags: Vocabulary,
    k: int,
    batch_size: int = 1024,
) -> list[list[str]]:
    """Top-k tags by u . t for each user (padding and OOV rows excluded)."""
    out: list[list[str]] = []
    model.eval()
    weight = model.tag_embedding.weight.detach()
    k = min(k, len(tags) - 2)
    with torch.no_grad():
        for lo in range(0, len(ids[0]), batch_size):
            u = model(
                [torch.from_numpy(x[lo : lo + batch_size]) for x in ids],
                [torch.from_numpy(m[lo : lo + batch_size]) for m in masks],
            )
            scores = u @ weight.T  # (B, n_tags)
            scores[:, : Vocabulary.OOV + 1] = -torch.inf
            top = scores.topk(k, dim=1).indices.numpy()
            out.extend([[tags.token(int(t)) for t in row] for row in top])
    return out


def evaluate_rows(
    model: UserModel,
    split: ProtocolSplit,
    encoder: FeatureEncoder,
    tags: Vocabulary,
    rows: np.ndarray,
    ks: Sequence[int],
) -> tuple[dict[int, float], int]:
    """Prec@K (Eq. 5) for users `rows`; returns ({k: value}, users skipped for an empty C)."""
    ids, masks = encode_rows(split, encoder, rows)
    ranked = rank_tags(model, ids, masks, tags, max(ks))
    clicked = [split.clicked_tags(int(i), model.preset.N) for i in rows]
    results = {k: precision_at_k(ranked, clicked, k) for k in ks}
    return {k: r.value for k, r in results.items()}, results[ks[0]].skipped_users


def training_samples(
    split: ProtocolSplit,
    config: TrainConfig,
    rows: np.ndarray,
    encoder: FeatureEncoder,
    tags: Vocabulary,
    data: Dataset | None = None,
) -> SampleSet:
    """Samples of users `rows` at the protocol's cut, plus one more set per `config.augment_cuts`.

    Each extra cut re-applies the protocol to `data` at that history fraction (same seed, same
    `max_history`) and keeps the same users, identified by user id: their history is shorter and
    their label period longer, one more (history -> what came next) example each. Encoder and tag
    vocabulary stay those of the protocol's cut. Without `data` the cuts cannot be made; they are
    skipped with a warning, so a caller holding only a split still trains.
    """
    p = config.preset
    r = config.negatives_per_positive
    samples = SampleSet(split, encoder, tags, rows, p.K, p.N, r, config.seed)
    if not config.augment_cuts:
        return samples
    if data is None:
        log.warning("augment_cuts %s skipped: train(..., data=...) was not given the data set", config.augment_cuts)
        return samples
    users = split.user_ids[rows]
    for cut in config.augment_cuts:
        other = split_protocol(
            data,
            seed=split.seed,
            history_fraction=cut,
            test_fraction=split.test_fraction,
            max_history=split.max_history,
        )
        other_rows = np.flatnonzero(np.isin(other.user_ids, users))
        samples.extend(SampleSet(other, encoder, tags, other_rows, p.K, p.N, r, config.seed))
    return samples


def train(
    split: ProtocolSplit,
    config: TrainConfig,
    data: Dataset | None = None,
    out: Path | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train `config.model` on the protocol's training users; save a run directory to `out` if given.

    `data` is the data set `split` was made from; it is needed for `config.augment_cuts`.
    `config.model == "utpm-hist"` (the default model) trains through `utpm.training.history`.
    """
    if config.model == HISTORY_MODEL:
        from utpm.training.history import as_history_config, train_history

        return train_history(split, as_history_config(config), out=out, progress=progress)
    if config.threads:
        torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    train_all = split.indices(test=False)
    test_rows = split.indices(test=True)
    perm = rng.permutation(train_all)
    n_val = max(1, round(len(perm) * config.val_fraction)) if config.val_fraction > 0 else 0
    val_rows, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    p = config.preset
    encoder = build_encoder(split, train_rows, p.H, config.min_count)
    tags = build_tag_vocab(split, train_rows, p.N)
    if 0 < config.max_train_users < len(train_rows):
        step_rows = np.sort(rng.choice(train_rows, config.max_train_users, replace=False))
    else:
        step_rows = train_rows
    samples = training_samples(split, config, step_rows, encoder, tags, data)
    if len(samples) == 0:
        raise ValueError("no training samples: the training users' label items have no known tags")
    model = build_model(config.model, encoder.specs, len(tags), p, seed=config.seed)
    if config.tag_vectors:
        warmed = apply_tag_vectors(model, encoder, tags, config.tag_vectors, config.freeze_tag_vectors)
        log.info("tag tables started from %s: %s", config.tag_vectors, warmed)
    trainable = [q for q in model.parameters() if q.requires_grad]
    optim = torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)
    torch.manual_seed(config.seed)

    val_ks = tuple(sorted(set(config.eval_ks) | set(config.early_stop_ks)))
    stopper = EarlyStopping(config.patience)
    seen, train_seconds = 0, 0.0
    for epoch in range(1, config.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        losses = []
        for b in samples.batches(config.batch_size, rng):
            ids = [torch.from_numpy(x) for x in b.ids]
            masks = [torch.from_numpy(m) for m in b.masks]
            item_tags, tag_mask = torch.from_numpy(b.item_tags), torch.from_numpy(b.tag_mask)
            labels, label_mask = torch.from_numpy(b.labels), torch.from_numpy(b.label_mask)
            u = model(ids, masks)
            if config.loss == "joint":
                loss = joint_loss(model.item_logits(u, item_tags, tag_mask), labels, label_mask)
            else:
                loss = separate_loss(model.tag_logits(u, item_tags, tag_mask), labels, tag_mask, label_mask)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            losses.append(float(loss.detach()))
            seen += len(b.labels)
        train_seconds += time.perf_counter() - t0
        if len(val_rows):
            val, _ = evaluate_rows(model, split, encoder, tags, val_rows, val_ks)
            score = float(np.mean([val[k] for k in config.early_stop_ks]))
        else:  # no validation users: every epoch is the best so far, the last one is kept
            val, score = {}, float(epoch)
        point = epoch_point(epoch, losses, time.perf_counter() - t0, val, score)
        if stopper.update(model, epoch, score, point, progress, config.epochs):
            break
    stopper.restore(model)
    for q in model.parameters():
        q.requires_grad_(True)  # frozen only while training; export traces a plain model
    ks = config.eval_ks  # () skips evaluation, e.g. for a budgeted run over a million tags
    val, _ = evaluate_rows(model, split, encoder, tags, val_rows, ks) if len(val_rows) and ks else ({}, 0)
    test, skipped = evaluate_rows(model, split, encoder, tags, test_rows, ks) if len(test_rows) and ks else ({}, 0)
    result = TrainResult(
        model=model,
        encoder=encoder,
        tags=tags,
        best_epoch=stopper.best_epoch,
        val=val,
        test=test,
        curve=stopper.curve,
        samples_per_s=seen / train_seconds if train_seconds else 0.0,
        train_users=len(train_rows),
        val_users=len(val_rows),
        test_users=len(test_rows),
        skipped_test_users=skipped,
    )
    if out is not None:
        save_training(out, split, config, result)
    return result


def save_training(out: Path, split: ProtocolSplit, config: TrainConfig, result: TrainResult) -> None:
    import json

    run_config = {**config.to_dict(), "protocol": split.protocol_info()}
    save_run(out, run_config, result.model, result.encoder, result.tags)
    (out / "curve.json").write_text(json.dumps(result.curve, indent=2))
    metrics = {
        "best_epoch": result.best_epoch,
        "val": {f"prec@{k}": v for k, v in result.val.items()},
        "test": {f"prec@{k}": v for k, v in result.test.items()},
        "samples_per_s": result.samples_per_s,
        "users": {
            "train": result.train_users,
            "val": result.val_users,
            "test": result.test_users,
            "test_skipped_empty_C": result.skipped_test_users,
        },
    }
    start = getattr(result, "start", None)  # the default model's starting point (HistoryTrainResult)
    if start:
        metrics["start"] = start
        metrics["best_epoch_ungated"] = getattr(result, "best_epoch_ungated", result.best_epoch)  # before its gate
    trained_with = getattr(result, "loss", "")  # the default model's loss, where the vocabulary changed it
    if trained_with:
        metrics["loss"] = trained_with
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    # Per-tag data the history features need at serving (HistoryEncoder.to_arrays), if it has any.
    henc = getattr(result, "history_encoder", None)
    arrays = henc.to_arrays() if henc is not None else {}
    if arrays:
        np.savez(out / HISTORY_ARRAYS_FILE, **arrays)
