"""Training and scoring of the history model (`utpm-hist`), called by `utpm.training.trainer.train`.

Examples: every training user at the protocol's cut and at `TrainConfig.augment_cuts` (duplicate cut
points of short histories counted once); at an augmented cut the label window has the protocol's
proportions (`UserSequences.label_end`), so that C is as large as the one Prec@K meets. The features
of an example are built from its events by the same `HistoryEncoder` the service uses, batch by
batch, so memory stays that of the events. Its `TagStats` come from the other half of the training
users (cross-fitting) and its b_t leaves its own labels out, so that a training user looks like a
new one.

Training starts at the blend tuned on the validation users and, by default, keeps that base fixed:
it learns a residual (the tower u . o_t, the MLP of g over phi), kept only if an epoch beats the
start on the validation users.

Losses (`TrainConfig.loss`):
- `bce` (default): pointwise, one BCE per (user, tag) on "t is in C" (the tags of the user's label-1
  items in the label period); its optimum ranks by P(t in C | user), what Prec@K rewards. Above
  `FULL_SOFTMAX_MAX_TAGS` tags it is replaced by `sampled`;
- `softmax`: listwise; a softmax over all tags, the target spread evenly over C;
- `sampled`: the same over the batch's positives and history tags plus `sampled_negatives` tags
  drawn from Q (label-tag frequency^0.75); sampled-only tags get the logQ correction
  -log(S Q_t), for vocabularies too large for a full softmax;
- `joint`: the paper's Eq. 4 (one BCE per label item on the sum of its tags' final scores) against
  uniform pseudo-item negatives, as the paper-faithful trainer does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from utpm.data.protocol import ProtocolSplit
from utpm.evaluation.metrics import precision_at_k, user_precision
from utpm.evaluation.yardsticks import Blend, popularity_counts, tune_blend
from utpm.features.encoding import FeatureEncoder
from utpm.features.history import (
    ITEM_FIELD,
    ITEM_SCORE,
    PHI_NAMES,
    TAG_FIELD,
    UNCLICKED_FIELD,
    FieldStats,
    HistoryBatch,
    HistoryEncoder,
    TagStats,
    stats_from_sequence,
)
from utpm.features.item_neighbours import ItemNeighbourTags
from utpm.features.spec import FieldKind, FieldSpec
from utpm.features.vocab import Vocabulary
from utpm.models.history import HISTORY_MODEL, HistoryModel, HistoryOptions, build_history_model
from utpm.models.presets import Preset, get_preset
from utpm.ranking import top_k
from utpm.training.early_stopping import EarlyStopping, epoch_point
from utpm.training.samples import build_encoder
from utpm.training.sparse_rows import RowSparseAdam, large_tables, row_sparse
from utpm.training.start import StartProblem, TunedStart, tune_start
from utpm.training.trainer import TrainConfig, TrainResult, save_training

log = logging.getLogger(__name__)

# Scores held at once when ranking every tag for many users (4 bytes each: 512 MB).
RANK_CHUNK_SCORES = 2**27
# Times per epoch that `train_history` says how far the epoch has come.
STAGE_STEPS = 20
# stage(text, step): what starts next; step=True where it only says how far the current stage has come
Stage = Callable[[str, bool], None]


def _stage_or_silent(stage: Stage | None) -> Callable[..., None]:
    """`say(text)` for a stage, `say(text, True)` for a step within one; nothing without a `stage`."""
    return lambda text, step=False: None if stage is None else stage(text, step)


HISTORY_LOSSES = ("softmax", "sampled", "joint", "bce", "sampled_bce")
# the losses over every tag's score (the others sample negatives)
ALL_TAG_LOSSES = ("softmax", "bce")
# what each of them becomes above FULL_SOFTMAX_MAX_TAGS tags: its estimate from sampled negatives
SAMPLED_FORM = {"softmax": "sampled", "bce": "sampled_bce"}
SAMPLED_LOSSES = tuple(SAMPLED_FORM.values())
# chosen on validation users (docs/results.md): Prec@K rewards ranking by P(t in C | user)
DEFAULT_HISTORY_LOSS = "bce"
# Above this many tags the losses over every tag (ALL_TAG_LOSSES) are replaced by their SAMPLED_FORM.
FULL_SOFTMAX_MAX_TAGS = 50_000
_NEG = -1e9
STARTS = ("tuned", "blend")
DEFAULT_START = "tuned"
# how the tuned start weighs the item neighbour score (`HistoryTrainConfig.start_items`)
START_ITEMS = ("after", "joint")
ITEM_FEATURE = PHI_NAMES[ITEM_SCORE]
# `short_requests`: the most values per clicked field a short training request keeps, and the values
# per clicked field of the validation users' short requests
SHORT_REQUEST_MAX = 20
VAL_SHORT_REQUEST = 10


def history_preset(base: Preset | str = "movielens", dim: int = 64, max_values: int = 100) -> Preset:
    """The default model's sizes: `base`'s K and N (they describe the data), E = U = dim, H = max_values.

    dim 64 and H 100 were chosen on validation users (docs/results.md); T = F = 16 widens the
    attention space with E.
    """
    p = get_preset(base) if isinstance(base, str) else base
    return p.replace(name=f"{p.name}-hist", E=dim, U=dim, H=max_values, T=16, F=16, hidden=None)


@dataclass
class HistoryTrainConfig(TrainConfig):
    """`TrainConfig` for `utpm-hist`: its parts (`history`), its losses and the sampled-softmax size."""

    model: str = HISTORY_MODEL
    loss: str = DEFAULT_HISTORY_LOSS
    preset: Preset = field(default_factory=history_preset)
    lr: float = 1e-3
    history: HistoryOptions = field(default_factory=HistoryOptions)
    sampled_negatives: int = 2000
    # With the `sampled` loss (every loss above FULL_SOFTMAX_MAX_TAGS tags), the embedding tables of
    # more rows than that get row-sparse Adam updates (`utpm.training.sparse_rows`); False: dense Adam
    sparse_updates: bool = True
    # Start from the blend yardstick tuned on the validation users (`HistoryModel.start_at`).
    start_at_blend: bool = True
    # "tuned": from the blend, a linear start over b_t and every phi feature tuned on Prec@K of the
    # training examples (`utpm.training.start`), kept if it scores at least the blend's on the
    # validation users; "blend": the blend's a, c only
    start: str = DEFAULT_START
    # training examples (user, cut) the tuned start is chosen on (a seeded draw; 0: all of them)
    start_examples: int = 10_000
    # "after": the tuned start's other weights are tuned on the examples sent without their clicked
    # items, then the item neighbour score's weight alone with them, so that a request without
    # `clicked_items` is scored as by a model without the items; "joint": every weight at once
    start_items: str = "after"
    # A training budget: each epoch draws at most this many (user, cut) examples (0: all of them),
    # so that a long log costs epochs of bounded length.
    max_examples_per_epoch: int = 10_000
    patience: int = 3
    # An epoch replaces the start only if its paired gain over the start on the validation users
    # (per user, mean Prec@k over `early_stop_ks`) is at least this many standard errors above zero
    # (one-sided 95%; chosen by `utpm bench gate`); 0: any gain in the mean, as before. A best-of-epochs
    # choice on a hundred users is mostly noise.
    keep_epoch_z: float = 1.645
    # False: the start (b_t and the history path's linear part) stays fixed and training learns a
    # residual on it (the MLP of g, the tower), so it can only move away where validation says so
    train_base: bool = False
    # training examples at the augment cuts get a label window of the protocol's proportions
    # (`UserSequences.label_end`) instead of the rest of the log
    matched_windows: bool = True
    # the softmax loss scores a training user's example with b_t from the other users' labels only
    leave_own_labels_out: bool = True
    # Share of the residual's training examples sent as a short request instead of the whole history:
    # each clicked field's 1..SHORT_REQUEST_MAX most recent values, once each, no unclicked field (what a
    # client that sends "the last few tags" gives the service); drawn anew for every batch. Above 0 the
    # start and the epoch are chosen on the validation users sent both ways.
    short_requests: float = 0.0

    def __post_init__(self) -> None:
        if self.loss not in HISTORY_LOSSES:
            raise ValueError(f"unknown loss {self.loss!r} for {HISTORY_MODEL}; valid: {HISTORY_LOSSES}")
        if self.start not in STARTS:
            raise ValueError(f"unknown start {self.start!r}; valid: {STARTS}")
        if self.start_items not in START_ITEMS:
            raise ValueError(f"unknown start_items {self.start_items!r}; valid: {START_ITEMS}")
        if self.sampled_negatives < 1:
            raise ValueError(f"sampled_negatives must be >= 1, got {self.sampled_negatives}")
        if not 0.0 <= self.short_requests <= 1.0:
            raise ValueError(f"short_requests must be in [0, 1], got {self.short_requests}")
        # the parent checks everything else but knows only the paper's losses
        loss, self.loss = self.loss, "joint"
        try:
            super().__post_init__()
        finally:
            self.loss = loss


def as_history_config(config: TrainConfig) -> HistoryTrainConfig:
    """`config` as a `HistoryTrainConfig`: a plain `TrainConfig` naming utpm-hist keeps its shared
    settings (budget, seed, warm start); a paper preset gets the default model's sizes; a loss it does
    not know becomes `DEFAULT_HISTORY_LOSS`."""
    if isinstance(config, HistoryTrainConfig):
        return config
    shared = {k: getattr(config, k) for k in TrainConfig.__dataclass_fields__ if k not in ("model", "loss", "preset")}
    preset = config.preset if config.preset.name.endswith("-hist") else history_preset(config.preset)
    loss = config.loss if config.loss in HISTORY_LOSSES else DEFAULT_HISTORY_LOSS
    return HistoryTrainConfig(**shared, loss=loss, preset=preset)


@dataclass
class HistoryTrainResult(TrainResult):
    history_encoder: HistoryEncoder | None = None
    # the starting point: which one ("tuned" or "blend"), b_t's weight, the history path's linear
    # weights, the validation score of the blend start and of the tuned one
    start: dict[str, Any] = field(default_factory=dict)
    # each validation user's score (mean Prec@k over `early_stop_ks`; users with a non-empty C, in
    # order) at the start (row 0) and after each epoch: what `keep_epoch_z` and `utpm bench gate` read
    val_user_scores: np.ndarray | None = None
    # the epoch the early stopping chose, before `keep_epoch_z` (equal to best_epoch unless the gate fell back)
    best_epoch_ungated: int = 0
    # the loss it trained with: `config.loss`, or its SAMPLED_FORM where an all-tag loss meets a
    # vocabulary of more than FULL_SOFTMAX_MAX_TAGS tags
    loss: str = ""


class UserSequences:
    """Every kept user's events (history then label period) with each item's field values: the
    history fields read `item_values` (an item's first N tags, or every tag with `all_item_tags`),
    C and the tag vocabulary an item's first N tags (`label_item_tags`)."""

    def __init__(
        self, split: ProtocolSplit, n_tags_per_item: int, label_ratio: float | None = None, all_item_tags: bool = False
    ) -> None:
        self.split = split
        self.N = n_tags_per_item
        self.label_ratio = label_ratio
        cols = split.item_columns or {"tags": split.item_tags}
        self.item_values: dict[str, list[list[str]]] = {}
        for col, ragged in cols.items():
            self.item_values[col] = [ragged.row(j) for j in range(len(ragged))]
        self.label_item_tags = [r[:n_tags_per_item] for r in self.item_values["tags"]]
        self.item_ids = [str(v) for v in split.item_ids.tolist()]
        if not all_item_tags:
            self.item_values["tags"] = self.label_item_tags
        h, lab = split.history, split.labels
        self.items: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.n_hist: np.ndarray = h.lengths().copy()
        for i in range(split.n_users):
            self.items.append(np.concatenate([h.row_codes(i), lab.row_codes(i)]))
            lo, hi = h.offsets[i], h.offsets[i + 1]
            llo, lhi = lab.offsets[i], lab.offsets[i + 1]
            self.labels.append(np.concatenate([split.history_values[lo:hi], split.label_values[llo:lhi]]))
        self.single = {name: r for name, r in split.fields.items() if split.field_kinds[name] is FieldKind.SINGLE}

    def stats(self, i: int, n_hist: int | None = None) -> dict[str, FieldStats]:
        """User i's field stats from their first `n_hist` events (default: the protocol's history)."""
        n = int(self.n_hist[i]) if n_hist is None else n_hist
        items, labels = self.items[i][:n], self.labels[i][:n]
        out: dict[str, FieldStats] = {}
        clicked = items[labels == 1]
        for col, values in self.item_values.items():
            seq: list[str] = []
            src: list[int] = []
            for it in clicked.tolist():
                vs = values[it]
                seq.extend(vs)
                src.extend([it] * len(vs))
            if seq:
                out[f"clicked_{col}"] = stats_from_sequence(seq, src)
        if len(clicked):
            ids = self.item_ids
            out[ITEM_FIELD] = stats_from_sequence([ids[it] for it in clicked.tolist()])
        unclicked = items[labels == 0]
        if len(unclicked):
            seq = [t for it in unclicked.tolist() for t in self.item_values["tags"][it]]
            if seq:
                out[UNCLICKED_FIELD] = stats_from_sequence(seq)
        for name, r in self.single.items():
            vals = r.row(i)
            if vals:
                out[name] = FieldStats([vals[0]], [1.0], [1.0], [1.0])
        return out

    def label_end(self, i: int, n_hist: int) -> int:
        """End of the label window after the first `n_hist` events: the rest of the log at the
        protocol's cut; at another cut, with `label_ratio`, as many events as the protocol's label
        period has per history event (0.25 for an 80/20 cut), so that C has the size Eq. 5 meets."""
        n = len(self.items[i])
        if self.label_ratio is None or n_hist == int(self.n_hist[i]):
            return n
        return min(n, n_hist + max(1, math.ceil(n_hist * self.label_ratio)))

    def label_tags(self, i: int, n_hist: int | None = None) -> set[str]:
        """Tags (first N) of the label-1 items in the label window after the first `n_hist` events: C of Eq. 5."""
        n = int(self.n_hist[i]) if n_hist is None else n_hist
        end = self.label_end(i, n)
        items, labels = self.items[i][n:end], self.labels[i][n:end]
        tags = self.label_item_tags
        return {t for it in items[labels == 1].tolist() for t in tags[it]}

    def label_items(self, i: int, n_hist: int) -> tuple[list[list[str]], list[int]]:
        end = self.label_end(i, n_hist)
        items, labels = self.items[i][n_hist:end], self.labels[i][n_hist:end]
        tags = self.label_item_tags
        return [tags[it] for it in items.tolist()], labels.tolist()


def build_history_vocabularies(
    split: ProtocolSplit, seqs: UserSequences, train_rows: np.ndarray, max_values: int, min_count: int
) -> tuple[FeatureEncoder, Vocabulary]:
    """One tag vocabulary (every tag of the training users' events, first N per item) shared by the
    tag input fields and the output; the other fields' vocabularies as for the paper's models."""
    tag_seq: list[str] = []
    tags_of = seqs.label_item_tags
    for i in train_rows.tolist():
        for it in seqs.items[i].tolist():
            tag_seq.extend(tags_of[it])
    tags = Vocabulary.build(tag_seq, 1)
    base = build_encoder(split, train_rows, max_values, min_count)
    specs: list[FieldSpec] = []
    vocabs: dict[str, Vocabulary] = {}
    for s in base.specs:
        if s.name in (TAG_FIELD, UNCLICKED_FIELD):
            specs.append(FieldSpec(s.name, s.kind, len(tags), s.max_len))
            vocabs[s.name] = tags
        else:
            specs.append(s)
            vocabs[s.name] = base.vocabs[s.name]
    return FeatureEncoder(specs, vocabs), tags


def tag_stats_users(
    seqs: UserSequences, rows: np.ndarray, tags: Vocabulary, options: HistoryOptions
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Users `rows` at the protocol's cut as `TagStats.fit` takes them: the tag ids of their
    `max_history_tags` most clicked history tags, and of their label tags."""
    lookup = tags.lookup
    users = {}
    for i in rows.tolist():
        st = seqs.stats(i).get(TAG_FIELD)
        if st is not None:
            top = sorted(range(len(st)), key=lambda j: -st.count[j])[: options.max_history_tags]
            hist = np.asarray([lookup.get(st.values[j], 0) for j in top], np.int64)
        else:
            hist = np.zeros(0, np.int64)
        users[i] = (hist, np.asarray([lookup.get(t, 0) for t in seqs.label_tags(i)], np.int64))
    return users


def fit_tag_stats(
    seqs: UserSequences,
    rows: np.ndarray,
    tags: Vocabulary,
    options: HistoryOptions,
    users: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None,
) -> TagStats:
    """`TagStats` from users `rows` at the protocol's cut: their clicked history tags -> label tags;
    `users`: `tag_stats_users` of these rows or more, when the caller has it already."""
    users = tag_stats_users(seqs, rows, tags, options) if users is None else users
    picked = [users[i] for i in rows.tolist()]
    return TagStats.fit(
        [h for h, _ in picked], [c for _, c in picked], len(tags), options.neighbours, options.shrinkage
    )


def fit_item_tags(
    seqs: UserSequences, rows: np.ndarray, tags: Vocabulary, options: HistoryOptions
) -> ItemNeighbourTags:
    """`ItemNeighbourTags` of users `rows`' clicked items, history and label period (other users'
    whole logs, as `TagStats` reads them); an item gives its first N tags, the ones C counts."""
    clicked = [seqs.items[i][seqs.labels[i] == 1] for i in rows.tolist()]
    item_tags = seqs.label_item_tags
    return ItemNeighbourTags.fit(
        clicked,
        seqs.item_ids,
        lambda c: tags.ids_of(item_tags[c], len(item_tags[c])),
        options.item_neighbours,
        recent_items=options.recent_items,
    )


def history_encoder(
    seqs: UserSequences,
    rows: np.ndarray,
    encoder: FeatureEncoder,
    tags: Vocabulary,
    options: HistoryOptions,
    users: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None,
) -> HistoryEncoder:
    """The history encoder whose learnt parts (`TagStats`, `ItemNeighbourTags`, each if `options` has
    it) come from users `rows`; `users`: `tag_stats_users` of these rows or more."""
    stats = fit_tag_stats(seqs, rows, tags, options, users) if options.transitions else None
    items = fit_item_tags(seqs, rows, tags, options) if options.item_neighbours > 0 else None
    return HistoryEncoder(
        encoder,
        tags,
        options.max_history_tags,
        stats,
        options.extra_candidates,
        items,
        options.item_candidates,
        distinct_items=options.distinct_items,
    )


@dataclass
class _EncodedChunk:
    """A training batch ready for the loss: its examples (by half of the training users, the order of
    the rows), the model input and the label targets (rows, tag ids)."""

    examples: list[tuple[int, int]]
    inputs: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]
    rows: torch.Tensor
    cols: torch.Tensor


def _concat(batches: Sequence[HistoryBatch]) -> HistoryBatch:
    if len(batches) == 1:
        return batches[0]
    return HistoryBatch(
        [np.concatenate(x) for x in zip(*(b.ids for b in batches), strict=True)],
        [np.concatenate(x) for x in zip(*(b.masks for b in batches), strict=True)],
        [np.concatenate(x) for x in zip(*(b.counts for b in batches), strict=True)],
        np.concatenate([b.hist_ids for b in batches]),
        np.concatenate([b.hist_feats for b in batches]),
        np.concatenate([b.hist_mask for b in batches]),
        [u for b in batches for u in b.unknown],
    )


def batch_tensors(
    b: HistoryBatch,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, masks, counts per field, hist_ids, hist_feats, hist_mask) of an encoded batch, as tensors."""
    return (
        [torch.from_numpy(x) for x in b.ids],
        [torch.from_numpy(x) for x in b.masks],
        [torch.from_numpy(x) for x in b.counts],
        torch.from_numpy(b.hist_ids),
        torch.from_numpy(b.hist_feats),
        torch.from_numpy(b.hist_mask),
    )


def rank_chunk(n_tags: int) -> int:
    """Users scored at once over every tag: at most RANK_CHUNK_SCORES floats, at least 16 users."""
    return max(16, min(512, RANK_CHUNK_SCORES // max(1, n_tags)))


def rank_history(model: HistoryModel, batch: HistoryBatch, tags: Vocabulary, k: int) -> list[list[str]]:
    """Top-k tags by the final score for each user of `batch` (padding and OOV excluded)."""
    out: list[list[str]] = []
    k = min(k, len(tags) - 2)
    chunk = rank_chunk(len(tags))
    model.eval()
    ids, masks, counts, hid, hf, hm = batch_tensors(batch)
    with torch.no_grad():
        for lo in range(0, batch.size, chunk):
            sl = slice(lo, lo + chunk)
            s = model.scores(
                [x[sl] for x in ids], [x[sl] for x in masks], [x[sl] for x in counts], hid[sl], hf[sl], hm[sl]
            )
            s[:, : Vocabulary.OOV + 1] = -torch.inf
            top = top_k(s.numpy(), k)
            out.extend([[tags.token(int(t)) for t in row] for row in top])
    return out


def encode_users(seqs: UserSequences, henc: HistoryEncoder, rows: Sequence[int] | np.ndarray) -> HistoryBatch:
    """The history model's input for users `rows` at the protocol's cut."""
    return henc.encode([seqs.stats(int(i)) for i in rows])


def trimmed(batch: HistoryBatch) -> HistoryBatch:
    """`batch` with its history slots cut to its widest user's: the slots after them are padding."""
    n = max(1, int(batch.hist_mask.sum(axis=1).max())) if batch.size else 1
    return replace(
        batch,
        hist_ids=batch.hist_ids[:, :n].copy(),
        hist_feats=batch.hist_feats[:, :n].copy(),
        hist_mask=batch.hist_mask[:, :n].copy(),
    )


def encode_ranking_chunks(
    seqs: UserSequences, henc: HistoryEncoder, rows: Sequence[int] | np.ndarray
) -> Iterator[HistoryBatch]:
    """Users `rows` encoded one ranking chunk at a time, each `trimmed`, as they are asked for: one
    batch padded to `henc.width` slots a user is mostly padding (docs/training.md, "Where the memory goes")."""
    return _ranking_batches(henc, rows, lambda i: seqs.stats(int(i)))


def _ranking_batches(
    henc: HistoryEncoder, users: Sequence[Any] | np.ndarray, stats_of: Callable[[Any], Mapping[str, FieldStats]]
) -> Iterator[HistoryBatch]:
    """`users` (rows or requests, each read by `stats_of`) encoded one ranking chunk at a time, each `trimmed`."""
    chunk = rank_chunk(len(henc.tags))
    for lo in range(0, len(users), chunk):
        yield trimmed(henc.encode([stats_of(u) for u in users[lo : lo + chunk]]))


def rank_chunks(model: HistoryModel, chunks: Iterable[HistoryBatch], tags: Vocabulary, k: int) -> list[list[str]]:
    """`rank_history` of `encode_ranking_chunks`' batches, one after the other: the rankings of one batch."""
    return [ranked for batch in chunks for ranked in rank_history(model, batch, tags, k)]


def rank_users(
    model: HistoryModel, seqs: UserSequences, henc: HistoryEncoder, rows: Sequence[int] | np.ndarray, k: int
) -> list[list[str]]:
    """`rank_history` of users `rows` encoded chunk by chunk: one chunk's input held at a time."""
    return rank_chunks(model, encode_ranking_chunks(seqs, henc, rows), henc.tags, k)


def rank_requests(
    model: HistoryModel, henc: HistoryEncoder, requests: Sequence[Mapping[str, object]], k: int
) -> list[list[str]]:
    """`rank_history` of users sent as requests (`HistoryEncoder.parse`, as the service parses them),
    one ranking chunk at a time: what the service ranks for them (the export's parity gate holds the
    served graph to this model)."""
    return rank_chunks(model, _ranking_batches(henc, requests, henc.parse), henc.tags, k)


def short_request(stats: Mapping[str, FieldStats], n: int) -> dict[str, FieldStats]:
    """A user's features as a short request would carry them: each clicked field's `n` most recent
    values sent once each (as the service parses such a list), no unclicked field, the rest as is."""
    out: dict[str, FieldStats] = {}
    for name, st in stats.items():
        if name == UNCLICKED_FIELD:
            continue
        out[name] = stats_from_sequence(st.values[-n:]) if name.startswith("clicked_") else st
    return out


def _examples(seqs: UserSequences, rows: np.ndarray, cuts: Sequence[float]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in rows.tolist():
        n = len(seqs.items[i])
        points = {int(seqs.n_hist[i])} | {math.floor(n * c) for c in cuts}
        for h in sorted(points):
            if 1 <= h < n and (seqs.labels[i][h : seqs.label_end(i, h)] == 1).any():
                out.append((i, h))
    return out


def _multi_hot(label_sets: Sequence[set[str]], tags: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """(rows, tag ids) of every known label tag, for a sparse target."""
    r: list[int] = []
    c: list[int] = []
    lookup = tags.lookup
    for b, s in enumerate(label_sets):
        for t in s:
            j = lookup.get(t, Vocabulary.OOV)
            if j > Vocabulary.OOV:
                r.append(b)
                c.append(j)
    return np.asarray(r, np.int64), np.asarray(c, np.int64)


def _softmax_loss(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, b: int) -> torch.Tensor:
    scores = scores.clone()
    scores[:, : Vocabulary.OOV + 1] = _NEG
    logp = F.log_softmax(scores, dim=1)
    y = torch.zeros_like(scores)
    y[rows, cols] = 1.0
    n = y.sum(1)
    has = n > 0
    per_user = -(y * logp).sum(1)[has] / n[has]
    return per_user.mean() if bool(has.any()) else scores.sum() * 0.0


@dataclass
class HistorySetup:
    """What training the history model starts from, before any model exists (`prepare_history`):
    the user split, the vocabularies and encoders, the training examples, b_t and the blend's a, c."""

    val_rows: np.ndarray
    train_rows: np.ndarray
    seqs: UserSequences
    encoder: FeatureEncoder
    tags: Vocabulary
    # the encoder of validation, test and serving (`TagStats` of all training users)
    henc: HistoryEncoder
    # a training user in half k is encoded by train_encs[k] (`TagStats` of the other half)
    train_encs: list[HistoryEncoder]
    half: np.ndarray
    examples: list[tuple[int, int]]
    # label-tag popularity among the training users, counted as `blend.popularity` says; b_t = log1p(pop)
    pop: np.ndarray
    # per training user: (tag ids, change of log1p(pop) when the user's own labels are left out)
    own_pop: dict[int, tuple[np.ndarray, np.ndarray]]
    blend: Blend

    @property
    def bias(self) -> np.ndarray:
        return np.log1p(self.pop).astype(np.float32)


def prepare_history(split: ProtocolSplit, config: HistoryTrainConfig, stage: Stage | None = None) -> HistorySetup:
    """The user split (the same as `trainer.train`'s), vocabularies, tag statistics, training examples,
    popularity and the blend's a, c tuned on the validation users, as `train_history` uses them.
    `stage` is told what starts next (long on large data)."""
    say = _stage_or_silent(stage)
    rng = np.random.default_rng(config.seed)
    train_all = split.indices(test=False)
    perm = rng.permutation(train_all)
    n_val = max(1, round(len(perm) * config.val_fraction)) if config.val_fraction > 0 else 0
    val_rows, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    p = config.preset
    options: HistoryOptions = config.history
    ratio = (1.0 - split.history_fraction) / split.history_fraction if config.matched_windows else None
    say(f"vocabularies of {len(train_rows):,} training users")
    seqs = UserSequences(split, p.N, ratio, options.all_item_tags)
    encoder, tags = build_history_vocabularies(split, seqs, train_rows, p.H, config.min_count)
    # Tag statistics for validation, test and serving come from all training users; a training
    # user's own examples get those of the other half of the training users (cross-fitting), so
    # that their features are as out-of-sample as a new user's.
    half = np.zeros(split.n_users, np.int64)
    if options.transitions or options.item_neighbours > 0:
        say(f"tag statistics and item neighbours over {len(tags):,} tags (all training users, then each half)")
        users = tag_stats_users(seqs, train_rows, tags, options) if options.transitions else None  # read once
        henc = history_encoder(seqs, train_rows, encoder, tags, options, users)
        halves = np.array_split(rng.permutation(train_rows), 2)
        half[halves[1]] = 1
        train_encs = [history_encoder(seqs, halves[1 - k], encoder, tags, options, users) for k in (0, 1)]
    else:
        henc = HistoryEncoder(encoder, tags, options.max_history_tags, distinct_items=options.distinct_items)
        train_encs = [henc, henc]
    cuts = (*config.augment_cuts, split.history_fraction)
    # a training budget (TrainConfig.max_train_users): the vocabularies still come from every training user
    step_rows = train_rows
    if 0 < config.max_train_users < len(train_rows):
        step_rows = np.sort(rng.choice(train_rows, config.max_train_users, replace=False))
    say(f"training examples of {len(step_rows):,} users")
    examples = _examples(seqs, step_rows, cuts)
    if not examples:
        raise ValueError("no training examples: no training user has a label-1 item after a history")
    # Start at the blend yardstick tuned on the validation users: b_t = log1p(popularity among the
    # training users' label items, counted as the blend counts it), the history path's linear part a, c
    # (docs/results.md).
    say(f"the blend's a and c on {len(val_rows):,} validation users")
    blend = (
        tune_blend(split, train_rows, val_rows, p.N, tuple(config.early_stop_ks), all_item_tags=options.all_item_tags)
        if config.start_at_blend and len(val_rows)
        else Blend(0.0, 0.0)
    )
    say("popularity tables")
    pop, own_pop = popularity_tables(split, train_rows, tags, p.N, blend.popularity)
    return HistorySetup(
        val_rows, train_rows, seqs, encoder, tags, henc, list(train_encs), half, examples, pop, own_pop, blend
    )


def epoch_beats_start(gains: np.ndarray, z: float) -> bool:
    """Whether per-user gains over the start (paired) have a mean at least `z` standard errors above zero."""
    n = len(gains)
    if n < 2:
        return bool(n and gains.mean() > 0)
    se = float(gains.std(ddof=1)) / math.sqrt(n)
    return float(gains.mean()) > z * se if se > 0 else float(gains.mean()) > 0


def popularity_tables(
    split: ProtocolSplit, train_rows: np.ndarray, tags: Vocabulary, max_tags: int, count: str
) -> tuple[np.ndarray, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Label-tag popularity among the training users by tag id, counted as `count` says (b_t is its
    log1p), and per training user the change of log1p(popularity) when their own labels are left out."""
    pop = np.zeros(len(tags), np.float64)
    for t, n in popularity_counts(split, train_rows, max_tags, count).items():
        pop[tags.lookup.get(t, 0)] += n
    pop[: Vocabulary.OOV + 1] = 0.0
    # b_t of a training user's own example leaves that user's labels out of the popularity (else
    # the base looks better on training users than on new ones and the residual learns that)
    own_pop: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i in train_rows.tolist():
        own = popularity_counts(split, np.asarray([i]), max_tags, count)
        ids_ = np.asarray([tags.lookup.get(t, 0) for t in own], np.int64)
        n_own = np.asarray(list(own.values()), np.float64)
        ok = ids_ > Vocabulary.OOV
        ids_, n_own = ids_[ok], n_own[ok]
        own_pop[i] = (ids_, (np.log1p(np.maximum(pop[ids_] - n_own, 0.0)) - np.log1p(pop[ids_])).astype(np.float32))
    return pop, own_pop


def train_history(
    split: ProtocolSplit,
    config: HistoryTrainConfig,
    out: Any = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    stage: Stage | None = None,
) -> HistoryTrainResult:
    """Train `utpm-hist` on the protocol's training users; the same user split as `trainer.train`.

    `progress` gets each epoch's figures; `stage` is told what starts next, also within an epoch
    (`STAGE_STEPS` times), for a caller that shows long work on large data."""
    say = _stage_or_silent(stage)
    if config.threads:
        torch.set_num_threads(config.threads)
    st = prepare_history(split, config, stage)
    seqs, tags, encoder, henc, train_encs = st.seqs, st.tags, st.encoder, st.henc, st.train_encs
    val_rows, train_rows, test_rows = st.val_rows, st.train_rows, split.indices(test=True)
    examples, half, own_pop = st.examples, st.half, st.own_pop
    p = config.preset
    options: HistoryOptions = config.history
    n_tags = len(tags)
    loss_name = config.loss
    if loss_name in ALL_TAG_LOSSES and n_tags > FULL_SOFTMAX_MAX_TAGS:
        loss_name = SAMPLED_FORM[loss_name]
    model = build_history_model(encoder.specs, n_tags, p, options, seed=config.seed)
    blend_weights = {"log1p_count": st.blend[0], "log1p_distinct_items": st.blend[1]}
    bias0 = st.bias
    model.start_at(torch.from_numpy(bias0), blend_weights)
    say(f"encoding {len(val_rows):,} validation users")
    val_chunks = list(encode_ranking_chunks(seqs, henc, val_rows))  # kept for every validation pass
    val_clicked = [split.clicked_tags(int(i), p.N) for i in val_rows]
    val_ks = tuple(sorted(set(config.eval_ks) | set(config.early_stop_ks)))

    def evaluate(
        rank: Callable[[int], list[list[str]]], clicked: list[set[str]], ks: Sequence[int]
    ) -> tuple[dict[int, float], int, np.ndarray]:
        """Mean Prec@k over `ks`, the users skipped (empty C), and each other user's mean Prec@k over
        `early_stop_ks` (what the epoch gate compares), of the users `rank(k)` gives top-k lists of."""
        if not ks or not len(clicked):  # no validation users, or eval_ks=() (a budgeted run over 1M tags)
            return {}, 0, np.zeros(0)
        stop_ks = config.early_stop_ks
        ranked = rank(max((*ks, *stop_ks)))
        res = {k: precision_at_k(ranked, clicked, k) for k in ks}
        users = [np.mean([user_precision(r, c, k) for k in stop_ks]) for r, c in zip(ranked, clicked, strict=True) if c]
        return {k: r.value for k, r in res.items()}, res[ks[0]].skipped_users, np.asarray(users)

    # trained on short requests too: validation also sends its users as short requests, so that the
    # start and the epoch are chosen for what they do to both shapes
    val_short = (
        henc.encode([short_request(seqs.stats(int(i)), VAL_SHORT_REQUEST) for i in val_rows])
        if config.short_requests
        else None
    )

    def validate() -> tuple[dict[int, float], float, np.ndarray | None]:
        """The validation users' Prec@K, the stopping score (mean Prec@K over `early_stop_ks`, averaged
        with the short requests' when trained on them) and each user's score, averaged the same way."""
        full, _, users = evaluate(lambda k: rank_chunks(model, val_chunks, tags, k), val_clicked, val_ks)
        if not full:
            return full, 0.0, None
        score = float(np.mean([full[k] for k in config.early_stop_ks]))
        if val_short is not None:
            short_batch = val_short
            short, _, short_users = evaluate(
                lambda k: rank_history(model, short_batch, tags, k), val_clicked, config.early_stop_ks
            )
            score = (score + float(np.mean([short[k] for k in config.early_stop_ks]))) / 2
            users = (users + short_users) / 2
        return full, score, users

    w_bias = 1.0
    # validate() of the start where the start's choice already ran it (a pass over every tag, not repeated)
    start_validation: tuple[dict[int, float], float, np.ndarray | None] | None = None
    # b_t's popularity counts what the blend tuned on the validation users chose (`POPULARITY_COUNTS`)
    popularity = st.blend.popularity
    start_info: dict[str, Any] = {
        "kind": "blend",
        "w_bias": 1.0,
        "weights": dict(blend_weights),
        "popularity": popularity,
    }
    if config.start == "tuned" and config.start_at_blend and len(val_rows) and model.g is not None:
        # a linear start over b_t and every phi, tuned on the training examples (their features as
        # the residual's training sees them), kept if it does at least as well as the blend on the
        # validation users, scored by the model itself
        t0 = time.perf_counter()
        say("tuning the linear start on training examples")
        tuned = tune_linear_start(st, config)
        say(f"the blend and the tuned start on {len(val_rows):,} validation users x {n_tags:,} tags")
        blend_validation = validate()
        model.start_at(torch.from_numpy(tuned.w_bias * bias0), tuned.weights)
        start_validation = validate()
        blend_val, tuned_val = blend_validation[1], start_validation[1]
        keep = tuned_val >= blend_val
        if keep:
            w_bias = tuned.w_bias
        else:
            model.start_at(torch.from_numpy(bias0), {n: 0.0 for n in tuned.weights} | blend_weights)
            start_validation = blend_validation
        start_info = {
            "kind": "tuned" if keep else "blend",
            "w_bias": w_bias,
            "weights": tuned.weights if keep else dict(blend_weights),
            "tuned": {"w_bias": tuned.w_bias, "weights": tuned.weights},
            "tuning_examples": tuned.users,
            "tuning_score": tuned.score,
            "tuning_score_blend": tuned.start_score,
            "val_score": tuned_val,
            "val_score_blend": blend_val,
            "popularity": popularity,
            "seconds": time.perf_counter() - t0,
        }
        log.info("start: %s", start_info)
    if w_bias != 1.0:
        # b_t is w_bias * log1p(popularity): a training user's own-labels-out b_t scales with it
        own_pop = {i: (ids_, (w_bias * d).astype(np.float32)) for i, (ids_, d) in own_pop.items()}
    if config.tag_vectors:  # the serving benchmark's warm start (utpm.training.warm_start)
        from utpm.training.warm_start import apply_tag_vectors

        warmed = apply_tag_vectors(model.base, encoder, tags, config.tag_vectors, config.freeze_tag_vectors)
        start_validation = None  # the start's scores changed
        log.info("tag tables started from %s: %s", config.tag_vectors, warmed)
    if not config.train_base:
        model.tag_bias.requires_grad_(False)
        if model.g is not None:
            model.g.linear.weight.requires_grad_(False)
    q = (st.pop + 1.0) ** 0.75
    q[: Vocabulary.OOV + 1] = 0.0
    q = q / q.sum() if q.sum() > 0 else q
    # The losses see scale * s(u, t) (+ offset for the BCE of `joint`): ranking ignores both, but a
    # start at the blend has an arbitrary scale (a = 16 gives logits ~50), which a softmax punishes.
    log_scale = torch.nn.Parameter(torch.zeros(()))
    offset = torch.nn.Parameter(torch.zeros(()))
    trainable = [x for x in model.parameters() if x.requires_grad]
    # only the sampled loss looks the tables up row by row (the others score every tag)
    sparse = large_tables(model, FULL_SOFTMAX_MAX_TAGS) if loss_name in SAMPLED_LOSSES and config.sparse_updates else []
    optim = RowSparseAdam([*trainable, log_scale, offset], sparse, config.lr, config.weight_decay)
    torch.manual_seed(config.seed)
    order_rng = np.random.default_rng(config.seed + 1)

    short_rng = np.random.default_rng(config.seed + 3)

    def encode_chunk(chunk: Sequence[tuple[int, int]]) -> _EncodedChunk:
        parts = [[ex for ex in chunk if half[ex[0]] == k] for k in (0, 1)]
        chunk = parts[0] + parts[1]
        stats = [seqs.stats(i, h) for i, h in chunk]
        if config.short_requests:
            for j in np.flatnonzero(short_rng.random(len(stats)) < config.short_requests).tolist():
                stats[j] = short_request(stats[j], int(short_rng.integers(1, SHORT_REQUEST_MAX + 1)))
        bounds = [0, len(parts[0]), len(chunk)]
        batch = _concat([train_encs[k].encode(stats[bounds[k] : bounds[k + 1]]) for k in (0, 1) if parts[k]])
        label_sets = [seqs.label_tags(i, h) for i, h in chunk]
        rows, cols = (torch.from_numpy(a) for a in _multi_hot(label_sets, tags))
        return _EncodedChunk(chunk, batch_tensors(batch), rows, cols)

    def all_tag_scores(encoded: _EncodedChunk) -> torch.Tensor:
        """s(u, t) of every tag (the `bce` and `softmax` losses), b_t without the user's own labels."""
        chunk = encoded.examples
        ids, masks, counts, hid, hf, hm = encoded.inputs
        u = model.user_vector(ids, masks, counts)[0]
        s = model.model_scores(u).scatter_add(1, hid, model.history_scores(hf, hm))
        if config.leave_own_labels_out:
            r_, c_, v_ = _own_label_changes(chunk)
            s = s.index_put((r_, c_), v_, accumulate=True)
        return s

    def _own_label_changes(chunk: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, tag id, change of b_t) of each training example's own labels left out of the popularity."""
        r_ = np.concatenate([np.full(len(own_pop[i][0]), b) for b, (i, _) in enumerate(chunk)])
        c_ = np.concatenate([own_pop[i][0] for i, _ in chunk])
        v_ = np.concatenate([own_pop[i][1] for i, _ in chunk])
        return torch.from_numpy(r_), torch.from_numpy(c_), torch.from_numpy(v_)

    def all_tag_loss(encoded: _EncodedChunk, s: torch.Tensor) -> torch.Tensor:
        if loss_name == "bce":
            return _bce_loss(s * log_scale.exp() + offset, encoded.rows, encoded.cols)
        return _softmax_loss(s * log_scale.exp(), encoded.rows, encoded.cols, len(encoded.examples))

    def batch_loss(encoded: _EncodedChunk) -> torch.Tensor:
        if loss_name in ALL_TAG_LOSSES:
            return all_tag_loss(encoded, all_tag_scores(encoded))
        chunk, rows, cols = encoded.examples, encoded.rows, encoded.cols
        ids, masks, counts, hid, hf, hm = encoded.inputs
        u = model.user_vector(ids, masks, counts)[0]
        scale = log_scale.exp()
        if loss_name == "sampled":
            return _sampled_loss(model, u, rows, cols, hid, hf, hm, q, config.sampled_negatives, order_rng, scale)
        if loss_name == "sampled_bce":
            own = _own_label_changes(chunk) if config.leave_own_labels_out else None
            return _sampled_bce_loss(
                model, u, rows, cols, hid, hf, hm, q, config.sampled_negatives, order_rng, scale, offset, own
            )
        return _joint_loss(
            model, u, chunk, seqs, tags, hid, hf, hm, p.K, config.negatives_per_positive, order_rng, scale, offset
        )

    # the starting scale: the best of a coarse grid on a few training batches
    say("the loss's starting scale")
    probe = [examples[j] for j in order_rng.permutation(len(examples))[: 4 * config.batch_size]]
    # encoded once for the whole grid (the losses' own random draws stay in the same order)
    probe_batches = [encode_chunk(probe[j : j + config.batch_size]) for j in range(0, len(probe), config.batch_size)]
    with torch.no_grad():
        grid = [(float(x), float(o)) for x in np.log(2.0 ** np.arange(-6, 3)) for o in _offset_grid(loss_name)]
        if loss_name in ALL_TAG_LOSSES:  # their scores do not depend on the scale: one forward pass
            scored = [(e, all_tag_scores(e)) for e in probe_batches]

            def probe_loss() -> float:
                return float(np.mean([float(all_tag_loss(e, s)) for e, s in scored]))
        else:  # the other losses draw negatives per call, in the same order as before

            def probe_loss() -> float:
                return float(np.mean([float(batch_loss(e)) for e in probe_batches]))

        probe_losses = []
        for g, o in grid:
            log_scale.fill_(g)
            offset.fill_(o)
            probe_losses.append(probe_loss())
        g, o = grid[int(np.argmin(probe_losses))]
        log_scale.fill_(g)
        offset.fill_(o)

    stopper = EarlyStopping(config.patience)
    seen, train_seconds = 0, 0.0
    # epoch 0, the starting point, is a candidate too: training must beat it on validation to count
    user_scores: list[np.ndarray] = []  # per validation user, at the start and after each epoch
    if start_validation is None:
        say("validating the start")
        start_validation = validate()
    val0, score0, users0 = start_validation
    if users0 is not None:
        user_scores.append(users0)
    # each epoch's validation Prec@k (epoch 0: the start): the kept epoch's are the run's, not ranked again
    val_by_epoch = [val0]
    stopper.start(model, score0, {"epoch": 0, **{f"val_prec@{k}": v for k, v in val0.items()}, "val_score": score0})
    for epoch in range(1, config.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        losses = []
        order = order_rng.permutation(len(examples))
        if config.max_examples_per_epoch:
            order = order[: config.max_examples_per_epoch]
        every, next_note = max(1, len(order) // STAGE_STEPS), 0
        for lo in range(0, len(order), config.batch_size):
            if lo >= next_note:
                say(f"epoch {epoch}/{config.epochs}: {lo:,} of {len(order):,} examples", True)
                next_note = lo + every
            chunk = [examples[j] for j in order[lo : lo + config.batch_size]]
            with row_sparse(sparse):
                loss = batch_loss(encode_chunk(chunk))
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(float(loss.detach()))
            seen += len(chunk)
        train_seconds += time.perf_counter() - t0
        say(f"epoch {epoch}/{config.epochs}: validating")
        val, score, users = validate()
        val_by_epoch.append(val)
        if users is not None:
            user_scores.append(users)
        else:  # without validation every epoch is the best so far: the last one is kept
            score = float(epoch)
        point = epoch_point(epoch, losses, time.perf_counter() - t0, val, score)
        if stopper.update(model, epoch, score, point, progress, config.epochs):
            break
    best_ungated = stopper.best_epoch
    gains = user_scores[best_ungated] - user_scores[0] if best_ungated > 0 and user_scores else None
    if config.keep_epoch_z > 0 and gains is not None and not epoch_beats_start(gains, config.keep_epoch_z):
        stopper.fall_back_to_start()
        log.info("epoch %d gains < %.2f standard errors over the start: start kept", best_ungated, config.keep_epoch_z)
    stopper.restore(model)
    kept = val_by_epoch[stopper.best_epoch]
    val = {k: kept[k] for k in config.eval_ks if k in kept}
    if len(test_rows):
        say(f"the {len(test_rows):,} test users")
        test, skipped, _ = evaluate(
            lambda k: rank_users(model, seqs, henc, test_rows, k),
            [split.clicked_tags(int(i), p.N) for i in test_rows],
            config.eval_ks,
        )
    else:
        test, skipped = {}, 0
    result = HistoryTrainResult(
        model=model,  # type: ignore[arg-type]
        encoder=encoder,
        tags=tags,
        best_epoch=stopper.best_epoch,
        val=val,
        test=test,
        curve=stopper.curve,
        samples_per_s=seen / train_seconds if train_seconds else 0.0,
        train_users=len(train_rows),
        val_users=len(val_rows),
        test_users=len(test_rows),
        skipped_test_users=skipped,
        history_encoder=henc,
        start=start_info,
        val_user_scores=np.stack(user_scores) if user_scores else None,
        best_epoch_ungated=best_ungated,
        loss=loss_name,
    )
    if out is not None:
        say(f"writing {out}")
        save_training(out, split, config, result)
    return result


def tune_linear_start(st: HistorySetup, config: HistoryTrainConfig) -> TunedStart:
    """`tune_start` from the blend's a, c on (a seeded draw of `config.start_examples`) training
    examples (`training_problem`); with item neighbours and `start_items="after"`, in two steps:
    every other weight on the examples without their items, then the item score's weight alone."""
    n = config.start_examples
    chosen = list(st.examples)
    if 0 < n < len(chosen):
        pick = np.sort(np.random.default_rng(config.seed + 2).permutation(len(chosen))[:n])
        chosen = [chosen[j] for j in pick.tolist()]
    blend = {"log1p_count": st.blend[0], "log1p_distinct_items": st.blend[1]}
    ks = tuple(config.early_stop_ks)
    if config.history.item_neighbours <= 0 or config.start_items == "joint":
        return tune_start(training_problem(st, chosen), blend, ks)
    others = [name for name in PHI_NAMES if name != ITEM_FEATURE]
    first = tune_start(training_problem(st, chosen, items=False), blend, ks, features=others)
    second = tune_start(
        training_problem(st, chosen), first.weights, ks, features=[ITEM_FEATURE], tune_bias=False, w_bias=first.w_bias
    )
    # the blend ranks alike with and without the items (their tags get no weight from it)
    return replace(second, start_score=first.start_score, evaluations=first.evaluations + second.evaluations)


def training_problem(st: HistorySetup, examples: Sequence[tuple[int, int]], items: bool = True) -> StartProblem:
    """The `StartProblem` of training examples (user, cut), each encoded as the residual's training
    encodes it: tag statistics of the other half of the training users, b_t without the user's own
    labels; items=False sends them without their clicked items."""
    parts = [[ex for ex in examples if st.half[ex[0]] == k] for k in (0, 1)]
    ordered = parts[0] + parts[1]

    def stats(i: int, h: int) -> dict[str, FieldStats]:
        s = st.seqs.stats(i, h)
        return s if items else {name: v for name, v in s.items() if name != ITEM_FIELD}

    batch = _concat([st.train_encs[k].encode([stats(i, h) for i, h in part]) for k, part in enumerate(parts) if part])
    return StartProblem.build(
        batch, st.bias, [st.seqs.label_tags(i, h) for i, h in ordered], st.tags, [st.own_pop[i] for i, _ in ordered]
    )


def _offset_grid(loss: str) -> tuple[float, ...]:
    """Starting offsets tried for the losses with an offset (a label tag is rare among all tags)."""
    return (-12.0, -10.0, -8.0, -6.0, -4.0, -2.0, 0.0) if loss in ("bce", "sampled_bce") else (0.0,)


def _bce_loss(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Pointwise: one BCE per (user, tag) on "t is in C", summed over tags, mean over users; its
    optimum ranks tags by P(t in C | user), which is what Prec@K rewards."""
    y = torch.zeros_like(logits)
    y[rows, cols] = 1.0
    terms = F.binary_cross_entropy_with_logits(logits, y, reduction="none")[:, Vocabulary.OOV + 1 :]
    return terms.sum(1).mean()


def _sampled_candidates(
    cols: torch.Tensor, hid: torch.Tensor, hm: torch.Tensor, q: np.ndarray, n_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, int, np.ndarray]:
    """The sampled losses' columns: the batch's label tags and candidates (ascending), then the tags
    drawn `n_samples` times from Q that are not among them (ascending); as (tag ids, how many come
    first, how often each drawn one was drawn)."""
    sampled = rng.choice(len(q), size=n_samples, p=q)
    forced = np.unique(np.concatenate([cols.numpy(), hid[hm > 0].numpy()]))
    forced = forced[forced > Vocabulary.OOV]
    drawn, times = np.unique(sampled, return_counts=True)
    rest = ~np.isin(drawn, forced) & (drawn > Vocabulary.OOV)
    return np.concatenate([forced, drawn[rest]]), len(forced), times[rest]


def _positions(n_tags: int, cand: torch.Tensor) -> torch.Tensor:
    """Each tag id's column among `cand`, -1 for the others."""
    pos = torch.full((n_tags,), -1, dtype=torch.long)
    pos[cand] = torch.arange(len(cand))
    return pos


def _sampled_loss(
    model: HistoryModel,
    u: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    hid: torch.Tensor,
    hf: torch.Tensor,
    hm: torch.Tensor,
    q: np.ndarray,
    n_samples: int,
    rng: np.random.Generator,
    scale: torch.Tensor,
) -> torch.Tensor:
    cand, n_forced, _ = _sampled_candidates(cols, hid, hm, q, n_samples, rng)
    correction = np.zeros(len(cand), np.float32)
    correction[n_forced:] = np.log(n_samples * q[cand[n_forced:]]).astype(np.float32)
    c = torch.from_numpy(cand)
    s = model.candidate_scores(u, c, hid, hf, hm) * scale - torch.from_numpy(correction)
    pos = _positions(model.n_tags, c)
    return _softmax_loss(torch.cat([torch.full((len(u), 2), _NEG), s], 1), rows, pos[cols] + 2, len(u))


def _sampled_bce_loss(
    model: HistoryModel,
    u: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    hid: torch.Tensor,
    hf: torch.Tensor,
    hm: torch.Tensor,
    q: np.ndarray,
    n_samples: int,
    rng: np.random.Generator,
    scale: torch.Tensor,
    offset: torch.Tensor,
    own: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """`_bce_loss` estimated: exact on the batch's label tags and candidates; the other tags' terms
    (all negatives) from `n_samples` draws of Q, each weighted 1 / (n_samples * q_t), an unbiased
    estimate of their sum. `own`: each row's own labels left out of b_t, as `bce` scores them."""
    cand, n_forced, times = _sampled_candidates(cols, hid, hm, q, n_samples, rng)
    weight = np.concatenate([np.ones(n_forced), times / (n_samples * q[cand[n_forced:]])]).astype(np.float32)
    c = torch.from_numpy(cand)
    s = model.candidate_scores(u, c, hid, hf, hm)
    pos = _positions(model.n_tags, c)
    if own is not None:
        r_, c_, v_ = own
        at = pos[c_]
        s = s.index_put((r_[at >= 0], at[at >= 0]), v_[at >= 0], accumulate=True)
    y = torch.zeros_like(s)
    y[rows, pos[cols]] = 1.0
    terms = F.binary_cross_entropy_with_logits(s * scale + offset, y, reduction="none")
    return (terms * torch.from_numpy(weight)).sum(1).mean()


def _joint_loss(
    model: HistoryModel,
    u: torch.Tensor,
    chunk: Sequence[tuple[int, int]],
    seqs: UserSequences,
    tags: Vocabulary,
    hid: torch.Tensor,
    hf: torch.Tensor,
    hm: torch.Tensor,
    K: int,
    r: int,
    rng: np.random.Generator,
    scale: torch.Tensor,
    offset: torch.Tensor,
) -> torch.Tensor:
    b, n = len(chunk), seqs.N
    item_tags = np.zeros((b, K * (1 + r), n), np.int64)
    labels = np.zeros((b, K * (1 + r)), np.float32)
    mask = np.zeros((b, K * (1 + r)), np.float32)
    for j, (i, h) in enumerate(chunk):
        items, ys = seqs.label_items(i, h)
        items, ys = items[:K], ys[:K]
        for k, (ts, y) in enumerate(zip(items, ys, strict=True)):
            ids = [tags.lookup.get(t, 0) for t in ts]
            ids = [x if x > Vocabulary.OOV else 0 for x in ids]
            if not any(ids):
                continue
            item_tags[j, k, : len(ids)] = ids
            labels[j, k], mask[j, k] = y, 1.0
            if y == 1 and len(tags) > 2:
                for m in range(r):
                    slot = K + k * r + m
                    nz = sum(1 for x in ids if x)
                    item_tags[j, slot, :nz] = rng.integers(2, len(tags), size=nz)
                    mask[j, slot] = 1.0
    s = model.model_scores(u).scatter_add(1, hid, model.history_scores(hf, hm))
    it = torch.from_numpy(item_tags)
    logits = (s.gather(1, it.flatten(1)).view(it.shape) * (it > 0)).sum(-1) * scale + offset
    real = torch.from_numpy(mask)
    terms = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels), reduction="none")
    return (terms * real).sum() / real.sum().clamp_min(1.0)
