"""`utpm bench personal --counts`: the counts it sends."""

from __future__ import annotations

from tests.datasets import synthetic_dataset
from utpm.data.protocol import split_protocol
from utpm_cli.personal import clicked_counts


def test_clicked_counts_are_occurrences_among_clicked_history_items_in_the_fields_recency_order() -> None:
    split = split_protocol(synthetic_dataset(n_users=10, events=20), seed=0)
    for i in range(split.n_users):
        counted = clicked_counts(split, i).get("clicked_tags", {})
        assert list(counted) == split.fields["clicked_tags"].row(i)  # oldest last occurrence first
        lo, hi = split.history.offsets[i], split.history.offsets[i + 1]
        tags = [
            t
            for item, y in zip(split.history.codes[lo:hi], split.history_values[lo:hi], strict=True)
            if y == 1
            for t in split.item_tags.row(int(item))
        ]
        assert counted == {t: float(tags.count(t)) for t in set(tags)}
