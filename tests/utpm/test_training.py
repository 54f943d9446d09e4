"""Training: run directories round-trip, samples (K-grouping, negatives), encoding parity, defaults."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.build import BuiltBundle
from tests.datasets import synthetic_dataset
from utpm.data import load_dataset
from utpm.data.protocol import split_protocol
from utpm.models.presets import get_preset
from utpm.training.run import load_run
from utpm.training.samples import SampleSet, build_encoder, build_tag_vocab, encode_rows
from utpm.training.trainer import TrainConfig, rank_tags, train, training_samples

TINY = get_preset("tiny")  # K=3, N=3, H=5


def test_tiny_movielens_run_reads_back_with_identical_outputs(movielens_dir: Path, tmp_path: Path) -> None:
    data = load_dataset(movielens_dir)
    split = split_protocol(data, seed=0)
    out = tmp_path / "run"
    # one extra cut (not the default seven) keeps the test fast and still goes through `data`
    config = TrainConfig(model="utpm", loss="joint", preset=TINY, epochs=2, seed=0, augment_cuts=(0.5,))
    result = train(split, config, data=data, out=out)
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.pt", "encoder", "tags.json", "curve.json"}
    assert 1 <= len(json.loads((out / "curve.json").read_text())) <= 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"] == {f"prec@{k}": v for k, v in result.test.items()}

    run = load_run(out)
    assert run.config["augment_cuts"] == list(config.augment_cuts)
    assert run.encoder.field_names == result.encoder.field_names
    assert run.tags.tokens == result.tags.tokens
    rows = split.indices(test=True)
    ids, masks = encode_rows(split, run.encoder, rows)
    t_ids, t_masks = [torch.from_numpy(x) for x in ids], [torch.from_numpy(m) for m in masks]
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(run.model(t_ids, t_masks), result.model(t_ids, t_masks))
    assert rank_tags(run.model, ids, masks, run.tags, 3) == rank_tags(result.model, ids, masks, result.tags, 3)


def test_samples_group_label_items_per_user_into_k() -> None:
    split = split_protocol(synthetic_dataset(n_users=3, events=30, only_positive=True), seed=0, test_fraction=0.0)
    rows = np.arange(split.n_users)
    encoder = build_encoder(split, rows, TINY.H, 1)
    tags = build_tag_vocab(split, rows, TINY.N)
    s = SampleSet(split, encoder, tags, rows, K=4, N=3, negatives_per_positive=0, seed=0)
    # 30 events -> 24 history, 6 label items per user -> groups of 4 and 2, never across users
    assert (s.sample_end - s.sample_start).tolist() == [4, 2] * 3
    assert all(len(set(s.user[lo:hi].tolist())) == 1 for lo, hi in zip(s.sample_start, s.sample_end, strict=True))
    b = s.batch(np.arange(len(s)))
    assert b.item_tags.shape == (6, 4, 3) and b.labels.shape == b.label_mask.shape == (6, 4)
    assert b.label_mask.sum(axis=1).tolist() == [4, 2] * 3
    assert ((b.tag_mask > 0) == (b.item_tags > 0)).all()
    assert (b.item_tags[b.label_mask == 0] == 0).all()  # padded items carry no tags
    assert len(b.ids) == len(encoder.specs) and all(x.shape[0] == 6 for x in b.ids)


@pytest.mark.parametrize("r", [1, 3])
def test_negatives_are_r_uniform_pseudo_items_per_positive(r: int) -> None:
    split = split_protocol(synthetic_dataset(n_users=6), seed=0, test_fraction=0.0)
    rows = np.arange(split.n_users)
    encoder = build_encoder(split, rows, TINY.H, 1)
    tags = build_tag_vocab(split, rows, TINY.N)
    s = SampleSet(split, encoder, tags, rows, K=3, N=3, negatives_per_positive=r, seed=0)
    plain = s.batch(np.arange(len(s)))
    b = s.with_negatives(plain)
    n, k = plain.labels.shape
    assert b.item_tags.shape == (n, k + r * k, 3) and b.labels.shape == b.label_mask.shape == (n, k + r * k)
    np.testing.assert_array_equal(b.item_tags[:, :k], plain.item_tags)  # real items untouched
    pos = plain.labels * plain.label_mask
    neg_labels, neg_mask, neg_tags = b.labels[:, k:], b.label_mask[:, k:], b.item_tags[:, k:]
    assert (neg_labels == 0).all()
    assert neg_mask.sum() == r * pos.sum()  # r per label-1 item, none for label-0 or padded items
    # each pseudo-item has as many tags as its positive, drawn from real tags (ids >= 2)
    np.testing.assert_array_equal(b.tag_mask[:, k:], np.repeat(plain.tag_mask * pos[:, :, None], r, axis=1))
    assert (neg_tags[b.tag_mask[:, k:] > 0] >= 2).all() and (neg_tags < len(tags)).all()
    assert (neg_tags[b.tag_mask[:, k:] == 0] == 0).all()


def test_encode_rows_equals_feature_encoder_encode(movielens_dir: Path) -> None:
    split = split_protocol(load_dataset(movielens_dir), seed=1)
    train_rows = split.indices(test=False)
    encoder = build_encoder(split, train_rows, TINY.H, 2)
    rows = np.r_[split.indices(test=True)[:40], train_rows[:40]]  # includes values unknown to the vocabularies
    ids, masks = encode_rows(split, encoder, rows)
    ref = encoder.encode([split.features(int(i)) for i in rows])
    for spec, x, m in zip(encoder.specs, ids, masks, strict=True):
        np.testing.assert_array_equal(x, ref.ids[spec.name])
        np.testing.assert_array_equal(m, ref.mask[spec.name])


def test_a_log_with_only_label_1_events_trains_on_sampled_negatives() -> None:
    data = synthetic_dataset(only_positive=True)
    assert (data.events["label"] == 1).all()
    split = split_protocol(data, seed=0)
    config = TrainConfig(preset=TINY, epochs=2, patience=5, negatives_per_positive=2, augment_cuts=(0.5,))
    result = train(split, config, data=data)
    assert len(result.curve) == 2 and all(np.isfinite(p["loss"]) and p["loss"] > 0 for p in result.curve)
    rows = split.indices(test=False)
    s = SampleSet(split, result.encoder, result.tags, rows, TINY.K, TINY.N, 2, seed=0)
    b = next(s.batches(8, np.random.default_rng(0)))
    real = b.label_mask > 0
    assert (b.labels[real] == 1).sum() > 0 and (b.labels[real] == 0).sum() == 2 * (b.labels[real] == 1).sum()


def test_augment_cuts_add_training_examples_of_the_same_users_only(caplog: pytest.LogCaptureFixture) -> None:
    data = synthetic_dataset()
    split = split_protocol(data, seed=0)
    rows = split.indices(test=False)[:5]
    encoder = build_encoder(split, rows, TINY.H, 1)
    tags = build_tag_vocab(split, rows, TINY.N)
    base = training_samples(split, TrainConfig(preset=TINY, augment_cuts=()), rows, encoder, tags, data)
    more = training_samples(split, TrainConfig(preset=TINY, augment_cuts=(0.3, 0.5)), rows, encoder, tags, data)
    assert len(more) > len(base)
    assert more.ids[0].shape[0] == 3 * len(rows)  # the 5 users at 3 cuts, nobody else
    with caplog.at_level(logging.WARNING):
        skipped = training_samples(split, TrainConfig(preset=TINY, augment_cuts=(0.5,)), rows, encoder, tags)
    assert len(skipped) == len(base) and "augment_cuts" in caplog.text


def test_epoch_is_chosen_on_the_mean_validation_precision() -> None:
    data = synthetic_dataset(n_users=20)
    result = train(split_protocol(data, seed=0), TrainConfig(preset=TINY, epochs=3, patience=10), data=data)
    scores = [p["val_score"] for p in result.curve]
    for p in result.curve:
        assert p["val_score"] == pytest.approx(np.mean([p[f"val_prec@{k}"] for k in (1, 2, 3)]))
    assert result.best_epoch == 1 + int(np.argmax(scores))


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="early_stop_ks"):
        TrainConfig(early_stop_ks=())
    with pytest.raises(ValueError, match="augment_cuts"):
        TrainConfig(augment_cuts=(0.0,))
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(val_fraction=1.0)


def test_a_run_written_over_a_previous_one_keeps_none_of_its_files(hist_built: BuiltBundle, tmp_path: Path) -> None:
    """Before, a vocabulary of a field only the previous run had (and the default model's arrays,
    under a paper model's run) stayed in the folder, and export copied the encoder folder, stale
    vocabulary included, into the bundle and its version hash."""
    import shutil

    from utpm.training.run import save_run

    out = tmp_path / "run"
    shutil.copytree(hist_built.run, out)
    (out / "encoder" / "vocab_clicked_account.json").write_text('{"tokens": []}')  # the previous run's field
    (out / "notes.txt").write_text("mine")
    run = load_run(hist_built.run)
    save_run(out, run.config, run.model, run.encoder, run.tags)
    assert sorted(p.name for p in (out / "encoder").iterdir()) == sorted(
        p.name for p in (hist_built.run / "encoder").iterdir()
    )
    assert not (out / "history_encoder.npz").exists()  # save_training writes it again for the default model
    assert (out / "notes.txt").read_text() == "mine"  # only a run's own files are removed
