"""Count-aware user features and per-(user, tag) history features, identical in training and serving.

A multi-valued field is summarised as `FieldStats`: each distinct value with its count, the number of
distinct items it came from, a recency-weighted count and its recency order. Training builds them
from a user's events (`stats_from_sequence` with item ids); the service builds them from a request,
where a field is either a list (values may repeat: each occurrence counts once) or an object
{value: count} (`parse_field`). `HistoryEncoder` then turns them into the history model's input:

- per field the H kept values (most frequent first, ties by recency), their ids and counts;
- per user the history tags (clicked or unclicked tags known to the tag vocabulary) and for each a
  feature vector phi (`PHI_NAMES`) scored by the model's history path.

Torch-free: numpy only, so the service can use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from utpm.features.encoding import FeatureEncoder
from utpm.features.spec import FieldKind
from utpm.features.vocab import Vocabulary

# Recency weight of an occurrence: exp(-DECAY * age), age = share of the history after it (0..1), so
# that it means the same for a list of tag occurrences and for a list of events.
RECENCY_DECAY = 3.0
# Counts above this are clamped: log1p keeps them finite anyway, this keeps the sums exact in float32.
COUNT_CAP = 1e6
TAG_FIELD = "clicked_tags"
UNCLICKED_FIELD = "unclicked_tags"
PHI_NAMES = (
    "log1p_count",
    "log1p_distinct_items",
    "log1p_recency_weighted_count",
    "log1p_unclicked_count",
    "in_most_recent_H",
    "share_of_history",
)


@dataclass
class FieldStats:
    """Distinct values of one field, oldest last occurrence first (the most recent value is last)."""

    values: list[str] = field(default_factory=list)
    count: list[float] = field(default_factory=list)
    distinct: list[float] = field(default_factory=list)
    recency: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)


def stats_from_sequence(seq: Sequence[str], items: Sequence[object] | None = None) -> FieldStats:
    """Occurrences in time order (oldest first); `items[i]` is the item occurrence i came from, if known."""
    n = len(seq)
    count: dict[str, float] = {}
    recency: dict[str, float] = {}
    item_sets: dict[str, set[object]] = {}
    for p, v in enumerate(seq):
        count[v] = count.get(v, 0.0) + 1.0
        recency[v] = recency.get(v, 0.0) + math.exp(-RECENCY_DECAY * (n - 1 - p) / n)
        if items is not None:
            item_sets.setdefault(v, set()).add(items[p])
        # re-inserting moves v to the end: dict order becomes the order of last occurrences
        count[v] = count.pop(v)
    values = list(count)
    return FieldStats(
        values=values,
        count=[count[v] for v in values],
        distinct=[float(len(item_sets[v])) if items is not None else count[v] for v in values],
        recency=[recency[v] for v in values],
    )


def _as_count(field_name: str, value: str, raw: object) -> float:
    """A request's count: a finite number >= 0 (0 drops the value); anything else is a ValueError."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"field {field_name!r}: the count of {value!r} must be a number, got {raw!r}")
    c = float(raw)
    if not math.isfinite(c) or c < 0:
        raise ValueError(f"field {field_name!r}: the count of {value!r} must be a finite number >= 0, got {raw!r}")
    return min(c, COUNT_CAP)


def parse_field(field_name: str, raw: object) -> FieldStats:
    """A request's field: a string, a list of strings (repeats count) or an object {value: count}.

    In the object form the order of the keys is the recency order (oldest first) and the recency
    weight of a value is its count at its position. Values must be strings; ValueError otherwise.
    """
    if raw is None:
        return FieldStats()
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, Mapping):
        pairs = [(str(k), _as_count(field_name, str(k), c)) for k, c in raw.items()]
        pairs = [(k, c) for k, c in pairs if c > 0]
        n = len(pairs)
        return FieldStats(
            values=[k for k, _ in pairs],
            count=[c for _, c in pairs],
            distinct=[c for _, c in pairs],
            recency=[c * math.exp(-RECENCY_DECAY * (n - 1 - p) / n) for p, (_, c) in enumerate(pairs)],
        )
    if isinstance(raw, list | tuple):
        bad = [v for v in raw if not isinstance(v, str)]
        if bad:
            raise ValueError(f"field {field_name!r}: values must be strings, got {bad[0]!r}")
        return stats_from_sequence(list(raw))
    raise ValueError(f"field {field_name!r}: expected a list of values or an object {{value: count}}")


@dataclass
class HistoryBatch:
    """Input of the history model for B users.

    ids/masks/counts[f]: (B, H_f) per field, in the encoder's field order (counts 1 for single fields);
    hist_ids (B, Hh) tag ids (0 = padding), hist_feats (B, Hh, P) phi, hist_mask (B, Hh).
    unknown[b][f]: user b's values of field f missing from its vocabulary.
    """

    ids: list[np.ndarray]
    masks: list[np.ndarray]
    counts: list[np.ndarray]
    hist_ids: np.ndarray
    hist_feats: np.ndarray
    hist_mask: np.ndarray
    unknown: list[dict[str, list[str]]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.hist_ids)


