"""Feature fields as data (DeepCTR's `VarLenSparseFeat`, torchrec's embedding configs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class FieldKind(StrEnum):
    """Whether a user field holds one categorical value or a list of them."""

    SINGLE = "single"
    MULTI = "multi"


@dataclass(frozen=True)
class FieldSpec:
    """One categorical user field.

    `vocab_size` counts the two reserved ids (0 = padding, 1 = out-of-vocabulary bucket).
    `max_len` is H for multi-valued fields and 1 for single-valued ones.
    """

    name: str
    kind: FieldKind
    vocab_size: int
    max_len: int

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a field needs a non-empty name")
        if self.vocab_size < 2:
            raise ValueError(f"field {self.name!r}: vocab_size must be >= 2 (pad + oov), got {self.vocab_size}")
        if self.max_len < 1:
            raise ValueError(f"field {self.name!r}: max_len must be >= 1, got {self.max_len}")
        if self.kind is FieldKind.SINGLE and self.max_len != 1:
            raise ValueError(f"single-valued field {self.name!r} must have max_len 1, got {self.max_len}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FieldSpec:
        return cls(
            name=d["name"], kind=FieldKind(d["kind"]), vocab_size=int(d["vocab_size"]), max_len=int(d["max_len"])
        )
