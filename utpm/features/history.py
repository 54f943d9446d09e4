"""Count-aware user features and per-(user, tag) history features, identical in training and serving.

A multi-valued field is summarised as `FieldStats`: each distinct value with its count, the number of
distinct items it came from, a recency-weighted count and its recency order. Training builds them
from a user's events (`stats_from_sequence` with item ids); the service builds them from a request,
where a field is either a list (values may repeat: each occurrence counts once) or an object
{value: count} (`parse_field`). `HistoryEncoder` then turns them into the history model's input:

- per field the H kept values (most frequent first, ties by recency), their ids and counts;
- per user the candidate tags scored by the model's history path, each with a feature vector phi
  (`PHI_NAMES`): the history tags (clicked or unclicked tags known to the tag vocabulary) and, when
  the encoder has `TagStats`, the tags its transitions propose from them and the most popular tags.

`TagStats` (optional) holds per-tag arrays learnt from training users: the top-M tag->tag
transition lifts (CSR), a repeat propensity and a label rate per tag. They travel in a bundle as
`HistoryEncoder.to_arrays()` / `HistoryEncoder.from_arrays(...)`.

Torch-free (numpy, and numba for `history_kernel`), so the service can use it.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from operator import is_, itemgetter, le, mul
from typing import Any

import numpy as np

from utpm.features import history_kernel
from utpm.features.encoding import FeatureEncoder
from utpm.features.hashed_lookup import HashedLookup
from utpm.features.item_neighbours import ItemNeighbourTags
from utpm.features.pair_counts import count_pairs, fitting_sample, top_neighbours_by_block
from utpm.features.sorted_keys import find_sorted
from utpm.features.spec import FieldKind
from utpm.features.values import clean_values
from utpm.features.vocab import Vocabulary

# Recency weight of an occurrence: exp(-DECAY * age), age = share of the history after it (0..1), so
# that it means the same for a list of tag occurrences and for a list of events.
RECENCY_DECAY = 3.0
# Counts above this are clamped: log1p keeps them finite anyway, this keeps the sums exact in float32.
COUNT_CAP = 1e6
TAG_FIELD = "clicked_tags"
UNCLICKED_FIELD = "unclicked_tags"
# the items a user clicked (ids as the event log names them), oldest first: read by `ItemNeighbourTags`
# only, never by the tower, so a catalogue of any size costs the model nothing
ITEM_FIELD = "clicked_items"
PHI_NAMES = (
    "log1p_count",
    "log1p_distinct_items",
    "log1p_recency_weighted_count",
    "log1p_unclicked_count",
    "in_most_recent_H",
    "share_of_history",
    # from `TagStats` (0 without it): learnt from training users, so a user's tags also get what
    # other users with the same history tags went on to click
    "transition",
    "repeat_propensity",
    "log_label_rate",
    "log1p_history_length",
    # from `ItemNeighbourTags` (0 without it or without `clicked_items`): the tag's score among the
    # items users who clicked the same items clicked, in (0, 1]
    "item_neighbour_score",
)
N_BASE_PHI = 6
ITEM_SCORE = PHI_NAMES.index("item_neighbour_score")
# TagStats.fit holds the distinct (history tag, label tag) pairs; past MAX_FIT_PAIRS pairs over all
# users (Σ |H| x |C|, the counting's work) it learns from a seeded sample of the users.
MAX_FIT_PAIRS = 400_000_000
# A user with more history x label tag pairs than this (a crawler: most tags with most tags) is left
# out of TagStats: their pairs say nothing of what users with tag h click next.
MAX_USER_PAIRS = 20_000_000


@dataclass
class FieldStats:
    """Distinct values of one field, oldest last occurrence first (the most recent value is last)."""

    values: list[str] = field(default_factory=list)
    count: list[float] = field(default_factory=list)
    distinct: list[float] = field(default_factory=list)
    recency: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)


def _weights(n: int) -> np.ndarray:
    return np.asarray([math.exp(-RECENCY_DECAY * (n - 1 - p) / n) for p in range(n)], np.float64)


@functools.lru_cache(maxsize=256)
def _cached_weights(n: int) -> np.ndarray:
    w = _weights(n)
    w.flags.writeable = False  # shared by every caller
    return w


def recency_weight_array(n: int) -> np.ndarray:
    """exp(-RECENCY_DECAY * age) of the positions 0 .. n-1 of a history of n (the most recent last),
    float64, read-only; cached for request-sized n, as this part of the encoding holds the GIL on the
    service's hot path."""
    return _cached_weights(n) if n <= 1024 else _weights(n)


