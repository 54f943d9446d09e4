"""Parity between two implementations of the user tower (torch-free): the cases and the verdict.

A runner maps an `EncodedBatch` to the tower's outputs in ONNX order ([u, attn_<field>...,
attn_merge]). Export compares PyTorch (reference) with ONNX Runtime (candidate); the fp16 and int8
variants are compared with the float32 ONNX model the same way.

Two measures, both over every user of every case:
- the max absolute difference of u (and, reported beside it, of the attention weights);
- top-k agreement: the share of users whose top-k tags (u . t over the tag embeddings, padding and
  OOV excluded) are the same set. A set, not a sequence: two tags whose scores differ by less than
  float32 rounding may swap places without changing the profile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utpm.features.encoding import EncodedBatch, FeatureEncoder, RawFeatures
from utpm.features.history import HistoryBatch, HistoryEncoder
from utpm.features.spec import FieldKind
from utpm.ranking import top_k as ranked_top_k

Runner = Callable[[EncodedBatch], list[np.ndarray]]

PARITY_ATOL = 1e-4
# final scores add b_t and g(phi) (up to tens) to u . o_t: float32 rounding grows with them
SCORE_ATOL = 1e-3
TOP_K = 50
MIN_AGREEMENT = 0.99
CHUNK = 256  # users per runner call: the batch size the service batches up to


@dataclass
class ParityCase:
    """A named set of users, encoded through the FeatureEncoder exactly as serving will."""

    name: str
    batch: EncodedBatch
    description: str = ""


def top_k_ids(u: np.ndarray, tag_embeddings: np.ndarray, k: int, reserved: int = 2) -> np.ndarray:
    """u (B, U), tag_embeddings (T, U) -> (B, min(k, T - reserved)) tag ids by descending u . t.

    Ids below `reserved` (padding 0, OOV 1) are never returned. Exact: what an index is judged by.
    """
    scores = np.asarray(u, dtype=np.float32) @ np.asarray(tag_embeddings[reserved:], dtype=np.float32).T  # (B, T-r)
    return ranked_top_k(scores, k) + reserved  # (B, k), equal scores by the lower id


def same_sets(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a, b (B, k) ids -> (B,) bool, True where row a[i] and row b[i] hold the same set."""
    return np.all(np.sort(a, axis=1) == np.sort(b, axis=1), axis=1)


def synthetic_users(encoder: FeatureEncoder, n: int, rng: np.random.Generator) -> list[dict[str, list[str]]]:
    """n users of known values, each multi field with 0..2*H_f values (so some overflow H_f).

    Used when the run's data is not at hand: they exercise the same graph, though not the
    distribution of real users.
    """
    users: list[dict[str, list[str]]] = []
    for _ in range(n):
        user: dict[str, list[str]] = {}
        for spec in encoder.specs:
            known = encoder.vocabs[spec.name].tokens[2:]
            if not known:
                continue
            hi = 2 * spec.max_len if spec.kind is FieldKind.MULTI else 1
            length = int(rng.integers(0, hi + 1))
            if length:
                user[spec.name] = [known[int(j)] for j in rng.integers(0, len(known), length)]
        users.append(user)
    return users


def parity_cases(encoder: FeatureEncoder, heldout: Sequence[RawFeatures], rng: np.random.Generator) -> list[ParityCase]:
    """The covered cases over held-out users' raw features (at least 1 user).

    heldout (every held-out user, in chunks of CHUNK), batch_1, batch_256 (held-out users cycled
    to 256), empty_field (each user loses one field, fields in turn), all_empty, all_oov (every
    value unknown to the vocabularies), longer_than_max (3 * H_f known values per multi field,
    3 values per single field: the encoder keeps the most recent).
    """
    return [
        ParityCase(name, encoder.encode(raw), description)
        for name, raw, description in raw_cases(encoder, heldout, rng)
    ]


