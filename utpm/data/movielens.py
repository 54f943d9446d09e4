"""Convert the MovieLens CSV layout (ml-latest-small, ml-20m, ml-25m) into the generic format.

As in the paper (section 4.1): rating >= 3.5 is a click (label 1), rating <= 1.5 a shown-but-not-
clicked item (label 0); ratings in between are dropped. A movie's tags are its user-applied tags
(lower-cased, stripped), ordered by how many times they were applied, then alphabetically, so the
first N are its most characteristic ones; its categories are its genres.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utpm.data.dataset_folder import start_dataset
from utpm.data.errors import DataError
from utpm.data.loading import LIST_SEP, read_table

POSITIVE_MIN_RATING = 3.5
NEGATIVE_MAX_RATING = 1.5
NO_GENRE = "(no genres listed)"


@dataclass
class MovieLensReport:
    items: int
    tagged_items: int
    events: int
    positives: int
    negatives: int
    dropped_ratings: int
    out: Path

    def summary(self) -> str:
        return (
            f"wrote {self.items} items ({self.tagged_items} with tags) and {self.events} events "
            f"({self.positives} label 1, {self.negatives} label 0; {self.dropped_ratings} middle ratings "
            f"dropped) to {self.out}"
        )


def _need(df: pd.DataFrame, path: Path, cols: tuple[str, ...]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; is this a MovieLens directory?", 1)


def _item_tags(tags: pd.DataFrame) -> pd.Series:
    """movieId -> '|'-joined tags, most applied first."""
    t = tags.assign(tag=tags["tag"].str.strip().str.lower().str.replace(LIST_SEP, " ", regex=False))
    t = t[t["tag"] != ""]
    counts = t.groupby(["movieId", "tag"]).size().rename("n").reset_index()
    counts = counts.sort_values(["movieId", "n", "tag"], ascending=[True, False, True])
    return counts.groupby("movieId")["tag"].agg(LIST_SEP.join)


def prepare_movielens(src: str | Path, out: str | Path, all_positive: bool = False) -> MovieLensReport:
    """Read `ratings.csv`, `tags.csv`, `movies.csv` from `src`; write `items.csv`, `events.csv` to `out`.

    `all_positive`: every rating is a click (label 1), a log without label-0 rows, to check a model
    on that kind of data too."""
    src, out = Path(src), Path(out)
    paths = {name: src / f"{name}.csv" for name in ("ratings", "tags", "movies")}
    for p in paths.values():
        if not p.exists():
            raise DataError(p, "not found; a MovieLens directory holds ratings.csv, tags.csv and movies.csv")
    movies = read_table(paths["movies"])
    _need(movies, paths["movies"], ("movieId", "genres"))
    tags = read_table(paths["tags"])
    _need(tags, paths["tags"], ("movieId", "tag"))
    ratings = read_table(paths["ratings"])
    _need(ratings, paths["ratings"], ("userId", "movieId", "rating", "timestamp"))

    rating = pd.to_numeric(ratings["rating"], errors="coerce")
    if rating.isna().any():
        line = int(ratings.loc[rating.isna(), "_line"].iloc[0])
        raise DataError(paths["ratings"], "a rating that is not a number", line)
    label = np.where(rating >= POSITIVE_MIN_RATING, 1, np.where(rating <= NEGATIVE_MAX_RATING, 0, -1))
    if all_positive:
        label = np.ones(len(rating), np.int64)
    events = pd.DataFrame(
        {
            "user_id": ratings["userId"],
            "item_id": ratings["movieId"],
            "timestamp": ratings["timestamp"],
            "label": label,
        }
    )
    kept = events[events["label"] >= 0]

    genres = movies["genres"].where(movies["genres"] != NO_GENRE, "")
    item_tags = _item_tags(tags)
    items = pd.DataFrame(
        {
            "item_id": movies["movieId"],
            "tags": movies["movieId"].map(item_tags).fillna(""),
            "categories": genres,
        }
    )
    start_dataset(out)
    items.to_csv(out / "items.csv", index=False)
    kept.to_csv(out / "events.csv", index=False)
    return MovieLensReport(
        items=len(items),
        tagged_items=int((items["tags"] != "").sum()),
        events=len(kept),
        positives=int((kept["label"] == 1).sum()),
        negatives=int((kept["label"] == 0).sum()),
        dropped_ratings=len(events) - len(kept),
        out=out,
    )
