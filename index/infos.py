"""`index_infos.json`: what an index is, which bundle it serves, and how good it measured.

Written beside `index.faiss` by `build_index`; read by `TagIndex.load`, which refuses an index
whose bundle version, dimension or metric differ from the bundle's.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from index.errors import TagIndexError
from model_export.manifest import read_json_object

INDEX_FILE = "index.faiss"
INFOS_FILE = "index_infos.json"


@dataclass
class IndexInfos:
    """bundle_version, dim, metric: the bundle the index was built from (checked at load).
    factory: the faiss factory string; params: the tuned search parameter ({"nprobe": 16}, {} for
    flat); recall: {"recall@10": .., "recall@50": ..} against exact search on `queries`; a utpm-hist
    bundle's index holds [o_t, b_t] (dim U + 1) and `two_stage` the served search's recall."""

    bundle_version: str
    dim: int
    metric: str
    kind: str
    factory: str
    ntotal: int
    params: dict[str, int]
    build_seconds: float
    memory_bytes: int
    recall: dict[str, float]
    queries: dict[str, Any]
    target_recall: float | None = None
    target_met: bool | None = None  # on the tuning queries (even rows); `recall` is measured on the others
    search_qps: float | None = None
    tuning: list[dict[str, float]] = field(default_factory=list)
    gpu: bool = False
    # utpm-hist bundles: recall@10/@50 of the served two-stage search (ANN candidates over [o_t, b_t]
    # plus the history tags scored exactly) against exact final scores over every tag
    two_stage: dict[str, Any] | None = None
    # set when the index holds the rows transformed for nearest-neighbour search (index.mips): their
    # largest squared norm M; the faiss index then has dimension dim + 1 and metric L2
    max_sq_norm: float | None = None
    faiss_version: str = ""
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexInfos:
        try:
            return cls(**d)
        except TypeError as e:
            raise TagIndexError(f"{INFOS_FILE} is malformed: {e}") from None

    def write(self, directory: Path) -> None:
        """Write atomically (temp file + rename) so a reader never sees half a file."""
        tmp = directory / f".{INFOS_FILE}.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, directory / INFOS_FILE)

    @classmethod
    def read(cls, directory: Path) -> IndexInfos:
        path = directory / INFOS_FILE
        if not path.is_file():
            raise TagIndexError(f"{directory} has no {INFOS_FILE}; build one with `utpm index build {directory}`")
        return cls.from_dict(read_json_object(path, TagIndexError))
