"""The tag tables' warm start (`TrainConfig.tag_vectors`), which the 1M-tag serving benchmark's
bundle is trained with: the given vectors land in the output tag table and the tag-valued input
tables, stay there when frozen, and a file that does not fit is refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.datasets import synthetic_dataset
from utpm.data.protocol import split_protocol
from utpm.features.vocab import Vocabulary
from utpm.models.history import HISTORY_MODEL
from utpm.models.presets import get_preset
from utpm.training.history import as_history_config
from utpm.training.trainer import TrainConfig, train

TINY = get_preset("tiny")
GIVEN = ["t00", "t01", "t10", "t21"]  # some of the synthetic data's tags; the others keep a random start


def _vectors(path: Path, dim: int, tokens: list[str] = GIVEN) -> np.ndarray:
    vectors = np.random.default_rng(7).normal(size=(len(tokens), dim)).astype(np.float32)
    np.savez(path, tokens=np.array(tokens), vectors=vectors)
    return vectors


def _rows(table: torch.Tensor, vocab: Vocabulary, tokens: list[str]) -> np.ndarray:
    return table.detach().numpy()[[vocab.tokens.index(t) for t in tokens]]


@pytest.mark.parametrize("model", ["utpm", HISTORY_MODEL])
def test_frozen_tag_vectors_are_the_trained_models_tag_tables(model: str, tmp_path: Path) -> None:
    split = split_protocol(synthetic_dataset(n_users=30, events=30), seed=0)
    path = tmp_path / "vectors.npz"
    config = TrainConfig(model=model, preset=TINY, epochs=2, seed=0, augment_cuts=(), freeze_tag_vectors=True)
    dim = as_history_config(config).preset.U if model == HISTORY_MODEL else TINY.U  # utpm-hist has its own sizes
    given = _vectors(path, dim)
    config.tag_vectors = str(path)
    result = train(split, config)
    base = getattr(result.model, "base", result.model)  # utpm-hist wraps the paper's tower
    assert np.array_equal(_rows(base.tag_embedding.weight, result.tags, GIVEN), given)
    others = [t for t in result.tags.tokens[Vocabulary.OOV + 1 :] if t not in GIVEN]
    assert others and not np.isin(_rows(base.tag_embedding.weight, result.tags, others), given).any()
    specs = {s.name: i for i, s in enumerate(result.encoder.specs)}
    clicked = base.embedding.tables[specs["clicked_tags"]].weight
    assert isinstance(clicked, torch.Tensor)
    assert clicked.shape[1] == dim  # both presets' input tables have the tag table's size, so they take them too
    assert np.array_equal(_rows(clicked, result.encoder.vocabs["clicked_tags"], GIVEN), given)


def test_unfrozen_tag_vectors_are_only_the_start(tmp_path: Path) -> None:
    split = split_protocol(synthetic_dataset(n_users=30, events=30), seed=0)
    path = tmp_path / "vectors.npz"
    given = _vectors(path, TINY.U)
    result = train(split, TrainConfig(preset=TINY, epochs=2, seed=0, augment_cuts=(), tag_vectors=str(path)))
    trained = _rows(result.model.tag_embedding.weight, result.tags, GIVEN)
    assert not np.array_equal(trained, given)  # trained on from there
    assert np.abs(trained - given).max() < 1.0  # ... and not from a fresh random start


def test_vectors_that_do_not_fit_are_refused_naming_the_problem(tmp_path: Path) -> None:
    split = split_protocol(synthetic_dataset(n_users=12, events=30), seed=0)
    wrong_dim = tmp_path / "wide.npz"
    _vectors(wrong_dim, TINY.U + 3)
    with pytest.raises(ValueError, match=rf"{TINY.U + 3} dimensions, the tag table {TINY.U}"):
        train(split, TrainConfig(preset=TINY, epochs=1, augment_cuts=(), tag_vectors=str(wrong_dim)))
    mismatched = tmp_path / "short.npz"
    np.savez(mismatched, tokens=np.array(GIVEN), vectors=np.zeros((2, TINY.U), np.float32))
    with pytest.raises(ValueError, match=r"expected tokens \(T,\) and vectors \(T, U\), got 4 and \(2, "):
        train(split, TrainConfig(preset=TINY, epochs=1, augment_cuts=(), tag_vectors=str(mismatched)))
