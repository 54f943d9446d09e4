"""How personal the served profiles are: overlap of the top-k lists across users.

- `jaccard`: mean pairwise Jaccard similarity of the users' top-k tag sets (1 = everyone gets the
  same list; the paper's models on MovieLens serve 0.98);
- `distinct_tags`: how many different tags appear in any user's top k;
- `top1_share`: the share of users whose #1 tag is the most common #1 tag.

Above `max_users` users a seeded sample of that many is used for the Jaccard (pairs grow as n^2).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def personalisation(
    rankings: Sequence[Sequence[str]], k: int = 10, max_users: int = 1000, seed: int = 0
) -> dict[str, float]:
    tops = [list(dict.fromkeys(r))[:k] for r in rankings]
    tops = [t for t in tops if t]
    if not tops:
        return {"jaccard": float("nan"), "distinct_tags": 0.0, "top1_share": float("nan"), "users": 0.0}
    firsts = Counter(t[0] for t in tops)
    distinct = len({x for t in tops for x in t})
    sample = tops
    if len(tops) > max_users:
        idx = np.random.default_rng(seed).choice(len(tops), max_users, replace=False)
        sample = [tops[i] for i in idx]
    vocab = {x: j for j, x in enumerate({x for t in sample for x in t})}
    m = np.zeros((len(sample), len(vocab)), np.float32)
    for i, t in enumerate(sample):
        m[i, [vocab[x] for x in t]] = 1.0
    inter = m @ m.T
    sizes = m.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    iu = np.triu_indices(len(sample), 1)
    jac = float(np.mean(inter[iu] / union[iu])) if len(sample) > 1 else 1.0
    return {
        "jaccard": jac,
        "distinct_tags": float(distinct),
        "top1_share": firsts.most_common(1)[0][1] / len(tops),
        "users": float(len(tops)),
    }


def bootstrap_mean_ci(
    values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean of `values` over `n_boot` resamples (users resampled with replacement)."""
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(0, n_boot, 200):
        idx = rng.integers(0, len(v), size=(min(200, n_boot - b), len(v)))
        means[b : b + len(idx)] = v[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)
