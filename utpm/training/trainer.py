"""The training loop: Adam, shuffled samples, early stopping on validation Prec@K.

Training, validation and test users come from the paper's protocol; validation users are a seeded
share of the training users. Vocabularies (input fields and tags) are built from the remaining
training users only.
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

from utpm.data.protocol import ProtocolSplit
from utpm.evaluation.metrics import precision_at_k
from utpm.features.encoding import FeatureEncoder
from utpm.features.vocab import Vocabulary
from utpm.models.losses import LOSS_NAMES, joint_loss, separate_loss
from utpm.models.presets import Preset
from utpm.models.registry import build_model
from utpm.models.user_model import UserModel
from utpm.training.run import save_run
from utpm.training.samples import SampleSet, build_encoder, build_tag_vocab, encode_rows

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
    val_fraction: float = 0.1
    min_count: int = 2
    negatives_per_positive: int = 1
    early_stop_k: int = 3
    eval_ks: tuple[int, ...] = (1, 2, 3)
    threads: int = 0  # 0: torch's default

    def __post_init__(self) -> None:
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"unknown loss {self.loss!r}; valid: {LOSS_NAMES}")
        if self.early_stop_k < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("early_stop_k, epochs and batch_size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preset"] = self.preset.to_dict()
        d["eval_ks"] = list(self.eval_ks)
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


def train(
    split: ProtocolSplit,
    config: TrainConfig,
    out: Path | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train `config.model` on the protocol's training users; save a run directory to `out` if given."""
    if config.threads:
        torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    train_all = split.indices(test=False)
    test_rows = split.indices(test=True)
    perm = rng.permutation(train_all)
    n_val = max(1, round(len(perm) * config.val_fraction))
    val_rows, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    p = config.preset
    encoder = build_encoder(split, train_rows, p.H, config.min_count)
    tags = build_tag_vocab(split, train_rows, p.N)
    samples = SampleSet(split, encoder, tags, train_rows, p.K, p.N, config.negatives_per_positive, config.seed)
    if len(samples) == 0:
        raise ValueError("no training samples: the training users' label items have no known tags")
    model = build_model(config.model, encoder.specs, len(tags), p, seed=config.seed)
    optim = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    torch.manual_seed(config.seed)

    best_score, best_epoch, best_state, bad_epochs = -1.0, 0, None, 0
    curve: list[dict[str, float]] = []
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
        val, _ = evaluate_rows(model, split, encoder, tags, val_rows, config.eval_ks)
        score = (
            val.get(config.early_stop_k)
            or evaluate_rows(model, split, encoder, tags, val_rows, (config.early_stop_k,))[0][config.early_stop_k]
        )
        point = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "seconds": time.perf_counter() - t0,
            **{f"val_prec@{k}": v for k, v in val.items()},
        }
        curve.append(point)
        if progress is not None:
            progress(epoch, config.epochs, point)
        if score > best_score:
            best_score, best_epoch, bad_epochs = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
            if bad_epochs >= config.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    val, _ = evaluate_rows(model, split, encoder, tags, val_rows, config.eval_ks)
    test, skipped = evaluate_rows(model, split, encoder, tags, test_rows, config.eval_ks) if len(test_rows) else ({}, 0)
    result = TrainResult(
        model=model,
        encoder=encoder,
        tags=tags,
        best_epoch=best_epoch,
        val=val,
        test=test,
        curve=curve,
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
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
