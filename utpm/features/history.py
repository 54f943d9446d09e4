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

Torch-free: numpy only, so the service can use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat

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
    # from `TagStats` (0 without it): learnt from training users, so a user's tags also get what
    # other users with the same history tags went on to click
    "transition",
    "repeat_propensity",
    "log_label_rate",
    "log1p_history_length",
)
N_BASE_PHI = 6
# TagStats.fit holds the distinct (history tag, label tag) pairs plus one chunk of raw pairs at once;
# past MAX_FIT_PAIRS raw pairs (8 bytes each) it learns from a seeded sample of the users.
PAIR_CHUNK = 20_000_000
MAX_FIT_PAIRS = 400_000_000


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
    if items is None and len(set(seq)) == n:
        # no repeats (the common request): each value once, in order, with the same weights as below
        return FieldStats(
            values=list(seq),
            count=[1.0] * n,
            distinct=[1.0] * n,
            recency=[0.0 + math.exp(-RECENCY_DECAY * (n - 1 - p) / n) for p in range(n)],
        )
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


def _count_pairs(users: Sequence[tuple[np.ndarray, np.ndarray]], n_tags: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct codes h * n_tags + t over every user's (history, label) pairs, with their user counts;
    counted a chunk of users at a time so that memory follows the distinct pairs, not all of them."""
    codes, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    chunk: list[np.ndarray] = []
    held = 0
    for j, (h, c) in enumerate(users):
        chunk.append((h[:, None] * n_tags + c[None, :]).ravel())
        held += len(chunk[-1])
        if held >= PAIR_CHUNK or j == len(users) - 1:
            codes, inverse = np.unique(np.concatenate([codes, *chunk]), return_inverse=True)
            counts = np.bincount(inverse, weights=np.concatenate([counts, np.ones(held, np.int64)]))
            counts = counts.astype(np.int64)
            chunk, held = [], 0
    return codes, counts


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
    ) -> TagStats:
        """`histories[u]`, `labels[u]`: user u's distinct history / label tag ids (ids <= OOV ignored).
        Beyond `max_pairs` history x label tag pairs in all, a seeded sample of the users is used."""
        hs = [np.unique(h[h > Vocabulary.OOV]).astype(np.int64) for h in histories]
        ls = [np.unique(c[c > Vocabulary.OOV]).astype(np.int64) for c in labels]
        keep = [j for j, c in enumerate(ls) if len(c)]
        n_pairs = np.asarray([len(hs[j]) * len(ls[j]) for j in keep], np.int64)
        if n_pairs.sum() > max_pairs:
            # a seeded sample of users, all statistics from it: every pair must be held while counted
            order = np.random.default_rng(0).permutation(len(keep))
            fits = order[: int(np.searchsorted(np.cumsum(n_pairs[order]), max_pairs, side="right"))]
            keep = [keep[j] for j in np.sort(fits)]
        n_users = len(keep)
        n_c = np.bincount(np.concatenate([ls[j] for j in keep] or [np.zeros(0, np.int64)]), minlength=n_tags)
        n_h = np.bincount(np.concatenate([hs[j] for j in keep] or [np.zeros(0, np.int64)]), minlength=n_tags)
        codes, n_ht = _count_pairs([(hs[j], ls[j]) for j in keep if len(hs[j])], n_tags)
        h, t = codes // n_tags, codes % n_tags
        p = (n_c + 1.0) / (n_users + 2.0)
        self_pair = h == t
        r_all = n_ht[self_pair].sum() / max(1.0, float(n_h.sum()))
        repeat = np.zeros(n_tags, np.float64)
        if r_all > 0:
            rt = (np.zeros(n_tags) + shrinkage * r_all) / (n_h + shrinkage)
            rt[h[self_pair]] = (n_ht[self_pair] + shrinkage * r_all) / (n_h[h[self_pair]] + shrinkage)
            repeat = np.where(n_h > 0, np.log(rt / r_all), 0.0)
        h, t, n_ht = h[~self_pair], t[~self_pair], n_ht[~self_pair]
        lift = np.log((n_ht + shrinkage * p[t]) / (n_h[h] + shrinkage) / p[t])
        pos = lift > 0
        h, t, lift = h[pos], t[pos], lift[pos]
        order = np.lexsort((-lift, h))
        h, t, lift = h[order], t[order], lift[order]
        start = np.searchsorted(h, h, side="left")
        top = (np.arange(len(h)) - start) < neighbours
        h, t, lift = h[top], t[top], lift[top]
        indptr = np.zeros(n_tags + 1, np.int64)
        np.cumsum(np.bincount(h, minlength=n_tags), out=indptr[1:])
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

    def transition(self, hist: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tag ids, sum_h weights[h] * lift(h, t)) over the neighbours t of history tag ids `hist`."""
        hist = np.asarray(hist, np.int64)
        lo, hi = self.indptr[hist], self.indptr[hist + 1]
        n = hi - lo
        if not n.sum():
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        # positions lo[j] .. hi[j]-1 of every history tag j, flattened
        idx = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(int(n.sum()))
        w = np.repeat(np.asarray(weights, np.float64), n) * self.lift[idx]
        # = np.unique(self.indices[idx], return_inverse=True) and a bincount, faster: one plain sort of
        # (tag id, position) keys orders the terms by tag and, within a tag, by position, so each tag's
        # terms are summed in the same order (to the same bits)
        total = len(idx)
        shift = total.bit_length()
        key = np.sort((self.indices[idx].astype(np.int64) << shift) | np.arange(total))
        t = key >> shift
        first = np.empty(total, bool)
        first[0] = True
        np.not_equal(t[1:], t[:-1], out=first[1:])
        return t[first], np.bincount(np.cumsum(first) - 1, weights=w[key & ((1 << shift) - 1)])

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


class HistoryEncoder:
    """Field vocabularies (the tag fields share the tag vocabulary), the candidate-tag settings and,
    optionally, `TagStats`.

    Candidates per user (at most `width` = max_history_tags + extra_candidates): the history tags
    (most frequent first, at most `max_history_tags`), then, with `stats`, the tags with the highest
    transition score from them and the most popular tags, up to `extra_candidates` more.
    """

    def __init__(
        self,
        encoder: FeatureEncoder,
        tags: Vocabulary,
        max_history_tags: int,
        stats: TagStats | None = None,
        extra_candidates: int = 100,
    ) -> None:
        self.encoder = encoder
        self.tags = tags
        self.max_history_tags = max_history_tags
        self.stats = stats
        self.extra_candidates = extra_candidates if stats is not None else 0
        if stats is not None and stats.n_tags != len(tags):
            raise ValueError(f"tag statistics over {stats.n_tags} tags for a vocabulary of {len(tags)}")
        for name in (TAG_FIELD, UNCLICKED_FIELD):
            if name in encoder.vocabs and encoder.vocabs[name] is not tags and encoder.vocabs[name] != tags:
                raise ValueError(f"field {name!r} must use the tag vocabulary (one vocabulary for input and output)")

    @property
    def width(self) -> int:
        """Candidate slots per user (Hh of `HistoryBatch`)."""
        return self.max_history_tags + self.extra_candidates

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Per-tag arrays serving needs besides the vocabularies (empty without `TagStats`)."""
        if self.stats is None:
            return {}
        return {**self.stats.to_arrays(), "extra_candidates": np.asarray(self.extra_candidates, np.int64)}

    @classmethod
    def from_arrays(
        cls, encoder: FeatureEncoder, tags: Vocabulary, max_history_tags: int, arrays: Mapping[str, np.ndarray]
    ) -> HistoryEncoder:
        stats = TagStats.from_arrays(arrays)
        extra = int(arrays["extra_candidates"]) if "extra_candidates" in arrays else 100
        return cls(encoder, tags, max_history_tags, stats, extra)

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
        hh = self.width
        hist_ids = np.zeros((b, hh), np.int64)
        hist_feats = np.zeros((b, hh, len(PHI_NAMES)), np.float32)
        hist_mask = np.zeros((b, hh), np.float32)
        unknown: list[dict[str, list[str]]] = []
        oov = Vocabulary.OOV
        tag_lookup = self.tags.lookup
        # per field: (index, spec, lookup.get, whether its ids are the tag ids _history_tags needs)
        fields = [
            (f, s, self.encoder.vocabs[s.name].lookup.get, s.name in (TAG_FIELD, UNCLICKED_FIELD))
            for f, s in enumerate(specs)
        ]
        for row, user in enumerate(users):
            unk: dict[str, list[str]] = {}
            # tag ids of the tag fields, reused by _history_tags (the tag fields share the tag vocabulary)
            tag_ids: dict[str, list[int]] = {}
            for f, s, get, is_tag in fields:
                st = user.get(s.name)
                if st is None or not len(st):
                    continue
                vid = list(map(get, st.values, repeat(oov)))
                if is_tag:
                    tag_ids[s.name] = vid
                if oov in vid:
                    unk[s.name] = [v for v, i in zip(st.values, vid, strict=True) if i == oov]
                if s.kind is FieldKind.SINGLE:
                    ids[f][row, 0], masks[f][row, 0], counts[f][row, 0] = vid[-1], 1.0, 1.0
                    continue
                n = len(vid)
                if n == 1:
                    ids[f][row, 0], masks[f][row, 0], counts[f][row, 0] = vid[0], 1.0, st.count[0]
                    continue
                if min(st.count) == max(st.count):
                    # all tied (a list without repeats): the most recent first
                    k = min(n, s.max_len)
                    ids[f][row, :k] = vid[::-1][:k]
                    masks[f][row, :k] = 1.0
                    counts[f][row, :k] = st.count[::-1][:k]
                    continue
                # most frequent first, ties by recency (later position = more recent): a stable sort
                # of the reversed positions by decreasing count
                c = np.asarray(st.count, np.float64)[::-1]
                order = (n - 1 - np.argsort(-c, kind="stable"))[: s.max_len]
                k = len(order)
                ids[f][row, :k] = np.asarray(vid, np.int64)[order]
                masks[f][row, :k] = 1.0
                counts[f][row, :k] = c[::-1][order]
            self._history_tags(user, row, hist_ids, hist_feats, hist_mask, tag_lookup, tag_ids)
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
        tag_ids: Mapping[str, list[int]] | None = None,
    ) -> None:
        clicked = user.get(TAG_FIELD) or FieldStats()
        unclicked = user.get(UNCLICKED_FIELD) or FieldStats()
        try:
            recent_h = self.encoder.spec(TAG_FIELD).max_len
        except KeyError:
            recent_h = len(clicked)
        oov = Vocabulary.OOV
        get = lookup.get
        known = tag_ids or {}
        cid = known.get(TAG_FIELD)
        if cid is None:
            cid = list(map(get, clicked.values, repeat(oov)))
        uid = known.get(UNCLICKED_FIELD)
        if uid is None:
            uid = list(map(get, unclicked.values, repeat(oov)))
        n = len(clicked)
        total_count = sum(clicked.count)
        total = total_count or 1.0
        # clicked tags known to the vocabulary, in order (positions p), then the unclicked-only ones
        cp = [p for p, t in enumerate(cid) if t > oov]
        ct = [cid[p] for p in cp]
        up = [p for p, t in enumerate(uid) if t > oov]
        ut = [uid[p] for p in up]
        if len(set(ct)) != len(ct) or len(set(ut)) != len(ut):
            # a tag id twice in a field (values that share an id): the per-tag dict's rules, element by element
            self._history_tags_dict(clicked, unclicked, row, hist_ids, hist_feats, hist_mask, lookup, recent_h)
            return
        row_of = {t: j for j, t in enumerate(ct)}
        n_c = len(ct)
        unclicked_log = [0.0] * n_c
        only_ids: list[int] = []
        only_log: list[float] = []
        for p, t in zip(up, ut, strict=True):
            j = row_of.get(t)
            lg = math.log1p(unclicked.count[p])
            if j is None:
                only_ids.append(t)
                only_log.append(lg)
            else:
                unclicked_log[j] = lg
        n_all = n_c + len(only_ids)
        cnt = [clicked.count[p] for p in cp]
        base = np.zeros((n_all, N_BASE_PHI), np.float64)
        if n_c:
            base[:n_c, 0] = list(map(math.log1p, cnt))
            base[:n_c, 1] = list(map(math.log1p, [clicked.distinct[p] for p in cp]))
            base[:n_c, 2] = list(map(math.log1p, [clicked.recency[p] for p in cp]))
            base[:n_c, 3] = unclicked_log
            base[:n_c, 4] = np.asarray(cp, np.int64) > n - 1 - recent_h
            base[:n_c, 5] = [c / total for c in cnt]
        base[n_c:, 3] = only_log
        key = np.zeros(n_all, np.float64)
        key[:n_c] = cnt
        # most frequent first, ties by recency-weighted count, then by unclicked count (stable)
        order = np.lexsort((-base[:, 3], -base[:, 2], -key))[: self.max_history_tags]
        n_kept = len(order)
        hist = np.asarray(ct + only_ids, np.int64)[order]
        feats = hist_feats[row]
        feats[:n_kept, :N_BASE_PHI] = base[order]
        m = n_kept
        st = self.stats
        if st is not None:
            share = feats[:n_kept, N_BASE_PHI - 1].astype(np.float64)
            # clicked tags propose by their share of the clicks (unclicked-only ones propose nothing)
            nb, score = st.transition(hist, share)
            new = np.ones(len(nb), bool)
            trans = np.zeros(n_kept + self.extra_candidates, np.float64)
            if len(nb) and n_kept:
                # nb is sorted: the history tags found in it keep their score and propose nothing new
                at = np.minimum(np.searchsorted(nb, hist), len(nb) - 1)
                hit = nb[at] == hist
                new[at[hit]] = False
                trans[:n_kept][hit] = score[at[hit]]
            top = _top(score[new], self.extra_candidates)
            extra = nb[new][top]
            trans[n_kept : n_kept + len(top)] = score[new][top]
            need = self.extra_candidates - len(extra)
            if need > 0:
                # the popular tags (not in nb: every new tag of nb is in extra already)
                taken = set(hist.tolist())
                taken.update(extra.tolist())
                pop = [t for t in st.popular.tolist() if t not in taken][:need]
                extra = np.concatenate([extra, np.asarray(pop, np.int64)])
            m = n_kept + len(extra)
            cand = np.concatenate([hist, extra]).astype(np.int64)
            k = N_BASE_PHI
            feats[:m, k] = trans[:m]
            feats[:n_kept, k + 1] = st.repeat[hist]
            feats[:m, k + 2] = st.label_rate[cand]
            feats[:m, k + 3] = math.log1p(total_count)
            hist_ids[row, :m] = cand
        else:
            hist_ids[row, :m] = hist
        hist_mask[row, :m] = 1.0

    def _history_tags_dict(
        self,
        clicked: FieldStats,
        unclicked: FieldStats,
        row: int,
        hist_ids: np.ndarray,
        hist_feats: np.ndarray,
        hist_mask: np.ndarray,
        lookup: Mapping[str, int],
        recent_h: int,
    ) -> None:
        """`_history_tags` with a per-tag dict, for fields in which two values share a tag id."""
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
            phi = per_tag.setdefault(t, [0.0] * (N_BASE_PHI + 1))
            phi[3] = math.log1p(unclicked.count[p])
        kept = sorted(per_tag.items(), key=lambda kv: (-kv[1][6], -kv[1][2], -kv[1][3]))[: self.max_history_tags]
        n_kept = len(kept)
        ids = np.zeros(n_kept + self.extra_candidates, np.int64)
        feats = np.zeros((len(ids), len(PHI_NAMES)), np.float32)
        for j, (t, phi) in enumerate(kept):
            ids[j] = t
            feats[j, :N_BASE_PHI] = phi[:N_BASE_PHI]
        m = n_kept
        st = self.stats
        if st is not None:
            hist = ids[:n_kept]
            share = feats[:n_kept, N_BASE_PHI - 1].astype(np.float64)
            nb, score = st.transition(hist, share)
            new = ~np.isin(nb, hist)
            order = np.argsort(-score[new], kind="stable")[: self.extra_candidates]
            extra = nb[new][order]
            pop = st.popular[~np.isin(st.popular, np.concatenate([hist, extra]))]
            extra = np.concatenate([extra, pop[: self.extra_candidates - len(extra)]]).astype(np.int64)
            m = n_kept + len(extra)
            ids[n_kept:m] = extra
            trans = np.zeros(m, np.float64)
            if len(nb):
                at = np.minimum(np.searchsorted(nb, ids[:m]), len(nb) - 1)
                hit = nb[at] == ids[:m]
                trans[hit] = score[at[hit]]
            k = N_BASE_PHI
            feats[:m, k] = trans
            feats[:n_kept, k + 1] = st.repeat[hist]
            feats[:m, k + 2] = st.label_rate[ids[:m]]
            feats[:m, k + 3] = math.log1p(sum(clicked.count))
        hist_ids[row, :m] = ids[:m]
        hist_feats[row, :m] = feats[:m]
        hist_mask[row, :m] = 1.0


def _top(score: np.ndarray, k: int) -> np.ndarray:
    """np.argsort(-score, kind="stable")[:k] (ties in index order), sorting only the k best and their ties."""
    neg = -score
    if len(neg) <= k or k <= 0:
        return np.argsort(neg, kind="stable")[: max(k, 0)]
    sel = np.flatnonzero(neg <= np.partition(neg, k - 1)[k - 1])
    return sel[np.argsort(neg[sel], kind="stable")][:k]
