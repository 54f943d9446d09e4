"""Model inputs and training samples built from the protocol's columnar split.

Torch-free: everything here is numpy, so the same code feeds training, evaluation and export
parity checks. Inputs are encoded per user once; samples (groups of up to K label items) are
gathered batch by batch from ragged arrays, so memory stays proportional to the events, not to
materialised per-sample tensors.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from utpm.data.protocol import ProtocolSplit, Ragged
from utpm.features.encoding import FeatureEncoder, recent_unique
from utpm.features.spec import FieldKind, FieldSpec
from utpm.features.vocab import Vocabulary


def build_encoder(split: ProtocolSplit, train_rows: np.ndarray, max_len: int, min_count: int) -> FeatureEncoder:
    """Feature vocabularies from the training users only (one count per user and value)."""
    specs: list[FieldSpec] = []
    vocabs: dict[str, Vocabulary] = {}
    for name, ragged in split.fields.items():
        sub = ragged.take(train_rows)
        counts = np.bincount(sub.codes, minlength=len(ragged.values))
        values = [str(v) for v in ragged.values]
        vocab = Vocabulary.build((v for v, c in zip(values, counts, strict=True) for _ in range(int(c))), min_count)
        kind = split.field_kinds[name]
        specs.append(FieldSpec(name, kind, len(vocab), max_len if kind is FieldKind.MULTI else 1))
        vocabs[name] = vocab
    return FeatureEncoder(specs, vocabs)


def build_tag_vocab(split: ProtocolSplit, train_rows: np.ndarray, n_tags_per_item: int) -> Vocabulary:
    """The predictable tags: every tag among the first N tags of training users' label items."""
    items = split.labels.take(train_rows).codes
    first_n = _first_n(split.item_tags, n_tags_per_item)
    codes = first_n[items]
    codes = codes[codes >= 0]
    counts = np.bincount(codes, minlength=len(split.item_tags.values))
    values = [str(v) for v in split.item_tags.values]
    return Vocabulary.build((v for v, c in zip(values, counts, strict=True) for _ in range(int(c))), 1)


def _first_n(r: Ragged, n: int) -> np.ndarray:
    """(rows, n) codes of each row's first n values, -1 where the row is shorter."""
    out = np.full((len(r), n), -1, dtype=np.int64)
    lengths = np.minimum(r.lengths(), n)
    for j in range(n):
        has = lengths > j
        out[has, j] = r.codes[r.offsets[:-1][has] + j]
    return out