def raw_cases(
    encoder: FeatureEncoder, heldout: Sequence[RawFeatures], rng: np.random.Generator
) -> list[tuple[str, list[Any], str]]:
    """(name, raw users, description) of every case `parity_cases` documents."""
    if not heldout:
        raise ValueError("parity needs at least one held-out user")
    names = encoder.field_names
    users = [dict(u) for u in heldout]
    cycled = [users[i % len(users)] for i in range(CHUNK)]
    empty_field = []
    for j in range(min(64, max(len(users), len(names)))):
        u = dict(users[j % len(users)])
        u.pop(names[j % len(names)], None)
        empty_field.append(u)
    oov = [
        {n: [f"\x00unseen-{n}-{i}-{v}" for v in range(encoder.spec(n).max_len + 2)] for n in names} for i in range(8)
    ]
    longer: list[dict[str, list[str]]] = []
    for _ in range(16):
        user = {}
        for spec in encoder.specs:
            known = encoder.vocabs[spec.name].tokens[2:]
            if known:
                count = 3 * spec.max_len if spec.kind is FieldKind.MULTI else 3
                user[spec.name] = [known[int(j)] for j in rng.integers(0, len(known), count)]
        longer.append(user)
    return [
        ("heldout", users, f"{len(users)} held-out users"),
        ("batch_1", users[:1], "one user"),
        ("batch_256", cycled, "256 held-out users (cycled if fewer)"),
        ("empty_field", empty_field, "each user misses one field"),
        ("all_empty", [{} for _ in range(8)], "every field empty"),
        ("all_oov", oov, "every value out of vocabulary"),
        ("longer_than_max", longer, "3 x max length values per field"),
    ]


@dataclass
class HistoryCase:
    """A named set of users encoded by the HistoryEncoder exactly as serving will (utpm-hist)."""

    name: str
    batch: HistoryBatch
    description: str = ""


def history_parity_cases(
    henc: HistoryEncoder, heldout: Sequence[RawFeatures], rng: np.random.Generator
) -> list[HistoryCase]:
    """`parity_cases`' users through the history encoder (requests parsed with `parse_field`), plus
    `counts`: held-out users whose multi fields come as {value: count} objects, counts 1..50 and one
    huge (clamped)."""
    encoder = henc.encoder
    raw = raw_cases(encoder, heldout, rng)
    users = raw[0][1]
    counted: list[dict[str, Any]] = []
    for j, u in enumerate(users[:64]):
        c: dict[str, Any] = {}
        for name, values in u.items():
            if name in encoder.vocabs and encoder.spec(name).kind is FieldKind.MULTI and isinstance(values, list):
                c[name] = {v: float(rng.integers(1, 51)) for v in values}
                if values and j == 0:
                    c[name][values[-1]] = 1e12
            else:
                c[name] = values
        counted.append(c)
    raw.append(("counts", counted, "{value: count} objects"))
    return [HistoryCase(name, henc.encode([henc.parse(x) for x in r]), d) for name, r, d in raw]


def slice_history(b: HistoryBatch, lo: int, hi: int) -> HistoryBatch:
    """Users lo..hi, their history columns cut to the longest history among them (at least 1)."""
    hh = max(1, int(b.hist_mask[lo:hi].sum(1).max(initial=0)))
    return HistoryBatch(
        [x[lo:hi] for x in b.ids],
        [x[lo:hi] for x in b.masks],
        [x[lo:hi] for x in b.counts],
        b.hist_ids[lo:hi, :hh],
        b.hist_feats[lo:hi, :hh],
        b.hist_mask[lo:hi, :hh],
    )


HistoryRunner = Callable[[HistoryBatch], list[np.ndarray]]


def compare_history_case(
    case: HistoryCase,
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    table: np.ndarray,
    bias: np.ndarray,
    top_k: int,
) -> CaseResult:
    """reference: [u, attention..., g, top ids, top scores] (PyTorch's own final scores);
    candidate: [u, attention..., g] (ONNX), whose final scores are computed as the service does."""
    from model_export.scorer import exact_top_k, scores_at

    u_ref, u_cand = np.asarray(reference[0], np.float32), np.asarray(candidate[0], np.float32)
    du = float(np.max(np.abs(u_ref - u_cand))) if u_ref.size else 0.0
    if not np.isfinite(u_cand).all():
        du = float("inf")
    n_att = len(candidate) - 2
    da = 0.0
    for a, b in zip(reference[1 : 1 + n_att], candidate[1 : 1 + n_att], strict=True):
        if a.size:
            da = max(da, float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)))))
    mask = case.batch.hist_mask
    g_ref = np.asarray(reference[1 + n_att], np.float32) * mask
    g_cand = np.asarray(candidate[1 + n_att], np.float32) * mask
    dg = float(np.max(np.abs(g_ref - g_cand))) if g_ref.size else 0.0
    if not np.isfinite(g_cand).all():
        dg = float("inf")
    hist_ids = case.batch.hist_ids
    ref_ids, ref_scores = np.asarray(reference[-2]), np.asarray(reference[-1], np.float32)
    cand_ids, cand_scores = exact_top_k(u_cand, table, bias, hist_ids, g_cand, top_k)
    # Same set, or the same scores down the list: tags tied in score (a popularity start has many)
    # may be cut at the k-th place in either order without changing the profile's quality.
    tied = np.all(np.abs(cand_scores - ref_scores) <= SCORE_ATOL, axis=1)
    agree = same_sets(ref_ids, cand_ids) | tied
    got = scores_at(u_cand, table, bias, hist_ids, g_cand, ref_ids)
    ds = float(np.max(np.abs(got - ref_scores))) if ref_scores.size else 0.0
    if not np.isfinite(ds):
        ds = float("inf")
    return CaseResult(case.name, len(u_ref), du, da, int(agree.sum()), dg, ds)


