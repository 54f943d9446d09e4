"""Tag vectors clustered like learned embeddings, for synthetic data (`write_structured_tag_vectors`).

A converged model's tag vectors cluster: tags of a category, and of a topic inside it, lie close.
For the synthetic data set the category of every tag is known (`tags.parquet`), so vectors with
that geometry can be drawn directly: category centre -> topic of about `TOPIC_SIZE` tags -> tag,
the same generative model as `index.structured` (where the constants are explained). The serving
benchmark starts its budgeted model from them (`TrainConfig.tag_vectors`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

TOPIC_SIZE = 50
SIGMA_TOPIC = 1.0
SIGMA_TAG = 0.5


def structured_tag_vectors(category: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """(T, dim) float32 vectors for tags whose 0-based category ids are `category` (T,)."""
    rng = np.random.default_rng([seed, 7])
    n_cat = int(category.max()) + 1

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    centres = unit(rng.standard_normal((n_cat, dim)))
    size = np.bincount(category, minlength=n_cat)
    topics_per_cat = np.maximum(1, np.round(size / TOPIC_SIZE).astype(np.int64))
    first_topic = np.r_[0, np.cumsum(topics_per_cat)[:-1]]
    topic_cat = np.repeat(np.arange(n_cat), topics_per_cat)
    topics = unit(centres[topic_cat] + SIGMA_TOPIC * rng.standard_normal((len(topic_cat), dim)) / dim**0.5)
    topic = first_topic[category] + (rng.random(len(category)) * topics_per_cat[category]).astype(np.int64)
    noise = rng.standard_normal((len(category), dim)) / dim**0.5
    norms = rng.uniform(0.8, 1.2, (len(category), 1))
    return (unit(topics[topic] + SIGMA_TAG * noise) * norms).astype(np.float32)


def tag_categories(data_dir: Path, tokens: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """The synthetic data's tags (or `tokens`, in that order) and their 0-based category ids."""
    table = pd.read_parquet(Path(data_dir) / "tags.parquet", columns=["tag", "category"])
    if tokens is None:
        tokens = table["tag"].astype(str).tolist()
    category = pd.Series(tokens).map(dict(zip(table["tag"], table["category"], strict=True))).fillna("?")
    return tokens, pd.factorize(category)[0]


def tag_vectors_path(data_dir: Path, dim: int) -> Path:
    """Where the structured tag vectors of size `dim` lie beside a synthetic data set."""
    return Path(data_dir) / f"tag_vectors_{dim}.npz"


def write_structured_tag_vectors(data_dir: Path, dim: int, seed: int) -> Path:
    """Write `tag_vectors_path(data_dir, dim)` (tokens, vectors) beside the synthetic data; returns it."""
    path = tag_vectors_path(data_dir, dim)
    tokens, category = tag_categories(data_dir)
    np.savez(path, tokens=np.asarray(tokens), vectors=structured_tag_vectors(category, dim, seed))
    return path
