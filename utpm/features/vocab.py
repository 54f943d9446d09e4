"""String <-> id vocabularies with a padding id, an out-of-vocabulary bucket and a minimum count."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import repeat
from pathlib import Path

import numpy as np

from utpm.features.hashed_lookup import HashedLookup

PAD_TOKEN = "<pad>"
OOV_TOKEN = "<oov>"
# Above this many tokens `ids_of` looks values up in a compiled hash table: the dict no longer stays
# in cache (docs/performance-history.md, "Vocabulary lookups at a million tags (2026-12-06)")
HASHED_MIN_TOKENS = 65_536


class Vocabulary:
    """Maps raw strings to dense ids.

    Id 0 is padding (never a real value) and id 1 the out-of-vocabulary bucket, which stands for
    every value seen fewer than `min_count` times in training or never seen at all. Known values
    get ids 2.. in descending frequency (ties broken by the string), so a vocabulary built twice
    from the same data is identical.
    """

    PAD = 0
    OOV = 1

    def __init__(self, tokens: Sequence[str], counts: Sequence[int] | None = None) -> None:
        tokens = list(tokens)
        if tokens[:2] != [PAD_TOKEN, OOV_TOKEN]:
            raise ValueError(f"a vocabulary starts with {PAD_TOKEN!r}, {OOV_TOKEN!r}; got {tokens[:2]}")
        self.tokens: list[str] = tokens
        self.counts: list[int] = list(counts) if counts is not None else [0] * len(tokens)
        if len(self.counts) != len(self.tokens):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.counts)} counts")
        self._index: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        if len(self._index) != len(tokens):
            raise ValueError("a vocabulary's tokens must be unique")
        # What `id` computes, as a plain dict for `lookup.get(v, OOV)`: the padding token is no value.
        self.lookup: dict[str, int] = {**self._index, PAD_TOKEN: self.OOV}
        self._hashed: HashedLookup | None = None  # built on first use, in the process that uses it
        self._hashed_lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        # hash() of a string differs between processes: the table is rebuilt where it is used
        return {k: v for k, v in self.__dict__.items() if k not in ("_hashed", "_hashed_lock")}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._hashed, self._hashed_lock = None, threading.Lock()

    def ids_of(self, values: Iterable[str], n: int) -> np.ndarray:
        """The ids of n values (int64; unknown ones and the padding token: OOV), as `lookup.get` gives
        them; through a compiled hash table above HASHED_MIN_TOKENS tokens."""
        if len(self.tokens) < HASHED_MIN_TOKENS:
            return np.fromiter(map(self.lookup.get, values, repeat(self.OOV)), np.int64, n)
        if self._hashed is None:
            with self._hashed_lock:
                if self._hashed is None:
                    self._hashed = HashedLookup(self.tokens, self.lookup, self.OOV)
        return self._hashed.ids(values, n)

    @classmethod
    def build(cls, values: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Count `values` and keep those seen at least `min_count` times."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counter = Counter(v for v in values if v not in (PAD_TOKEN, OOV_TOKEN))
        kept = sorted(((v, c) for v, c in counter.items() if c >= min_count), key=lambda vc: (-vc[1], vc[0]))
        oov_count = sum(c for c in counter.values() if c < min_count)
        return cls([PAD_TOKEN, OOV_TOKEN] + [v for v, _ in kept], [0, oov_count] + [c for _, c in kept])

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and value in self._index and self._index[value] > self.OOV

    def id(self, value: str) -> int:
        """The id of `value`, or the OOV bucket."""
        i = self._index.get(value, self.OOV)
        return i if i > self.PAD else self.OOV

    def ids(self, values: Iterable[str]) -> np.ndarray:
        return np.fromiter((self.id(v) for v in values), dtype=np.int64)

    def token(self, i: int) -> str:
        return self.tokens[i]

    def to_json(self) -> dict[str, object]:
        return {"tokens": self.tokens, "counts": self.counts}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Vocabulary:
        tokens = d.get("tokens")
        if not isinstance(tokens, list):
            raise ValueError("vocabulary JSON needs a 'tokens' list")
        counts = d.get("counts")
        return cls(tokens, counts if isinstance(counts, list) else None)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens and self.counts == other.counts

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} ids, {len(self) - 2} known values)"