def check_history_parity(
    cases: Sequence[HistoryCase],
    reference: HistoryRunner,
    candidate: HistoryRunner,
    table: np.ndarray,
    bias: np.ndarray,
    *,
    atol: float = PARITY_ATOL,
    score_atol: float = SCORE_ATOL,
    top_k: int = TOP_K,
    min_agreement: float = MIN_AGREEMENT,
    chunk: int = CHUNK,
    linear: np.ndarray | None = None,
) -> ParityReport:
    """`check_parity` for the whole scorer: u, g(phi), and final scores and top-k against PyTorch's.
    With `linear` (w of a linear scorer, `model_export.scorer`) every case is checked a second time,
    as "<case> (linear)", with g = w . phi in place of the graph's and u left out (the table is zero)."""
    from model_export.scorer import linear_history_scores

    results: list[CaseResult] = []
    outputs: dict[str, list[np.ndarray]] = {}
    for case in cases:
        for lo in range(0, case.batch.size, chunk):
            sub = HistoryCase(case.name, slice_history(case.batch, lo, lo + chunk))
            ref, cand = reference(sub.batch), candidate(sub.batch)
            r = compare_history_case(sub, ref, cand, table, bias, top_k)
            results.append(r)
            if linear is not None:
                # PyTorch's u and attention: the service's linear path computes neither, and u . 0 = 0
                lin = [*ref[:-3], linear_history_scores(sub.batch.hist_feats, linear)]
                results.append(
                    compare_history_case(HistoryCase(f"{case.name} (linear)", sub.batch), ref, lin, table, bias, top_k)
                )
            if case.name == "heldout":  # kept for the bundle's held-out users (index recall checks)
                outputs.setdefault("heldout", []).append(cand[0])
                outputs.setdefault("heldout_g", []).append(cand[-1] * sub.batch.hist_mask)
                outputs.setdefault("heldout_hist_ids", []).append(sub.batch.hist_ids)
    merged: dict[str, CaseResult] = {}
    for r in results:
        m = merged.get(r.name)
        if m is None:
            merged[r.name] = r
            continue
        merged[r.name] = CaseResult(
            r.name,
            m.users + r.users,
            max(m.max_abs_diff_u, r.max_abs_diff_u),
            max(m.max_abs_diff_attention, r.max_abs_diff_attention),
            m.agreeing_users + r.agreeing_users,
            max(m.max_abs_diff_history, r.max_abs_diff_history),
            max(m.max_abs_diff_score, r.max_abs_diff_score),
        )
    return ParityReport(list(merged.values()), atol, top_k, min_agreement, outputs, score_atol)


def slice_batch(batch: EncodedBatch, lo: int, hi: int) -> EncodedBatch:
    return EncodedBatch(
        ids={k: v[lo:hi] for k, v in batch.ids.items()},
        mask={k: v[lo:hi] for k, v in batch.mask.items()},
    )


def run_chunked(runner: Runner, batch: EncodedBatch, chunk: int = CHUNK) -> list[np.ndarray]:
    """Run `runner` over `batch` in chunks of at most `chunk` users; outputs concatenated on axis 0."""
    parts = [runner(slice_batch(batch, lo, lo + chunk)) for lo in range(0, batch.size, chunk)]
    return [np.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))]


@dataclass
class CaseResult:
    name: str
    users: int
    max_abs_diff_u: float
    max_abs_diff_attention: float
    agreeing_users: int
    # utpm-hist: g(phi) of the history tags, and the final scores of the reference's top-k tags
    max_abs_diff_history: float = 0.0
    max_abs_diff_score: float = 0.0

    @property
    def top_k_agreement(self) -> float:
        return self.agreeing_users / self.users if self.users else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "max_abs_diff_u": self.max_abs_diff_u,
            "max_abs_diff_attention": self.max_abs_diff_attention,
            "top_k_agreement": self.top_k_agreement,
            "max_abs_diff_history": self.max_abs_diff_history,
            "max_abs_diff_score": self.max_abs_diff_score,
        }


