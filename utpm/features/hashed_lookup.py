"""Vocabulary lookups through a compiled hash table, for vocabularies too large for a dict to stay in cache.

A Python dict of a million strings costs two or three cache misses per lookup (its index, its entry,
the key string it compares); this table holds (hash, id) pairs side by side, so a lookup is the
string's `hash()` and one probe. A value is taken as a token when their 64-bit `hash()` values are
equal: with the per-process random hash key, an unknown value matches one of n tokens with
probability n / 2^64 (5e-14 at a million tokens). Tokens that share a hash with another token are
marked and looked up in the dict. `hash()` of a string differs between processes, so the table is
built in the process that uses it and never pickled (`Vocabulary.__getstate__`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from utpm.features.compiled import compiled

AMBIGUOUS = -2  # a hash two tokens share: the dict decides


@compiled
def _build(hashes, ids, size):  # pragma: no cover - compiled
    mask = size - 1
    keys = np.zeros(size, np.int64)
    slot_ids = np.full(size, -1, np.int64)
    for i in range(len(hashes)):
        h = hashes[i]
        s = h & mask
        while slot_ids[s] != -1 and keys[s] != h:
            s = (s + 1) & mask
        if slot_ids[s] == -1:
            keys[s] = h
            slot_ids[s] = ids[i]
        elif slot_ids[s] != ids[i]:
            slot_ids[s] = AMBIGUOUS
    return keys, slot_ids


@compiled
def _probe(keys, slot_ids, hashes, oov, out):  # pragma: no cover - compiled
    mask = len(keys) - 1
    for j in range(len(hashes)):
        h = hashes[j]
        s = h & mask
        found = oov
        while slot_ids[s] != -1:
            if keys[s] == h:
                found = slot_ids[s]
                break
            s = (s + 1) & mask
        out[j] = found


class HashedLookup:
    """`ids(values, n)`: what `np.fromiter(map(lookup.get, values, repeat(oov)), np.int64, n)` gives."""

    def __init__(self, tokens: Sequence[str], lookup: Mapping[str, int], oov: int) -> None:
        self.lookup, self.oov = lookup, oov
        hashes = np.fromiter(map(hash, tokens), np.int64, len(tokens))
        ids = np.fromiter(map(lookup.__getitem__, tokens), np.int64, len(tokens))
        size = 1 << max(4, (2 * len(tokens) - 1).bit_length())  # at most half full: short probes
        self.keys, self.slot_ids = _build(hashes, ids, size)

    def ids(self, values: Iterable[str], n: int) -> np.ndarray:
        values = values if isinstance(values, list) else list(values)
        out = np.empty(n, np.int64)
        _probe(self.keys, self.slot_ids, np.fromiter(map(hash, values), np.int64, n), self.oov, out)
        for j in np.flatnonzero(out == AMBIGUOUS).tolist():
            out[j] = self.lookup.get(values[j], self.oov)
        return out
