"""Structured synthetic tag vectors and user queries for index benchmarks (never uniform noise).

The shape follows the project's synthetic data (`utpm.data.synthetic`): tags belong to categories
whose sizes follow a Zipf law (exponent 0.7, as CATEGORY_ZIPF there), and users like 1-3
categories (popular ones more often) and 3-8 tags in them. Within a category, tags gather around
topics of about `topic_size` tags (a taxonomy's sub-topics: football -> teams, players, leagues),
so there is structure below the category level too, as learned embeddings have.

    category centre  c   uniform on the unit sphere
    topic centre     p = normalise(c + sigma_topic * g / sqrt(d))
    tag              t = normalise(p + sigma_tag * g / sqrt(d)) * r,  r ~ U(0.8, 1.2)  ("normalised-ish")
    query            q = normalise(mean of the user's interest tags) + sigma_query * g / sqrt(d)

g is a standard normal vector, so sigma is the noise norm relative to the unit centre.
Everything is vectorised numpy; 1M x 128 takes a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CATEGORY_ZIPF = 0.7
INTEREST_CATEGORIES_P = (0.30, 0.45, 0.25)  # P(user likes 1, 2, 3 categories), as in utpm.data.synthetic
INTEREST_TAGS = (3, 8)  # inclusive


@dataclass(frozen=True)
class StructuredSpec:
    """Parameters of the generator (see the module docstring)."""

    n_categories: int | None = None  # None: round(sqrt(n)), e.g. 1000 for 1M tags
    topic_size: int = 50
    sigma_topic: float = 1.0
    sigma_tag: float = 0.5
    sigma_query: float = 0.3

    def describe(self, n: int) -> str:
        return (
            f"structured: {self.categories(n)} categories (Zipf {CATEGORY_ZIPF} sizes), topics of ~{self.topic_size} "
            f"tags, noise topic {self.sigma_topic} / tag {self.sigma_tag} / query {self.sigma_query}, tag norms "
            f"U(0.8, 1.2); queries: 1-3 categories, mean of 3-8 interest tags"
        )

    def categories(self, n: int) -> int:
        return self.n_categories or max(2, round(n**0.5))


@dataclass
class StructuredTags:
    """vectors (n, d) float32; category (n,) int64; category_weights (C,) popularity."""

    vectors: np.ndarray
    category: np.ndarray
    category_start: np.ndarray
    category_size: np.ndarray
    category_weights: np.ndarray


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def structured_tags(n: int, dim: int, rng: np.random.Generator, spec: StructuredSpec | None = None) -> StructuredTags:
    """n tag vectors of dimension `dim` (see the module docstring)."""
    spec = spec or StructuredSpec()
    n_cat = min(spec.categories(n), n)
    weights = np.arange(1, n_cat + 1, dtype=np.float64) ** -CATEGORY_ZIPF
    weights /= weights.sum()
    size = rng.multinomial(n - n_cat, weights) + 1  # every category has at least one tag
    start = np.r_[0, np.cumsum(size)[:-1]]
    centres = _unit(rng.standard_normal((n_cat, dim)))
    topics_per_cat = np.maximum(1, np.round(size / spec.topic_size).astype(np.int64))
    topic_cat = np.repeat(np.arange(n_cat), topics_per_cat)
    topics = _unit(centres[topic_cat] + spec.sigma_topic * rng.standard_normal((len(topic_cat), dim)) / dim**0.5)
    category = np.repeat(np.arange(n_cat), size)
    first_topic = np.r_[0, np.cumsum(topics_per_cat)[:-1]]
    topic = first_topic[category] + (rng.random(n) * topics_per_cat[category]).astype(np.int64)
    vectors = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 1 << 17):  # chunks keep the float64 temporaries small
        hi = min(n, lo + (1 << 17))
        noise = rng.standard_normal((hi - lo, dim)) / dim**0.5
        v = _unit(topics[topic[lo:hi]] + spec.sigma_tag * noise) * rng.uniform(0.8, 1.2, (hi - lo, 1))
        vectors[lo:hi] = v
    return StructuredTags(vectors, category, start, size, weights)


def structured_queries(
    tags: StructuredTags, n: int, rng: np.random.Generator, spec: StructuredSpec | None = None
) -> np.ndarray:
    """n user queries (n, d) float32: each likes 1-3 categories and 3-8 tags in them."""
    spec = spec or StructuredSpec()
    dim = tags.vectors.shape[1]
    n_cats = rng.choice(len(INTEREST_CATEGORIES_P), n, p=INTEREST_CATEGORIES_P) + 1  # (n,)
    n_tags = rng.integers(INTEREST_TAGS[0], INTEREST_TAGS[1] + 1, n)  # (n,)
    cats = rng.choice(len(tags.category_weights), (n, 3), p=tags.category_weights)  # (n, 3) candidates
    slot = (rng.random((n, INTEREST_TAGS[1])) * n_cats[:, None]).astype(np.int64)  # which liked category
    chosen = np.take_along_axis(cats, slot, axis=1)  # (n, 8)
    within = (rng.random((n, INTEREST_TAGS[1])) * tags.category_size[chosen]).astype(np.int64)
    interest = tags.category_start[chosen] + within  # (n, 8) tag ids
    used = np.arange(INTEREST_TAGS[1])[None, :] < n_tags[:, None]  # (n, 8)
    mean = (tags.vectors[interest] * used[:, :, None]).sum(axis=1) / n_tags[:, None]
    q = _unit(mean) + spec.sigma_query * rng.standard_normal((n, dim)) / dim**0.5
    return q.astype(np.float32)


def queries_near(embeddings: np.ndarray, n: int, rng: np.random.Generator, reserved: int = 2) -> np.ndarray:
    """Queries from real tag embeddings when no held-out users are at hand: each is the mean of
    3-8 tags among the 32 nearest (by inner product) to a random anchor tag, plus a little noise.
    (n, U) float32."""
    x = np.asarray(embeddings[reserved:], dtype=np.float32)
    if len(x) == 0:
        raise ValueError("no tag embeddings beyond the reserved rows")
    anchors = rng.integers(0, len(x), n)
    near = min(32, len(x))
    out = np.empty((n, x.shape[1]), dtype=np.float32)
    chunk = max(1, min(256, (1 << 24) // len(x)))  # at most 16M scores (64 MB) at a time
    for lo in range(0, n, chunk):
        a = x[anchors[lo : lo + chunk]]  # (b, U)
        top = np.argpartition(-(a @ x.T), near - 1, axis=1)[:, :near]  # (b, near)
        for j, row in enumerate(top):
            picked = rng.choice(row, int(rng.integers(INTEREST_TAGS[0], INTEREST_TAGS[1] + 1)))
            out[lo + j] = x[picked].mean(axis=0)
    scale = float(np.linalg.norm(out, axis=1).mean()) or 1.0
    out += 0.1 * scale * rng.standard_normal(out.shape).astype(np.float32) / out.shape[1] ** 0.5
    return out