class HistoryEncoder:
    """Field vocabularies (the tag fields share the tag vocabulary) plus the history-tag settings."""

    def __init__(self, encoder: FeatureEncoder, tags: Vocabulary, max_history_tags: int) -> None:
        self.encoder = encoder
        self.tags = tags
        self.max_history_tags = max_history_tags
        for name in (TAG_FIELD, UNCLICKED_FIELD):
            if name in encoder.vocabs and encoder.vocabs[name] is not tags and encoder.vocabs[name] != tags:
                raise ValueError(f"field {name!r} must use the tag vocabulary (one vocabulary for input and output)")

    @property
    def specs(self):
        return self.encoder.specs

    def parse(self, features: Mapping[str, object]) -> dict[str, FieldStats]:
        """A request's features -> FieldStats per field; unknown field names raise KeyError."""
        valid = set(self.encoder.field_names)
        extra = set(features) - valid
        if extra:
            raise KeyError(f"unknown field(s) {sorted(extra)}; valid fields: {sorted(valid)}")
        return {name: parse_field(name, raw) for name, raw in features.items()}

    def encode(self, users: Sequence[Mapping[str, FieldStats]]) -> HistoryBatch:
        b = len(users)
        specs = self.encoder.specs
        ids = [np.zeros((b, s.max_len), np.int64) for s in specs]
        masks = [np.zeros((b, s.max_len), np.float32) for s in specs]
        counts = [np.zeros((b, s.max_len), np.float32) for s in specs]
        hh = self.max_history_tags
        hist_ids = np.zeros((b, hh), np.int64)
        hist_feats = np.zeros((b, hh, len(PHI_NAMES)), np.float32)
        hist_mask = np.zeros((b, hh), np.float32)
        unknown: list[dict[str, list[str]]] = []
        oov = Vocabulary.OOV
        tag_lookup = self.tags.lookup
        for row, user in enumerate(users):
            unk: dict[str, list[str]] = {}
            for f, s in enumerate(specs):
                st = user.get(s.name)
                if st is None or not len(st):
                    continue
                get = self.encoder.vocabs[s.name].lookup.get
                vid = [get(v, oov) for v in st.values]
                misses = [v for v, i in zip(st.values, vid, strict=True) if i == oov]
                if misses:
                    unk[s.name] = misses
                if s.kind is FieldKind.SINGLE:
                    ids[f][row, 0], masks[f][row, 0], counts[f][row, 0] = vid[-1], 1.0, 1.0
                    continue
                n = len(vid)
                # most frequent first, ties by recency (later position = more recent)
                order = sorted(range(n), key=lambda i: (-st.count[i], -i))[: s.max_len]
                k = len(order)
                ids[f][row, :k] = [vid[i] for i in order]
                masks[f][row, :k] = 1.0
                counts[f][row, :k] = [st.count[i] for i in order]
            self._history_tags(user, row, hist_ids, hist_feats, hist_mask, tag_lookup)
            unknown.append(unk)
        return HistoryBatch(ids, masks, counts, hist_ids, hist_feats, hist_mask, unknown)

    def _history_tags(
        self,
        user: Mapping[str, FieldStats],
        row: int,
        hist_ids: np.ndarray,
        hist_feats: np.ndarray,
        hist_mask: np.ndarray,
        lookup: Mapping[str, int],
    ) -> None:
        clicked = user.get(TAG_FIELD) or FieldStats()
        unclicked = user.get(UNCLICKED_FIELD) or FieldStats()
        try:
            recent_h = self.encoder.spec(TAG_FIELD).max_len
        except KeyError:
            recent_h = len(clicked)
        per_tag: dict[int, list[float]] = {}
        n = len(clicked)
        total = sum(clicked.count) or 1.0
        for p, v in enumerate(clicked.values):
            t = lookup.get(v, Vocabulary.OOV)
            if t <= Vocabulary.OOV:
                continue
            c = clicked.count[p]
            per_tag[t] = [
                math.log1p(c),
                math.log1p(clicked.distinct[p]),
                math.log1p(clicked.recency[p]),
                0.0,
                1.0 if n - 1 - p < recent_h else 0.0,
                c / total,
                c,  # sort key, dropped below
            ]
        for p, v in enumerate(unclicked.values):
            t = lookup.get(v, Vocabulary.OOV)
            if t <= Vocabulary.OOV:
                continue
            phi = per_tag.setdefault(t, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
            phi[3] = math.log1p(unclicked.count[p])
        kept = sorted(per_tag.items(), key=lambda kv: (-kv[1][6], -kv[1][2], -kv[1][3]))[: self.max_history_tags]
        for j, (t, phi) in enumerate(kept):
            hist_ids[row, j] = t
            hist_feats[row, j] = phi[:6]
            hist_mask[row, j] = 1.0
