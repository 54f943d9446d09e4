"""Small in-memory data sets shared by the library's tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from utpm.data.loading import Dataset


def synthetic_dataset(n_users: int = 12, events: int = 30, only_positive: bool = False, seed: int = 0) -> Dataset:
    """Users who click items of their own tag group; label 0 elsewhere unless `only_positive`."""
    rng = np.random.default_rng(seed)
    groups = [[f"t{g}{j}" for j in range(4)] for g in range(3)]
    items = pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(24)],
            "tags": [list(rng.choice(groups[k % 3], size=3, replace=False)) for k in range(24)],
            "categories": [[f"c{k % 3}"] for k in range(24)],
        }
    )
    rows = []
    for u in range(n_users):
        for t in range(events):
            k = int(rng.integers(24))
            label = 1 if only_positive or k % 3 == u % 3 else 0
            rows.append((f"u{u}", f"i{k}", t, label))
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "label"])
    return Dataset(items=items, events=ev.astype({"timestamp": np.int64, "label": np.int8}), users=None)
