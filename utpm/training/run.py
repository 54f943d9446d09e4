"""A run directory: what training leaves behind and what export, evaluation and serving read.

RUN/config.json      model name, loss, preset, seed, training settings, protocol, data source
RUN/model.pt         the best state_dict (by validation Prec@K)
RUN/encoder/         fields.json and one vocabulary per input field
RUN/tags.json        the tag vocabulary of the predicting layer (row i of the tag embeddings)
RUN/curve.json       per epoch: training loss, validation Prec@K, seconds
RUN/metrics.json     best epoch, validation and test Prec@K, samples/s
RUN/history_encoder.npz  the default model's per-tag arrays (HistoryEncoder.to_arrays), when it has any
"""

from __future__ import annotations

import json
import shutil
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


HISTORY_ARRAYS_FILE = "history_encoder.npz"
# The files above: a new run removes a previous run's first, so that none is exported with it
# (a vocabulary of a field the new run lacks, arrays the new model does not have).
RUN_FILES = ("config.json", "model.pt", "tags.json", "curve.json", "metrics.json", HISTORY_ARRAYS_FILE)
RUN_DIRS = ("encoder",)


def save_run(
    path: Path, config: dict[str, Any], model: torch.nn.Module, encoder: FeatureEncoder, tags: Vocabulary
) -> None:
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(path / name, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2, default=str))
    torch.save(model.state_dict(), path / "model.pt")
    encoder.save(path / "encoder")
    tags.save(path / "tags.json")


class RunError(ValueError):
    """A run directory that cannot be read back: the message names the file and what is wrong with it."""


def load_run(path: str | Path) -> Run:
    """Rebuild the trained model of a run directory (eval mode); RunError names what is unreadable."""
    p = Path(path)
    config_file = p / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{p} is not a run directory (no config.json); train one with `utpm train`")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{config_file}: not readable JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), str) or "preset" not in config:
        raise RunError(
            f"{config_file}: not a run's config (a JSON object with 'model' and 'preset', as `utpm train` writes)"
        )
    try:
        encoder = FeatureEncoder.load(p / "encoder")
        tags = Vocabulary.load(p / "tags.json")
        preset = Preset.from_dict(config["preset"])
        if config["model"] == HISTORY_MODEL:
            options = HistoryOptions.from_dict(config.get("history", {}))
            model: UserModel | HistoryModel = build_history_model(encoder.specs, len(tags), preset, options, seed=0)
        else:
            model = build_model(config["model"], encoder.specs, len(tags), preset, seed=0)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunError(
            f"{p}: the run's config, encoder or tags cannot be read back ({type(e).__name__}: {e})"
        ) from None
    try:
        state = torch.load(p / "model.pt", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise RunError(
            f"{p / 'model.pt'}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        what = " ".join(line.strip() for line in str(e).splitlines()[1:]) or str(e)  # line 0: "Error(s) in ..."
        raise RunError(f"{p / 'model.pt'}: does not fit the model config.json describes ({what[:300]})") from None
    model.eval()
    return Run(p, config, model, encoder, tags)
