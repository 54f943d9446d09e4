"""Start the tag tables from given vectors, optionally frozen (`TrainConfig.tag_vectors`).

Used where the weights are not the point but their geometry is: the serving benchmark trains a
1M-tag model on a budget of minutes, which would leave the tag vectors at their random start and
give the ANN index nothing to exploit; it starts them from vectors clustered like learned ones
(docs/pipeline.md, "The benchmark bundle") and trains the rest of the tower against them.
The file is an `.npz` with `tokens` (T,) str and `vectors` (T, U) float32; tags it lacks keep
their random start.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utpm.features.encoding import FeatureEncoder
from utpm.features.vocab import Vocabulary
from utpm.models.user_model import UserModel


def load_tag_vectors(path: str | Path) -> tuple[list[str], np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        tokens, vectors = [str(t) for t in f["tokens"]], np.asarray(f["vectors"], dtype=np.float32)
    if vectors.ndim != 2 or len(tokens) != len(vectors):
        raise ValueError(f"{path}: expected tokens (T,) and vectors (T, U), got {len(tokens)} and {vectors.shape}")
    return tokens, vectors


def apply_tag_vectors(
    model: UserModel, encoder: FeatureEncoder, tags: Vocabulary, path: str | Path, freeze: bool
) -> list[str]:
    """Copy the vectors of `path` into the output tag table and, when the sizes match, into the
    tables of tag-valued input fields (`*_tags`); returns the names of the tables it set."""
    tokens, vectors = load_tag_vectors(path)
    row_of = {t: i for i, t in enumerate(tokens)}
    table = model.tag_embedding.weight
    if vectors.shape[1] != table.shape[1]:
        raise ValueError(f"{path}: vectors have {vectors.shape[1]} dimensions, the tag table {table.shape[1]}")
    touched = []
    targets: list[tuple[str, torch.Tensor, list[str]]] = [("tag_embedding", table, tags.tokens)]
    for spec, emb in zip(encoder.specs, model.embedding.tables, strict=True):
        weight = emb.weight
        if spec.name.endswith("_tags") and isinstance(weight, torch.Tensor) and weight.shape[1] == vectors.shape[1]:
            targets.append((f"embedding:{spec.name}", weight, encoder.vocabs[spec.name].tokens))
    for name, weight, vocab in targets:
        ids = [i for i, t in enumerate(vocab) if i > Vocabulary.OOV and t in row_of]
        if not ids:
            continue
        with torch.no_grad():
            weight[torch.tensor(ids)] = torch.from_numpy(vectors[[row_of[vocab[i]] for i in ids]])
        if freeze:
            weight.requires_grad_(False)
        touched.append(name)
    return touched