def recency_weights(n: int) -> list[float]:
    """`recency_weight_array` as a new list."""
    return recency_weight_array(n).tolist()


def stats_from_sequence(seq: Sequence[str], items: Sequence[object] | None = None) -> FieldStats:
    """Occurrences in time order (oldest first); `items[i]` is the item occurrence i came from, if known."""
    n = len(seq)
    if items is None and len(set(seq)) == n:
        # no repeats (the common request): each value once, in order, with the same weights as below
        return FieldStats(values=list(seq), count=[1.0] * n, distinct=[1.0] * n, recency=recency_weights(n))
    # Per-occurrence work in C (dicts, map, bincount), none in bytecode: this runs on the service's
    # event loop for every request. Values in the order of their last occurrence.
    values = list(dict.fromkeys(reversed(seq)))  # distinct, the latest last occurrence first
    values.reverse()
    m = len(values)
    code = np.fromiter(map(dict(zip(values, range(m), strict=True)).__getitem__, seq), np.intp, n)
    count = np.bincount(code, minlength=m).astype(np.float64).tolist()
    # bincount adds each value's weights one by one in time order: the same float sums as a Python loop
    recency = np.bincount(code, weights=recency_weight_array(n), minlength=m).tolist()
    if items is None:
        distinct = list(count)
    else:
        pairs = set(zip(code.tolist(), items, strict=True))  # distinct (value, item)
        per_pair = np.fromiter(map(itemgetter(0), pairs), np.intp, len(pairs))
        distinct = np.bincount(per_pair, minlength=m).astype(np.float64).tolist()
    return FieldStats(values=values, count=count, distinct=distinct, recency=recency)


def _as_number(field_name: str, value: str, raw: object, what: str) -> float:
    """A request's number (the `what` of `value`: count or items) as a float; not a number is a ValueError."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"field {field_name!r}: the {what} of {value!r} must be a number, got {raw!r}")
    # an int may lie beyond float64, which float() cannot take: bound it first (its sign stays)
    return float(min(max(raw, -1), COUNT_CAP)) if isinstance(raw, int) else float(raw)


def _as_count(field_name: str, value: str, raw: object) -> float:
    """A request's count: a finite number >= 0 (0 drops the value); anything else is a ValueError."""
    c = _as_number(field_name, value, raw, "count")
    if not math.isfinite(c) or c < 0:
        raise ValueError(f"field {field_name!r}: the count of {value!r} must be a finite number >= 0, got {raw!r}")
    return min(c, COUNT_CAP)


def _as_items(field_name: str, value: str, raw: object, count: float) -> float:
    """A request's distinct items of a value (`{"count": c, "items": d}`): a number in (0, count]."""
    d = _as_number(field_name, value, raw, "items")
    # bounded as the count is, so that items <= count still holds for a count above the cap
    if not (math.isfinite(d) and 0 < min(d, COUNT_CAP) <= count):
        raise ValueError(
            f"field {field_name!r}: the items of {value!r} must be a number above 0 and at most its count "
            f"{count:g} (the distinct items that carried it), got {raw!r}"
        )
    return min(d, COUNT_CAP)


def _as_counts(field_name: str, value: str, raw: object) -> tuple[float, float]:
    """A request's (count, distinct items) of a value: a count, its items the same; or an object
    {"count": c, "items": d} (`_as_count`, `_as_items`)."""
    if not isinstance(raw, Mapping):
        c = _as_count(field_name, value, raw)
        return c, c
    if "count" not in raw or not set(raw) <= {"count", "items"}:
        raise ValueError(
            f"field {field_name!r}: the counts of {value!r} must be a number or an object "
            f'{{"count": c, "items": d}}, got {dict(raw)!r}'
        )
    c = _as_count(field_name, value, raw["count"])
    return c, (_as_items(field_name, value, raw["items"], c) if "items" in raw and c > 0 else c)


def _merged(pairs: Sequence[tuple[str, float, float]], weights: Sequence[float]) -> FieldStats:
    """(value, count, distinct items) triples, oldest first -> one entry per value, at its last
    position; a value that repeats (keys equal once stripped) adds its counts and items. Without
    repeats: each triple as it is."""
    merged: dict[str, tuple[float, float, float]] = {}
    for (k, c, d), w in zip(pairs, weights, strict=True):
        count, recency, items = merged.pop(k, (0.0, 0.0, 0.0))
        merged[k] = (count + c, recency + c * w, items + d)
    return FieldStats(
        values=list(merged),
        count=[min(c, COUNT_CAP) for c, _, _ in merged.values()],
        distinct=[min(d, COUNT_CAP) for _, _, d in merged.values()],
        recency=[min(r, COUNT_CAP) for _, r, _ in merged.values()],
    )


