"""Convert the Amazon "Beauty" sequences with item attributes (the S3-Rec layout) into the generic format.

Input (`/work/shared/data/amazon-beauty`, its README): `Beauty.txt` holds one line per user, the user
id then the ids of the items the user reviewed, oldest first; `Beauty_item2attributes.json` maps an
item id to its attribute ids (category path and brand, integers without names). Every interaction is
a positive (label 1); the order is kept as the timestamp (0, 1, 2, ... per user) because the real
timestamps are not in the files. Attributes become tags `a<id>`, in the file's order; there are no
separate categories (the attributes mix category path and brand and do not say which is which).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from utpm.data.dataset_folder import start_dataset
from utpm.data.errors import DataError
from utpm.data.loading import LIST_SEP

SEQUENCES = "Beauty.txt"
ATTRIBUTES = "Beauty_item2attributes.json"


@dataclass
class AmazonReport:
    users: int
    items: int
    tagged_items: int
    events: int
    tags: int
    out: Path

    def summary(self) -> str:
        return (
            f"wrote {self.items} items ({self.tagged_items} with tags, {self.tags} distinct tags) and "
            f"{self.events} events (all label 1) of {self.users} users to {self.out}"
        )


def prepare_amazon(src: str | Path, out: str | Path) -> AmazonReport:
    """Write items.csv and events.csv for the sequences in `src`; raise DataError on a bad layout."""
    src, out = Path(src), Path(out)
    seq_path, attr_path = src / SEQUENCES, src / ATTRIBUTES
    for p in (seq_path, attr_path):
        if not p.exists():
            raise DataError(src, f"no {p.name} here (expected {SEQUENCES} and {ATTRIBUTES})")
    try:
        attributes = json.loads(attr_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(attr_path, f"not a JSON object of item -> attribute ids ({e})") from None
    if not isinstance(attributes, dict):
        raise DataError(attr_path, "expected a JSON object mapping item id -> list of attribute ids")
    users: list[str] = []
    items: list[str] = []
    steps: list[int] = []
    with seq_path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise DataError(seq_path, "a line needs a user id and at least one item id", line_no)
            user, seq = parts[0], parts[1:]
            users.extend([user] * len(seq))
            items.extend(seq)
            steps.extend(range(len(seq)))
    if not users:
        raise DataError(seq_path, "no sequences in the file")
    events = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": steps, "label": 1})
    item_ids = sorted(set(items) | set(attributes), key=lambda s: (len(s), s))

    def tags_of(item: str) -> str:
        values = attributes.get(item) or []
        return LIST_SEP.join(f"a{int(v)}" for v in values if isinstance(v, int | str) and str(v).strip().isdigit())

    table = pd.DataFrame({"item_id": item_ids, "tags": [tags_of(i) for i in item_ids], "categories": ""})
    start_dataset(out)
    table.to_csv(out / "items.csv", index=False)
    events.to_csv(out / "events.csv", index=False)
    distinct = {t for s in table["tags"] for t in s.split(LIST_SEP) if t}
    return AmazonReport(
        users=events["user_id"].nunique(),
        items=len(table),
        tagged_items=int((table["tags"] != "").sum()),
        events=len(events),
        tags=len(distinct),
        out=out,
    )
