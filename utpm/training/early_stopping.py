"""Keep the weights of the best validation epoch; stop after `patience` epochs without a gain.

Shared by the paper models' loop (`trainer.train`) and the default model's (`history.train_history`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch


class EarlyStopping:
    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_score, self.best_epoch, self.bad_epochs = -1.0, 0, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.start_score = -1.0
        self.start_state: dict[str, torch.Tensor] | None = None
        self.curve: list[dict[str, float]] = []

    def start(self, model: torch.nn.Module, score: float, point: dict[str, float]) -> None:
        """Count the weights before training as epoch 0 (a model that starts from a good point)."""
        self.best_score, self.best_state = score, _snapshot(model)
        self.start_score, self.start_state = score, self.best_state
        self.curve.append(point)

    def fall_back_to_start(self) -> None:
        """Keep epoch 0 (the weights `start` saw) after all: the caller found the best epoch's gain too small."""
        if self.start_state is None:
            raise RuntimeError("no starting point was recorded")
        self.best_score, self.best_epoch, self.best_state = self.start_score, 0, self.start_state

    def update(
        self,
        model: torch.nn.Module,
        epoch: int,
        score: float,
        point: dict[str, Any],
        progress: Callable[[int, int, dict[str, float]], None] | None,
        epochs: int,
    ) -> bool:
        """Record the epoch's curve point; True when training should stop."""
        self.curve.append(point)
        if progress is not None:
            progress(epoch, epochs, point)
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_state = _snapshot(model)
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        if self.best_state is None:
            raise RuntimeError("no epoch was recorded")
        model.load_state_dict(self.best_state)
        model.eval()


def epoch_point(
    epoch: int, losses: list[float], seconds: float, val: dict[int, float], score: float
) -> dict[str, float]:
    """One row of `curve.json`."""
    return {
        "epoch": epoch,
        "loss": float(np.mean(losses)),
        "seconds": seconds,
        **{f"val_prec@{k}": v for k, v in val.items()},
        "val_score": score,
    }


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
