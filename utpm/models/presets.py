"""Hyper-parameter presets mirroring Table 1 of the paper, plus a tiny one for tests.

Table 1 (industrial / MovieLens):

    E  embedding dimension of the feature-input layer          128 / 16
    H  max number of values of a multi-valued field            100 / 10
    T  size of the query vector (attention space of Eq. 1)       32 / 8
    F  "context dimension of AF layer"                           32 / 8
    C  dimension of the hidden vectors of the CF layer          10 / 4
    U  dimension of the user (and tag) embedding                128 / 16
    K  max number of label items per training sample             30 / 10
    N  max number of tags per item                                5 / 3

M (number of fields) is not a preset value: it comes from the field specs.

Meaning of F (ambiguous in the paper): the attention space of the *merge-level* units, the ones that
weigh the M field vectors. This follows the hierarchical attention of Yang et al. (the paper's
reference [20]), where "context vector" names the query of each level: T sizes the within-field
level, F the across-field level. With a shared query (every model but `af1-unshared`) one q_h
serves both levels, so those models need F == T -- which Table 1 has in both columns (32/32,
8/8). The width of the first fully connected layer is a separate knob, `hidden`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# The four activations of the paper's hyper-parameter study (Figure 4).
ACTIVATIONS = ("relu", "tanh", "sigmoid", "selu")


@dataclass(frozen=True)
class Preset:
    """Model sizes (see the module docstring for each letter).

    `heads` is the number of attention heads (2 in the paper); `activation` is the nonlinearity of
    the attention keys (relu in Eq. 1) and of the hidden fully connected layer; `hidden` is the
    width of the first fully connected layer, None meaning 4 * U (the YouTube DNN tower narrows by
    4x from its first layer to its output: 1024 -> 512 -> 256).
    """

    name: str
    E: int
    H: int
    T: int
    F: int
    C: int
    U: int
    K: int
    N: int
    heads: int = 2
    activation: str = "relu"
    hidden: int | None = None

    def __post_init__(self) -> None:
        for key in ("E", "H", "T", "F", "C", "U", "K", "N", "heads"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"preset {self.name!r}: {key} must be a positive int, got {value!r}")
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"preset {self.name!r}: hidden must be >= 1 or None, got {self.hidden}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"preset {self.name!r}: activation {self.activation!r} is not one of {ACTIVATIONS}")

    @property
    def fc_hidden(self) -> int:
        """Width of the first fully connected layer (derived at use so `replace(U=...)` follows)."""
        return self.hidden if self.hidden is not None else 4 * self.U

    def replace(self, **changes: Any) -> Preset:
        """A copy with some values changed, e.g. `get_preset("movielens").replace(E=32, heads=4)`."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preset:
        return cls(**d)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("movielens", E=16, H=10, T=8, F=8, C=4, U=16, K=10, N=3),
        Preset("industrial", E=128, H=100, T=32, F=32, C=10, U=128, K=30, N=5),
        Preset("tiny", E=4, H=5, T=4, F=4, C=2, U=4, K=3, N=3),
        # The MovieLens sizes with N = 5: the synthetic generator's items carry up to 5 tags (as the
        # paper's industrial articles do) and the tag that explains a click may be any of them.
        Preset("synthetic", E=16, H=10, T=8, F=8, C=4, U=16, K=10, N=5),
    )
}


def get_preset(name: str) -> Preset:
    """The named preset; ValueError naming the valid ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(PRESETS)}") from None
