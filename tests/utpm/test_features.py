"""Vocabularies and the shared raw-string -> id encoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from utpm.features import FeatureEncoder, FieldKind, FieldSpec, Vocabulary
from utpm.features.encoding import recent_unique


def test_vocabulary_min_count_oov_and_determinism() -> None:
    values = ["a", "b", "a", "c", "a", "b", "d"]
    v = Vocabulary.build(values, min_count=2)
    assert v.tokens == ["<pad>", "<oov>", "a", "b"]
    assert v.counts == [0, 2, 3, 2]
    assert v.id("a") == 2 and v.id("c") == Vocabulary.OOV and v.id("never") == Vocabulary.OOV
    assert v.id("<pad>") == Vocabulary.OOV  # the padding token is not a value
    assert "a" in v and "c" not in v and "<oov>" not in v
    assert Vocabulary.build(list(reversed(values)), min_count=2) == v


def test_vocabulary_round_trip(tmp_path: Path) -> None:
    v = Vocabulary.build(["é", "中文", "x", "x", "with space"], min_count=1)
    v.save(tmp_path / "v.json")
    w = Vocabulary.load(tmp_path / "v.json")
    assert w == v and w.id("中文") == v.id("中文")


def test_recent_unique_keeps_most_recent_occurrences() -> None:
    assert recent_unique([1, 2, 3, 2, 4], 10) == [1, 3, 2, 4]
    assert recent_unique([1, 2, 3, 2, 4], 2) == [2, 4]
    assert recent_unique([], 3) == []


def make_encoder() -> FeatureEncoder:
    tags = Vocabulary.build(["a", "b", "c", "d"])
    gender = Vocabulary.build(["f", "m"])
    specs = [FieldSpec("clicked_tags", FieldKind.MULTI, len(tags), 3), FieldSpec("gender", FieldKind.SINGLE, 4, 1)]
    return FeatureEncoder(specs, {"clicked_tags": tags, "gender": gender})


def test_encoder_pads_truncates_and_reports_unknowns() -> None:
    enc = make_encoder()
    batch = enc.encode(
        [
            {"clicked_tags": ["a", "b", "zz", "c", "d"], "gender": "f"},
            {},
            {"clicked_tags": ["q1", "q2"]},
        ]
    )
    ids, mask = batch.ids["clicked_tags"], batch.mask["clicked_tags"]
    v = enc.vocabs["clicked_tags"]
    assert ids[0].tolist() == [v.id("zz"), v.id("c"), v.id("d")] and mask[0].tolist() == [1, 1, 1]
    assert ids[1].tolist() == [0, 0, 0] and mask[1].sum() == 0
    assert ids[2].tolist() == [Vocabulary.OOV, 0, 0]  # two unknowns share one OOV slot
    assert batch.unknown[2] == {"clicked_tags": ["q1", "q2"]}
    assert batch.unknown[0] == {"clicked_tags": ["zz"]}
    assert batch.ids["gender"].tolist() == [[enc.vocabs["gender"].id("f")], [0], [0]]


def test_encoder_rejects_unknown_fields_listing_valid_ones() -> None:
    with pytest.raises(KeyError, match=r"unknown field\(s\) \['age'\]; valid fields: \['clicked_tags', 'gender'\]"):
        make_encoder().encode([{"age": "3"}])


def test_encoder_round_trip(tmp_path: Path) -> None:
    enc = make_encoder()
    enc.save(tmp_path)
    back = FeatureEncoder.load(tmp_path)
    user = [{"clicked_tags": ["b", "a"], "gender": "m"}]
    assert back.specs == enc.specs
    for f in enc.field_names:
        assert np.array_equal(back.encode(user).ids[f], enc.encode(user).ids[f])
