"""The model zoo by name: UTPM and the baselines of the paper's Tables 2 and 3.

Each baseline differs from its neighbour in one part (the paper's ablation ladder):

    youtube       mean pooling within fields, concatenation across fields, 2 FC layers
    af1-unshared  attention fusion, 1 head, a separate query for each of the M + 1 units, no cross
    af1           ... one query shared by every unit
    af2           ... 2 heads (preset.heads), shared queries, no cross
    af2-cf        ... + UTPM's cross-feature layer  (= utpm)
    af2-afm       ... with AFM instead of CF
    af2-nfm       ... with NFM instead of CF
    af2-dcn       ... with DCN's cross network instead of CF
    af2-autoint   ... with AutoInt over the per-field vectors instead of CF

The paper trains Tables 2 and 3 with the separate loss and UTPM with the joint loss (Table 4);
`default_loss` says which.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from utpm.features.spec import FieldSpec
from utpm.models.presets import Preset
from utpm.models.user_model import Architecture, UserModel

ARCHITECTURES: dict[str, Architecture] = {
    "youtube": Architecture(fusion="mean", cross="none"),
    "af1-unshared": Architecture(heads=1, shared_query=False, cross="none"),
    "af1": Architecture(heads=1, cross="none"),
    "af2": Architecture(cross="none"),
    "af2-cf": Architecture(cross="cf"),
    "af2-afm": Architecture(cross="afm"),
    "af2-nfm": Architecture(cross="nfm"),
    "af2-dcn": Architecture(cross="dcn"),
    "af2-autoint": Architecture(cross="autoint"),
    "utpm": Architecture(cross="cf"),  # alias of af2-cf; differs only in its default loss
}

MODEL_NAMES: tuple[str, ...] = tuple(ARCHITECTURES)


def _check_name(name: str) -> None:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")


def default_loss(name: str) -> str:
    """The default loss of model `name`: "joint" for utpm, "separate" for the rest (Tables 2-4)."""
    _check_name(name)
    return "joint" if name == "utpm" else "separate"


def build_model(
    name: str, specs: Sequence[FieldSpec], n_tags: int, preset: Preset, seed: int | None = None
) -> UserModel:
    """Build model `name` for these fields and tags.

    With a seed the initial weights depend only on it: the global RNG is forked, seeded, and
    restored afterwards, so building a model leaves the caller's random stream untouched.
    """
    _check_name(name)
    arch = ARCHITECTURES[name]
    if seed is None:
        return UserModel(name, specs, n_tags, preset, arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UserModel(name, specs, n_tags, preset, arch)