# the keys of a count object in the order JSON parsers and `ProtocolSplit.request` give them
_OBJECT_KEYS = {("count",), ("count", "items"), ("items", "count")}


def _counted_as_sent(raw: Mapping[object, object]) -> FieldStats | None:
    """`{value: count}` as requests built from a log send it (string keys already stripped, counts
    finite numbers in (0, COUNT_CAP], a count perhaps {"count": c, "items": d} with 0 < d <= c) in
    C-level maps, with `_merged`'s results to the bit; None for anything else, which `_merged`
    handles (and names the bad count of)."""
    if not raw or not set(map(type, raw)) <= {str}:
        return None
    keys: list[str] = list(raw)  # type: ignore[arg-type]  # str, checked above
    if list(map(str.strip, keys)) != keys or "" in raw:
        return None
    sent: list[Any] = list(raw.values())
    kinds = set(map(type, sent))
    if not kinds <= {int, float, dict}:
        return None
    counted: list[Any] = sent
    items: list[Any] | None = None
    if dict in kinds:  # some counts with their items: the objects' (c, d) in place, checked as counts are
        counted, items = list(sent), list(sent)
        for at in compress(range(len(sent)), map(is_, map(type, sent), repeat(dict))):  # the objects only
            v = sent[at]
            if tuple(v) not in _OBJECT_KEYS:
                return None
            counted[at] = v["count"]
            items[at] = v.get("items", counted[at])
        if not set(map(type, counted)) | set(map(type, items)) <= {int, float}:
            return None
    try:
        count = list(map(float, counted))
        distinct = count if items is None else list(map(float, items))
    except OverflowError:  # an int beyond float64
        return None
    if not (min(count) > 0 and max(count) <= COUNT_CAP and all(map(math.isfinite, count))):
        return None
    if items is not None and not (min(distinct) > 0 and all(map(le, distinct, count))):
        return None  # d <= c <= COUNT_CAP also makes d finite
    # as _merged: 0.0 + c * w, which c <= COUNT_CAP and w <= 1 keep within the cap
    recency = list(map(mul, count, recency_weight_array(len(keys)).tolist()))
    return FieldStats(values=keys, count=count, distinct=list(distinct), recency=recency)


def parse_field(field_name: str, raw: object) -> FieldStats:
    """A request's field: a string, a list of strings (repeats count) or an object {value: count}.

    In the object form the order of the keys is the recency order (oldest first) and the recency
    weight of a value is its count at its position; a value's count may be an object
    {"count": c, "items": d}, d the distinct items that carried it (default: c, as in the list
    form, which cannot tell a value clicked twice on one item from one on two items). Values must
    be strings; ValueError otherwise.
    Values follow the event log's rule (`clean_values`): stripped, and absent when empty; two keys
    that are one value once stripped add their counts, at the later one's position.
    """
    if raw is None:
        return FieldStats()
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, Mapping):
        fast = _counted_as_sent(raw)
        if fast is not None:
            return fast
        triples = [(str(k).strip(), *_as_counts(field_name, str(k), c)) for k, c in raw.items()]
        triples = [(k, c, d) for k, c, d in triples if c > 0 and k]
        return _merged(triples, recency_weights(len(triples)))
    if isinstance(raw, list | tuple):
        if not all(map(isinstance, raw, repeat(str))):  # checked in C; the message names the first bad one
            bad = next(v for v in raw if not isinstance(v, str))
            raise ValueError(f"field {field_name!r}: values must be strings, got {bad!r}")
        return stats_from_sequence(clean_values(raw))
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
    known: np.ndarray | None = None  # (B,) bool: some value of the user's was in its field's vocabulary

    @property
    def size(self) -> int:
        return len(self.hist_ids)


