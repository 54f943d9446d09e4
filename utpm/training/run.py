"""A run directory: what training leaves behind and what export, evaluation and serving read.

RUN/config.json      model name, loss, preset, seed, training settings, protocol, data source
RUN/model.pt         the best state_dict (by validation Prec@K)
RUN/encoder/         fields.json and one vocabulary per input field
RUN/tags.json        the tag vocabulary of the predicting layer (row i of the tag embeddings)
RUN/curve.json       per epoch: training loss, validation Prec@K, seconds
RUN/metrics.json     best epoch, validation and test Prec@K, samples/s
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from utpm.features.encoding import FeatureEncoder
from utpm.features.vocab import Vocabulary
from utpm.models.history import HISTORY_MODEL, HistoryModel, HistoryOptions, build_history_model
from utpm.models.presets import Preset
from utpm.models.registry import build_model
from utpm.models.user_model import UserModel


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    model: Any  # UserModel, or HistoryModel for utpm-hist
    encoder: FeatureEncoder
    tags: Vocabulary

    @property
    def preset(self) -> Preset:
        return Preset.from_dict(self.config["preset"])


def save_run(
    path: Path, config: dict[str, Any], model: torch.nn.Module, encoder: FeatureEncoder, tags: Vocabulary
) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2, default=str))
    torch.save(model.state_dict(), path / "model.pt")
    encoder.save(path / "encoder")
    tags.save(path / "tags.json")


def load_run(path: str | Path) -> Run:
    """Rebuild the trained model of a run directory (eval mode)."""
    p = Path(path)
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"{p} is not a run directory (no config.json); train one with `utpm train`")
    config = json.loads((p / "config.json").read_text())
    encoder = FeatureEncoder.load(p / "encoder")
    tags = Vocabulary.load(p / "tags.json")
    preset = Preset.from_dict(config["preset"])
    if config["model"] == HISTORY_MODEL:
        options = HistoryOptions.from_dict(config.get("history", {}))
        model: UserModel | HistoryModel = build_history_model(encoder.specs, len(tags), preset, options, seed=0)
    else:
        model = build_model(config["model"], encoder.specs, len(tags), preset, seed=0)
    model.load_state_dict(torch.load(p / "model.pt", weights_only=True))
    model.eval()
    return Run(p, config, model, encoder, tags)
