"""The folder a `prepare` writes a data set into: which files make a prepared data set, and clearing
a previous one's before the next is written, so that no table of it is read with the new one (a
users table left behind would be joined with the new events; a truth.csv would score recovery)."""

from __future__ import annotations

import re
from pathlib import Path

from utpm.data.errors import DataError

TABLES = ("items", "events", "users")  # docs/data-format.md
TABLE_SUFFIXES = (".parquet", ".csv")
# What `prepare synthetic` and the benchmark bundle write next to the tables (tag_geometry.tag_vectors_path).
EXTRAS = re.compile(r"(tags\.parquet|truth\.csv|meta\.json|tag_vectors_\d+\.npz)")


def is_dataset_file(name: str) -> bool:
    stem, dot, suffix = name.rpartition(".")
    return (stem in TABLES and f"{dot}{suffix}" in TABLE_SUFFIXES) or EXTRAS.fullmatch(name) is not None


def foreign_entries(folder: Path) -> list[str]:
    """What `folder` holds besides a prepared data set's files (hidden files aside), sorted."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and not is_dataset_file(p.name))


def refuse_foreign(folder: Path) -> None:
    """DataError when `folder` holds files that are not a data set's: preparing there would mix them."""
    foreign = foreign_entries(folder)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DataError(
            folder, f"holds files that are not a prepared data set's ({shown}); write the data set to another folder"
        )


def start_dataset(folder: Path) -> None:
    """Create `folder`, or remove the previous data set's files from it, before a data set is written."""
    refuse_foreign(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        if is_dataset_file(p.name) and p.is_file():
            p.unlink()