@dataclass
class TagStats:
    """Per-tag statistics from training users (tag ids of the tag vocabulary), numpy only.

    From each training user's history tags H (at the protocol's cut) and label tags C:
    - `lift` of h -> t: log(P(t in C | h in H) / P(t in C)), P(t in C | h in H) shrunk toward
      P(t in C) with `shrinkage` pseudo-users; for each h only its top `neighbours` positive lifts,
      t != h, as CSR (`indptr` (n_tags + 1,), `indices`, `lift`), so 1M tags stay small;
    - `repeat` of t: log(r_t / r), r_t the share of users with t in H who have t in C again (shrunk
      toward r, that share over all tags);
    - `label_rate` of t: log((users with t in C + 0.5) / (users + 1)), a popularity that does not
      depend on the number of users;
    - `popular`: the `n_popular` tags most often in C, best first (candidates for every user).
    """

    indptr: np.ndarray
    indices: np.ndarray
    lift: np.ndarray
    repeat: np.ndarray
    label_rate: np.ndarray
    popular: np.ndarray

    PREFIX = "tagstats_"

    @property
    def n_tags(self) -> int:
        return len(self.repeat)

    @classmethod
    def fit(
        cls,
        histories: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        n_tags: int,
        neighbours: int = 50,
        shrinkage: float = 10.0,
        n_popular: int = 50,
        max_pairs: int = MAX_FIT_PAIRS,
        max_user_pairs: int = MAX_USER_PAIRS,
    ) -> TagStats:
        """`histories[u]`, `labels[u]`: user u's distinct history / label tag ids (ids <= OOV ignored).
        A user with more than `max_user_pairs` history x label tag pairs is left out; beyond
        `max_pairs` pairs in all, a seeded sample of the users is used: in a seeded order, each user
        whose pairs still fit in what is left of the budget."""
        hs = [np.unique(h[h > Vocabulary.OOV]).astype(np.int64) for h in histories]
        ls = [np.unique(c[c > Vocabulary.OOV]).astype(np.int64) for c in labels]
        keep = [j for j, c in enumerate(ls) if len(c)]
        n_pairs = np.asarray([len(hs[j]) * len(ls[j]) for j in keep], np.int64)
        light = n_pairs <= max_user_pairs
        keep, n_pairs = [j for j, ok in zip(keep, light.tolist(), strict=True) if ok], n_pairs[light]
        if n_pairs.sum() > max_pairs:
            # a seeded sample of users, all statistics from it: every pair must be held while counted
            keep = [keep[j] for j in fitting_sample(n_pairs, max_pairs)]
        n_users = len(keep)
        n_c = np.bincount(np.concatenate([ls[j] for j in keep] or [np.zeros(0, np.int64)]), minlength=n_tags)
        n_h = np.bincount(np.concatenate([hs[j] for j in keep] or [np.zeros(0, np.int64)]), minlength=n_tags)
        pairs = count_pairs([(hs[j], ls[j]) for j in keep if len(hs[j])], n_tags)
        p = (n_c + 1.0) / (n_users + 2.0)
        r_all = pairs.same.sum() / max(1.0, float(n_h.sum()))
        repeat = np.zeros(n_tags, np.float64)
        if r_all > 0:
            rt = (pairs.same + shrinkage * r_all) / (n_h + shrinkage)
            repeat = np.where(n_h > 0, np.log(rt / r_all), 0.0)

        def lift_of(h: np.ndarray, pairs_at: slice) -> np.ndarray:
            """log P(t | h) / P(t), shrunk towards P(t), of the pairs (h, t)."""
            t = pairs.tags[pairs_at]
            return np.log((pairs.counts[pairs_at] + shrinkage * p[t]) / (n_h[h] + shrinkage) / p[t])

        indptr, chosen, lift = top_neighbours_by_block(pairs.indptr, lift_of, neighbours)
        t = pairs.tags[chosen]
        rate = np.log((n_c + 0.5) / (n_users + 1.0))
        rate[: Vocabulary.OOV + 1] = np.log(0.5 / (n_users + 1.0))
        ranked = np.argsort(-n_c, kind="stable")
        ranked = ranked[(ranked > Vocabulary.OOV) & (n_c[ranked] > 0)][:n_popular]
        return cls(
            indptr=indptr,
            indices=t.astype(np.int32),
            lift=lift.astype(np.float32),
            repeat=repeat.astype(np.float32),
            label_rate=rate.astype(np.float32),
            popular=ranked.astype(np.int32),
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            self.PREFIX + k: v
            for k, v in (
                ("indptr", self.indptr),
                ("indices", self.indices),
                ("lift", self.lift),
                ("repeat", self.repeat),
                ("label_rate", self.label_rate),
                ("popular", self.popular),
            )
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> TagStats | None:
        """The inverse of `to_arrays`; None when `arrays` holds no tag statistics."""
        if cls.PREFIX + "indptr" not in arrays:
            return None
        return cls(
            indptr=np.asarray(arrays[cls.PREFIX + "indptr"], np.int64),
            indices=np.asarray(arrays[cls.PREFIX + "indices"], np.int32),
            lift=np.asarray(arrays[cls.PREFIX + "lift"], np.float32),
            repeat=np.asarray(arrays[cls.PREFIX + "repeat"], np.float32),
            label_rate=np.asarray(arrays[cls.PREFIX + "label_rate"], np.float32),
            popular=np.asarray(arrays[cls.PREFIX + "popular"], np.int32),
        )


# the kernel's TagStats arguments when there are none (the dtypes of real ones: one compiled version)
_NO_STATS = TagStats(
    indptr=np.zeros(1, np.int64),
    indices=np.zeros(0, np.int32),
    lift=np.zeros(0, np.float32),
    repeat=np.zeros(0, np.float32),
    label_rate=np.zeros(0, np.float32),
    popular=np.zeros(0, np.int32),
)


class HistoryEncoder:
    """Field vocabularies (the tag fields share the tag vocabulary), the candidate-tag settings and,
    optionally, `TagStats` and `ItemNeighbourTags`.

    Candidates per user (at most `width`): the history tags (most frequent first, at most
    `max_history_tags`), then, with `stats`, the tags with the highest transition score from them and
    the most popular tags, up to `extra_candidates` more; then, with `items` and a `clicked_items`
    field, the best `item_candidates` tags of the items users who clicked the same items clicked
    that are not candidates yet.

    `n_phi`: the phi features a bundle's graph reads (the first `n_phi` of `PHI_NAMES`; a bundle
    exported before a feature was added reads fewer).
    """

    def __init__(
        self,
        encoder: FeatureEncoder,
        tags: Vocabulary,
        max_history_tags: int,
        stats: TagStats | None = None,
        extra_candidates: int = 100,
        items: ItemNeighbourTags | None = None,
        item_candidates: int = 100,
        n_phi: int = len(PHI_NAMES),
        distinct_items: bool = True,
    ) -> None:
        self.encoder = encoder
        self.distinct_items = distinct_items  # False: a tag's distinct items are taken to be its count
        self.tags = tags
        self.max_history_tags = max_history_tags
        self.stats = stats
        self.extra_candidates = extra_candidates if stats is not None else 0
        self.items = items
        self.item_candidates = item_candidates if items is not None else 0
        if not 0 < n_phi <= len(PHI_NAMES):
            raise ValueError(f"n_phi must be in 1..{len(PHI_NAMES)}, got {n_phi}")
        self.n_phi = n_phi
        self._scratch = history_kernel.Scratch()
        if stats is not None and stats.n_tags != len(tags):
            raise ValueError(f"tag statistics over {stats.n_tags} tags for a vocabulary of {len(tags)}")
        if items is not None and items.n_tags > len(tags):
            raise ValueError(f"item tags beyond the tag vocabulary of {len(tags)}")
        for name in (TAG_FIELD, UNCLICKED_FIELD):
            if name in encoder.vocabs and encoder.vocabs[name] is not tags and encoder.vocabs[name] != tags:
                raise ValueError(f"field {name!r} must use the tag vocabulary (one vocabulary for input and output)")

    @property
    def width(self) -> int:
        """Candidate slots per user (Hh of `HistoryBatch`)."""
        return self.max_history_tags + self.extra_candidates + self.item_candidates

    @property
    def request_fields(self) -> list[str]:
        """The fields a request may carry: the tower's, and `clicked_items` (read by the history
        path only; accepted and left unread without `items`)."""
        return [*self.encoder.field_names, ITEM_FIELD]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Per-tag arrays serving needs besides the vocabularies (empty without `TagStats` or items)."""
        out: dict[str, np.ndarray] = {}
        if self.stats is not None:
            out |= {**self.stats.to_arrays(), "extra_candidates": np.asarray(self.extra_candidates, np.int64)}
        if self.items is not None:
            out |= {**self.items.to_arrays(), "item_candidates": np.asarray(self.item_candidates, np.int64)}
        if not self.distinct_items:
            out["distinct_items"] = np.asarray(0, np.int64)
        return out

    @classmethod
    def from_arrays(
        cls,
        encoder: FeatureEncoder,
        tags: Vocabulary,
        max_history_tags: int,
        arrays: Mapping[str, np.ndarray],
        n_phi: int = len(PHI_NAMES),
    ) -> HistoryEncoder:
        stats = TagStats.from_arrays(arrays)
        extra = int(arrays["extra_candidates"]) if "extra_candidates" in arrays else 100
        items = ItemNeighbourTags.from_arrays(arrays)
        item_candidates = int(arrays["item_candidates"]) if "item_candidates" in arrays else 100
        distinct = bool(int(arrays["distinct_items"])) if "distinct_items" in arrays else True
        return cls(encoder, tags, max_history_tags, stats, extra, items, item_candidates, n_phi, distinct)

    @property
    def specs(self):
        return self.encoder.specs

    def parse(self, features: Mapping[str, object]) -> dict[str, FieldStats]:
        """A request's features -> FieldStats per field; unknown field names raise KeyError."""
        valid = set(self.request_fields)
        extra = set(features) - valid
        if extra:
            raise KeyError(f"unknown field(s) {sorted(extra)}; valid fields: {sorted(valid)}")
        return {name: parse_field(name, raw) for name, raw in features.items()}

    def encode(self, users: Sequence[Mapping[str, FieldStats]], tower: bool = True) -> HistoryBatch:
        """The model input of a batch of users: every field of every user in one pass (numpy).
        tower=False leaves the tower's inputs (ids, masks, counts) empty: a linear scorer reads only
        the history tags, and still every value is looked up for `unknown` and `known`."""
        b = len(users)
        specs = self.encoder.specs
        nf = len(specs)
        oov = Vocabulary.OOV
        # every field of every user, flattened field by field, then user by user: row f * b + user
        col = _Column([u.get(s.name) for s in specs for u in users])
        vid = col.ids([self.encoder.vocabs[s.name] for s in specs])
        unknown: list[dict[str, list[str]]] = [{} for _ in range(b)]
        for r, value in col.unknown(vid):
            unknown[r % b].setdefault(specs[r // b].name, []).append(value)
        known = np.zeros(b, bool)
        known[col.row[vid > oov] % b] = True
        col.array("count")  # built once: the tag fields' columns below share it
        # the tag fields' columns and ids, reused for the history tags (they share the tag vocabulary)
        tag_columns = {
            s.name: (col.rows(j * b, (j + 1) * b), vid[col.bounds[j * b] : col.bounds[(j + 1) * b]])
            for j, s in enumerate(specs)
            if s.name in (TAG_FIELD, UNCLICKED_FIELD)
        }
        hist_ids = np.zeros((b, self.width), np.int64)
        hist_feats = np.zeros((b, self.width, len(PHI_NAMES)), np.float32)
        hist_mask = np.zeros((b, self.width), np.float32)
        log_total = self._history_tags(users, tag_columns, hist_ids, hist_feats, hist_mask)
        if self.items is not None:
            self._item_tags(users, log_total, hist_ids, hist_feats, hist_mask, unknown, known)
        if self.n_phi < len(PHI_NAMES):
            hist_feats = np.ascontiguousarray(hist_feats[:, :, : self.n_phi])
        if not tower:
            return HistoryBatch([], [], [], hist_ids, hist_feats, hist_mask, unknown, known)
        # per user and field the most frequent values first, ties by recency (the later position first);
        # a single field keeps its most recent value, counted 1
        single = np.asarray([s.kind is FieldKind.SINGLE for s in specs] or [False])[col.row // b]
        cnt = np.where(single, 1.0, col.array("count"))
        order = np.lexsort((-col.pos, np.where(single, 0.0, -cnt), col.row))
        rank = np.arange(col.total) - col.start[col.row[order]]
        keep = rank < np.asarray([s.max_len for s in specs] or [1])[col.row[order] // b]
        order, rank = order[keep], rank[keep]
        f, row = np.divmod(col.row[order], b)
        width = max((s.max_len for s in specs), default=1)
        all_ids = np.zeros((nf, b, width), np.int64)
        all_masks = np.zeros((nf, b, width), np.float32)
        all_counts = np.zeros((nf, b, width), np.float32)
        all_ids[f, row, rank] = vid[order]
        all_masks[f, row, rank] = 1.0
        all_counts[f, row, rank] = cnt[order]
        ids = [np.ascontiguousarray(all_ids[j, :, : s.max_len]) for j, s in enumerate(specs)]
        masks = [np.ascontiguousarray(all_masks[j, :, : s.max_len]) for j, s in enumerate(specs)]
        counts = [np.ascontiguousarray(all_counts[j, :, : s.max_len]) for j, s in enumerate(specs)]
        return HistoryBatch(ids, masks, counts, hist_ids, hist_feats, hist_mask, unknown, known)

    def _history_tags(
        self,
        users: Sequence[Mapping[str, FieldStats]],
        tag_columns: Mapping[str, tuple[_Column, np.ndarray]],
        hist_ids: np.ndarray,
        hist_feats: np.ndarray,
        hist_mask: np.ndarray,
    ) -> np.ndarray:
        """Every user's candidate tags and their phi (`history_kernel.candidates`, which holds the rules);
        returns each user's log1p(history length).

        Per user, as a dict from tag id to phi filled value by value would give them (the rules also
        hold when two values of a field share a tag id): a clicked tag takes the phi of its last
        occurrence and keeps the place of its first; an unclicked tag sets the unclicked count of
        the clicked tag it matches (its last occurrence), or else comes after the clicked tags, in
        the order of its first occurrence. The kept history tags (most frequent first, ties by
        recency-weighted count, then by unclicked count, then by that place) come first; with
        `TagStats` the new tags their transitions propose (best first, ties by tag id) and the
        popular tags fill the `extra_candidates` slots after them."""
        b = len(users)

        def column(name: str) -> tuple[_Column, np.ndarray]:
            if name in tag_columns:  # a field of the encoder: encode's column and ids
                return tag_columns[name]
            col = _Column([u.get(name) for u in users])
            return col, col.ids([self.tags])

        clicked, cid = column(TAG_FIELD)
        unclicked, uid = column(UNCLICKED_FIELD)
        try:
            recent_h = np.full(b, self.encoder.spec(TAG_FIELD).max_len, np.int64)
        except KeyError:
            recent_h = clicked.lens
        # per user sum(count) in Python, as before (the same float sums)
        totals = np.asarray([sum(st.count) if st is not None else 0.0 for st in clicked.stats], np.float64)
        c_count = clicked.array("count")
        c_distinct = clicked.array("distinct") if self.distinct_items else c_count
        c_log = _log1p(np.concatenate([c_count, c_distinct, clicked.array("recency")])).reshape(3, -1)
        st = self.stats or _NO_STATS
        log_total = _log1p(totals)
        history_kernel.candidates(
            (np.asarray(clicked.bounds, np.int64), cid, c_count, c_log),
            (np.asarray(unclicked.bounds, np.int64), uid, _log1p(unclicked.array("count"))),
            (recent_h, totals, log_total),
            self.max_history_tags,
            self.extra_candidates,
            self.stats is not None,
            (st.indptr, st.indices, st.lift, st.repeat, st.label_rate, st.popular),
            self._scratch.mark(len(self.tags)),
            (hist_ids, hist_feats, hist_mask),
        )
        return log_total

    def _item_tags(
        self,
        users: Sequence[Mapping[str, FieldStats]],
        log_total: np.ndarray,
        hist_ids: np.ndarray,
        hist_feats: np.ndarray,
        hist_mask: np.ndarray,
        unknown: list[dict[str, list[str]]],
        known: np.ndarray,
    ) -> None:
        """Each user's `item_neighbour_score` from their `clicked_items`: set on the tags that are
        candidates already, and the best `item_candidates` others appended after them (with the
        per-tag phi the kernel gives every candidate). Unknown items are reported in `unknown`."""
        items = self.items
        assert items is not None
        col = _Column([u.get(ITEM_FIELD) for u in users])
        ids = col.ids([items.items])
        for r, value in col.unknown(ids):
            unknown[r].setdefault(ITEM_FIELD, []).append(value)
        known[col.row[ids > Vocabulary.OOV]] = True
        filled = hist_mask.sum(axis=1).astype(np.int64)
        for u in np.flatnonzero(col.lens).tolist():
            tag_ids, score = items.tag_scores(ids[col.bounds[u] : col.bounds[u + 1]])
            if not len(tag_ids):
                continue
            n = int(filled[u])
            order = np.argsort(hist_ids[u, :n], kind="stable")
            at, hit = find_sorted(hist_ids[u, order], tag_ids)
            hist_feats[u, order[at[hit]], ITEM_SCORE] = score[hit]
            new, new_score = tag_ids[~hit][: self.item_candidates], score[~hit][: self.item_candidates]
            end = n + len(new)
            hist_ids[u, n:end] = new
            hist_mask[u, n:end] = 1.0
            hist_feats[u, n:end, ITEM_SCORE] = new_score
            hist_feats[u, n:end, history_kernel.HISTORY_LENGTH] = log_total[u]
            if self.stats is not None:
                hist_feats[u, n:end, history_kernel.LABEL_RATE] = self.stats.label_rate[new]


class _Column:
    """Field values of many rows (users, or users and fields), flattened row by row, each row's in order."""

    def __init__(self, stats: list[FieldStats | None]) -> None:
        self.stats = stats
        lens = [len(st) if st is not None else 0 for st in stats]
        self.bounds = list(itertools.accumulate(lens, initial=0))  # row r's values: bounds[r] .. bounds[r + 1]
        self.lens = np.asarray(lens, np.int64)
        self.start = np.asarray(self.bounds[:-1], np.int64)
        self.total = self.bounds[-1]
        self.row = np.repeat(np.arange(len(stats)), self.lens)
        self.pos = np.arange(self.total) - self.start[self.row]
        self._arrays: dict[str, np.ndarray] = {}

    def rows(self, lo: int, hi: int) -> _Column:
        """Rows lo .. hi - 1 as a column of their own, with the arrays this one has built so far."""
        sub = _Column(self.stats[lo:hi])
        first, last = self.bounds[lo], self.bounds[hi]
        sub._arrays = {attr: a[first:last] for attr, a in self._arrays.items()}
        return sub

    @property
    def values(self) -> list[str]:
        return list(chain.from_iterable(st.values for st in self.stats if st is not None))

    def unknown(self, ids: np.ndarray) -> list[tuple[int, str]]:
        """(row, value) of every value whose id (`ids`, from `ids`) is the OOV bucket, in order."""
        miss = np.flatnonzero(ids == Vocabulary.OOV)
        if not len(miss):
            return []
        values = self.values
        return [(r, values[p]) for r, p in zip(self.row[miss].tolist(), miss.tolist(), strict=True)]

    def ids(self, vocabs: Sequence[Vocabulary]) -> np.ndarray:
        """The values' ids (OOV when not found): the rows in len(vocabs) equal blocks, block j's
        looked up in vocabs[j] (`Vocabulary.ids_of`)."""
        per = len(self.stats) // max(1, len(vocabs))
        parts = []
        for j, vocab in enumerate(vocabs):
            rows = self.stats[j * per : (j + 1) * per]
            n = self.bounds[(j + 1) * per] - self.bounds[j * per]
            parts.append(vocab.ids_of(chain.from_iterable(st.values for st in rows if st is not None), n))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def array(self, attr: str) -> np.ndarray:
        """`count`, `distinct` or `recency` of every value, float64."""
        if attr not in self._arrays:
            per_row = (getattr(st, attr) for st in self.stats if st is not None)
            self._arrays[attr] = np.fromiter(chain.from_iterable(per_row), np.float64, self.total)
        return self._arrays[attr]


# log1p of the whole numbers below this, computed once by math.log1p: most counts are among them
_TABLE_SIZE = 4096
_LOG1P_TABLE = np.fromiter(map(math.log1p, range(_TABLE_SIZE)), np.float64, _TABLE_SIZE)


def _log1p(x: np.ndarray) -> np.ndarray:
    """math.log1p of each element (the values training and serving always used, to the bit): the small
    whole numbers from a table of them, the rest one by one."""
    whole = np.where((x >= 0) & (x < _TABLE_SIZE), x, -1.0).astype(np.int64)  # no cast of a huge value
    small = (whole == x) & ~np.signbit(x)
    if small.all():
        return _LOG1P_TABLE[whole]
    out = np.empty(len(x), np.float64)
    out[small] = _LOG1P_TABLE[whole[small]]
    rest = ~small
    out[rest] = np.fromiter(map(math.log1p, x[rest].tolist()), np.float64, int(rest.sum()))
    return out


def compile_kernel() -> None:
    """Compile the encoder's kernels (its candidates, the item neighbours' tag scores) and the large
    vocabularies' hash table now, or load them from numba's cache (a serving image does this at
    build time, so that its processes start without compiling)."""
    HistoryEncoder(FeatureEncoder([], {}), Vocabulary.build([]), 1).encode([{}])
    ItemNeighbourTags.fit([np.array([0, 1])], ["a", "b"], lambda c: np.array([2])).tag_scores(np.array([2]))
    HashedLookup(["a"], {"a": 2}, Vocabulary.OOV).ids(["a", "b"], 2)