def encode_rows(
    split: ProtocolSplit, encoder: FeatureEncoder, rows: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Model inputs of users `rows`: per field (B, H_f) int64 ids and float32 masks.

    Equivalent to `encoder.encode([split.features(i) for i in rows])` (tested) but maps codes to ids
    through one array per field instead of a dict lookup per string.
    """
    ids_out, masks_out = [], []
    for spec in encoder.specs:
        ragged = split.fields[spec.name]
        vocab = encoder.vocabs[spec.name]
        code_to_id = np.fromiter((vocab.id(str(v)) for v in ragged.values), dtype=np.int64, count=len(ragged.values))
        ids = np.zeros((len(rows), spec.max_len), dtype=np.int64)
        mask = np.zeros((len(rows), spec.max_len), dtype=np.float32)
        for b, i in enumerate(rows):
            kept = recent_unique(code_to_id[ragged.row_codes(int(i))].tolist(), spec.max_len)
            ids[b, : len(kept)] = kept
            mask[b, : len(kept)] = 1.0
        ids_out.append(ids)
        masks_out.append(mask)
    return ids_out, masks_out


@dataclass
class Batch:
    """One training batch. ids/masks: per field (B, H_f); item_tags, tag_mask: (B, K, N);
    labels, label_mask: (B, K)."""

    ids: list[np.ndarray]
    masks: list[np.ndarray]
    item_tags: np.ndarray
    tag_mask: np.ndarray
    labels: np.ndarray
    label_mask: np.ndarray


class SampleSet:
    """Training samples: each user's label items in time order, cut into groups of at most K.

    Negative sampling (`negatives_per_positive` = r > 0): each batch pairs every label-1 item with r
    pseudo-items whose tags are drawn uniformly from the tag vocabulary, with as many tags as the
    positive it pairs with, labelled 0, drawn afresh every batch. A uniform proposal matters: the
    logistic loss is optimal at logit = log P(tag | user's clicks) - log(r Q(tag)), so with Q
    uniform the learned scores rank tags exactly as Prec@K asks. Sampling real items instead (from
    the catalogue or by popularity) cancels the tag-popularity signal a profile must keep. This is
    also what makes a log without any label-0 rows trainable; real label-0 items are always kept.
    Items whose first N tags are all unknown to the tag vocabulary carry no signal and are skipped.
    """

    def __init__(
        self,
        split: ProtocolSplit,
        encoder: FeatureEncoder,
        tag_vocab: Vocabulary,
        rows: np.ndarray,
        K: int,
        N: int,
        negatives_per_positive: int,
        seed: int,
    ) -> None:
        self.encoder = encoder
        self.ids, self.masks = encode_rows(split, encoder, rows)
        code_to_tag = np.fromiter((tag_vocab.id(str(v)) for v in split.item_tags.values), dtype=np.int64)
        code_to_tag[code_to_tag == Vocabulary.OOV] = 0
        first = _first_n(split.item_tags, N)
        self.item_tag_ids = np.where(first >= 0, code_to_tag[np.maximum(first, 0)], 0)  # (n_items, N)
        usable = self.item_tag_ids.sum(axis=1) > 0
        # positions of the chosen users' label events in the split's label arrays
        positions = Ragged(split.labels.offsets, np.arange(len(split.labels.codes)), split.labels.values).take(rows)
        labels = split.labels.take(rows)
        values = split.label_values[positions.codes]
        user = np.repeat(np.arange(len(rows)), labels.lengths())
        items = labels.codes
        keep = usable[items]
        user, items, values = user[keep], items[keep], values[keep]
        self.user, self.items, self.values = user, items, values.astype(np.float32)
        # samples: consecutive runs of <= K label items of one user
        starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if len(user) else np.zeros(0, np.int64)
        bounds = np.r_[starts, len(user)]
        sample_start: list[int] = []
        sample_end: list[int] = []
        for lo, hi in itertools.pairwise(bounds.tolist()):
            for s0 in range(lo, hi, K):
                sample_start.append(s0)
                sample_end.append(min(s0 + K, hi))
        self.sample_start = np.asarray(sample_start, dtype=np.int64)
        self.sample_end = np.asarray(sample_end, dtype=np.int64)
        self.K, self.N = K, N
        self.negatives_per_positive = negatives_per_positive
        self.n_tags = len(tag_vocab)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.sample_start)

    def extend(self, other: SampleSet) -> None:
        """Append another set's samples (same encoder, tag vocabulary, items, K and N)."""
        if other.item_tag_ids.shape != self.item_tag_ids.shape or (other.K, other.N) != (self.K, self.N):
            raise ValueError("sample sets over different items or sizes cannot be merged")
        n_users, n_events = len(self.ids[0]), len(self.user)
        self.ids = [np.concatenate([a, b]) for a, b in zip(self.ids, other.ids, strict=True)]
        self.masks = [np.concatenate([a, b]) for a, b in zip(self.masks, other.masks, strict=True)]
        self.user = np.concatenate([self.user, other.user + n_users])
        self.items = np.concatenate([self.items, other.items])
        self.values = np.concatenate([self.values, other.values])
        self.sample_start = np.concatenate([self.sample_start, other.sample_start + n_events])
        self.sample_end = np.concatenate([self.sample_end, other.sample_end + n_events])

    def batches(self, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[Batch]:
        order = rng.permutation(len(self)) if rng is not None else np.arange(len(self))
        for lo in range(0, len(order), batch_size):
            yield self.with_negatives(self.batch(order[lo : lo + batch_size]))

    def batch(self, samples: np.ndarray) -> Batch:
        b = len(samples)
        item_tags = np.zeros((b, self.K, self.N), dtype=np.int64)
        labels = np.zeros((b, self.K), dtype=np.float32)
        label_mask = np.zeros((b, self.K), dtype=np.float32)
        users = self.user[self.sample_start[samples]]
        for j, s in enumerate(samples):
            lo, hi = int(self.sample_start[s]), int(self.sample_end[s])
            item_tags[j, : hi - lo] = self.item_tag_ids[self.items[lo:hi]]
            labels[j, : hi - lo] = self.values[lo:hi]
            label_mask[j, : hi - lo] = 1.0
        return Batch(
            ids=[x[users] for x in self.ids],
            masks=[m[users] for m in self.masks],
            item_tags=item_tags,
            tag_mask=(item_tags > 0).astype(np.float32),
            labels=labels,
            label_mask=label_mask,
        )

    def with_negatives(self, b: Batch) -> Batch:
        """Append r uniform pseudo-item negatives per label-1 item: (B, K, N) -> (B, K + rK, N)."""
        r = self.negatives_per_positive
        if r == 0 or self.n_tags <= 2:
            return b
        pos = (b.labels * b.label_mask) > 0  # (B, K)
        neg_mask = np.repeat(b.tag_mask * pos[:, :, None], r, axis=1)  # (B, rK, N)
        neg_tags = self.rng.integers(2, self.n_tags, size=neg_mask.shape) * (neg_mask > 0)
        return Batch(
            ids=b.ids,
            masks=b.masks,
            item_tags=np.concatenate([b.item_tags, neg_tags], axis=1),
            tag_mask=np.concatenate([b.tag_mask, neg_mask.astype(np.float32)], axis=1),
            labels=np.concatenate([b.labels, np.zeros((pos.shape[0], r * pos.shape[1]), np.float32)], axis=1),
            label_mask=np.concatenate([b.label_mask, np.repeat(pos, r, axis=1).astype(np.float32)], axis=1),
        )
