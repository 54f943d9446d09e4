"""Raw user features (strings) -> padded id matrices and masks, identical in training and serving."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utpm.features.spec import FieldKind, FieldSpec
from utpm.features.vocab import Vocabulary

RawFeatures = Mapping[str, Sequence[str]]


@dataclass
class EncodedBatch:
    """Model input for B users.

    ids[f]: (B, H_f) int64, 0 where padded; mask[f]: (B, H_f) float32, 1 for real values.
    unknown[b][f]: the raw values of user b in field f that mapped to the OOV bucket.
    """

    ids: dict[str, np.ndarray]
    mask: dict[str, np.ndarray]
    unknown: list[dict[str, list[str]]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(next(iter(self.ids.values()))) if self.ids else 0


def recent_unique(ids: Sequence[int], max_len: int) -> list[int]:
    """Deduplicate keeping each id's most recent occurrence, then keep the `max_len` most recent.

    Lists are ordered oldest -> newest, so the tail is the most recent. The result keeps that order.
    """
    # dict.fromkeys over the reversed list keeps each id's first (= most recent) occurrence, in C.
    newest_first = list(dict.fromkeys(reversed(ids)))
    del newest_first[max_len:]
    newest_first.reverse()
    return newest_first


class FeatureEncoder:
    """Field specs plus one vocabulary per field; maps raw strings to the model's input."""

    def __init__(self, specs: Sequence[FieldSpec], vocabs: Mapping[str, Vocabulary]) -> None:
        self.specs = list(specs)
        self.vocabs = dict(vocabs)
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate field names: {names}")
        for s in self.specs:
            if s.name not in self.vocabs:
                raise ValueError(f"field {s.name!r} has no vocabulary")
            if len(self.vocabs[s.name]) != s.vocab_size:
                raise ValueError(
                    f"field {s.name!r}: spec says {s.vocab_size} ids, vocabulary has {len(self.vocabs[s.name])}"
                )

    @property
    def field_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def spec(self, name: str) -> FieldSpec:
        for s in self.specs:
            if s.name == name:
                return s
        raise KeyError(name)

    def encode(self, users: Sequence[RawFeatures]) -> EncodedBatch:
        """Encode B users. Fields missing from a user's mapping are empty; unknown field names raise."""
        valid = set(self.field_names)
        b = len(users)
        ids = {s.name: np.zeros((b, s.max_len), dtype=np.int64) for s in self.specs}
        mask = {s.name: np.zeros((b, s.max_len), dtype=np.float32) for s in self.specs}
        unknown: list[dict[str, list[str]]] = []
        oov = Vocabulary.OOV
        lookups = {s.name: self.vocabs[s.name].lookup for s in self.specs}
        for row, feats in enumerate(users):
            extra = set(feats) - valid
            if extra:
                raise KeyError(f"unknown field(s) {sorted(extra)}; valid fields: {sorted(valid)}")
            unk: dict[str, list[str]] = {}
            for s in self.specs:
                values = feats.get(s.name) or ()
                if isinstance(values, str):
                    values = (values,)
                get = lookups[s.name].get  # one C call per value: the hot loop of serving
                value_ids = [get(v, oov) for v in values]
                if oov in value_ids:
                    misses = [v for v, i in zip(values, value_ids, strict=True) if i == oov]
                    unk[s.name] = list(dict.fromkeys(misses))
                kept = recent_unique(value_ids, s.max_len)
                ids[s.name][row, : len(kept)] = kept
                mask[s.name][row, : len(kept)] = 1.0
            unknown.append(unk)
        return EncodedBatch(ids=ids, mask=mask, unknown=unknown)

    def save(self, directory: str | Path) -> None:
        """Write `fields.json` and one `vocab_<field>.json` per field into `directory`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for s in self.specs:
            self.vocabs[s.name].save(d / f"vocab_{s.name}.json")
        (d / "fields.json").write_text(json.dumps([s.to_dict() for s in self.specs], indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> FeatureEncoder:
        d = Path(directory)
        specs = [FieldSpec.from_dict(x) for x in json.loads((d / "fields.json").read_text())]
        vocabs = {s.name: Vocabulary.load(d / f"vocab_{s.name}.json") for s in specs}
        return cls(specs, vocabs)


def multi(name: str, vocab: Vocabulary, max_len: int) -> FieldSpec:
    return FieldSpec(name, FieldKind.MULTI, len(vocab), max_len)


def single(name: str, vocab: Vocabulary) -> FieldSpec:
    return FieldSpec(name, FieldKind.SINGLE, len(vocab), 1)