@dataclass
class ParityReport:
    """The verdict over all cases; `passed` iff max |du| <= atol and agreement >= min_agreement."""

    cases: list[CaseResult]
    atol: float
    top_k: int
    min_agreement: float
    outputs: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)
    score_atol: float = SCORE_ATOL

    @property
    def max_abs_diff_u(self) -> float:
        return max(c.max_abs_diff_u for c in self.cases)

    @property
    def max_abs_diff_history(self) -> float:
        return max(c.max_abs_diff_history for c in self.cases)

    @property
    def max_abs_diff_score(self) -> float:
        return max(c.max_abs_diff_score for c in self.cases)

    @property
    def max_abs_diff_attention(self) -> float:
        return max(c.max_abs_diff_attention for c in self.cases)

    @property
    def top_k_agreement(self) -> float:
        users = sum(c.users for c in self.cases)
        return sum(c.agreeing_users for c in self.cases) / users if users else 1.0

    @property
    def passed(self) -> bool:
        return (
            self.max_abs_diff_u <= self.atol
            and self.max_abs_diff_history <= self.atol
            and self.max_abs_diff_score <= self.score_atol
            and self.top_k_agreement >= self.min_agreement
        )

    def failure(self) -> str | None:
        """One sentence naming the worst case, or None when parity holds."""
        if self.passed:
            return None
        worst = max(self.cases, key=lambda c: (c.max_abs_diff_u, -c.top_k_agreement))
        disagree = min(self.cases, key=lambda c: c.top_k_agreement)
        return (
            f"max |u_torch - u_onnx| = {self.max_abs_diff_u:.3g} (limit {self.atol:g}, worst case {worst.name!r}); "
            f"max |g| diff {self.max_abs_diff_history:.3g} (limit {self.atol:g}); max final-score diff "
            f"{self.max_abs_diff_score:.3g} (limit {self.score_atol:g}); "
            f"same top-{self.top_k} tags for {self.top_k_agreement:.2%} of users (need {self.min_agreement:.0%}; "
            f"lowest case {disagree.name!r} at {disagree.top_k_agreement:.2%})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "atol": self.atol,
            "top_k": self.top_k,
            "min_agreement": self.min_agreement,
            "max_abs_diff_u": self.max_abs_diff_u,
            "max_abs_diff_attention": self.max_abs_diff_attention,
            "top_k_agreement": self.top_k_agreement,
            "max_abs_diff_history": self.max_abs_diff_history,
            "max_abs_diff_score": self.max_abs_diff_score,
            "score_atol": self.score_atol,
            "cases": {c.name: c.to_dict() for c in self.cases},
        }


def compare_case(
    name: str,
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    tag_embeddings: np.ndarray,
    top_k: int,
) -> CaseResult:
    """Compare two output lists ([u, attention...]) of the same users."""
    u_ref, u_cand = np.asarray(reference[0], np.float32), np.asarray(candidate[0], np.float32)
    if u_ref.shape != u_cand.shape:
        raise ValueError(f"case {name!r}: u shapes differ: {u_ref.shape} vs {u_cand.shape}")
    du = float(np.max(np.abs(u_ref - u_cand))) if u_ref.size else 0.0
    if not np.isfinite(u_cand).all():
        du = float("inf")
    da = 0.0
    for a, b in zip(reference[1:], candidate[1:], strict=True):
        if a.size:
            da = max(da, float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)))))
    agree = same_sets(top_k_ids(u_ref, tag_embeddings, top_k), top_k_ids(u_cand, tag_embeddings, top_k))
    return CaseResult(name, len(u_ref), du, da, int(agree.sum()))


def check_parity(
    cases: Sequence[ParityCase],
    reference: Runner,
    candidate: Runner,
    tag_embeddings: np.ndarray,
    *,
    atol: float = PARITY_ATOL,
    top_k: int = TOP_K,
    min_agreement: float = MIN_AGREEMENT,
) -> ParityReport:
    """Run both implementations on every case and compare. Does not raise: see `ParityReport.passed`.

    The candidate's outputs are kept in `report.outputs[case]` (the held-out users' u is saved).
    """
    results: list[CaseResult] = []
    outputs: dict[str, list[np.ndarray]] = {}
    for case in cases:
        ref = run_chunked(reference, case.batch)
        cand = run_chunked(candidate, case.batch)
        results.append(compare_case(case.name, ref, cand, tag_embeddings, top_k))
        outputs[case.name] = cand
    return ParityReport(results, atol, top_k, min_agreement, outputs)


def describe_variant(report: ParityReport) -> Mapping[str, Any]:
    """What the manifest records for an fp16 / int8 variant measured against float32 ONNX."""
    return {
        f"top{report.top_k}_agreement": report.top_k_agreement,
        "max_abs_diff_u": report.max_abs_diff_u,
        "max_abs_diff_attention": report.max_abs_diff_attention,
        "users": sum(c.users for c in report.cases),
    }
