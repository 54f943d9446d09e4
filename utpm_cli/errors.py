"""How every command fails on bad input: one red `error: ...` line and exit status 2, no traceback;
and the checks that several commands share, failing that way."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer


def fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def positive_ints(text: str, option: str) -> tuple[int, ...]:
    """A comma-separated list of integers >= 1 given to `option` (e.g. --k 1,2,3)."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        fail(f"{option} must be comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        fail(f"{option} needs at least one value, each >= 1, got {text!r}")
    return values


def require_bundle(bundle: Path) -> None:
    """`bundle` is an exported, indexed bundle, as far as its directory shows: the usual mistakes (no
    such directory, a run directory, no index yet) in one line before a command starts serving or
    measuring it; loading the bundle checks the rest (hashes, ONNX signature, index version)."""
    from index.infos import INDEX_FILE
    from model_export.errors import BundleError
    from model_export.manifest import Manifest

    if not bundle.is_dir():
        fail(f"{bundle} is not a directory; `utpm demo --no-serve` builds artifacts/demo/bundle")
    try:
        Manifest.read(bundle)
    except BundleError as e:
        fail(f"{e}; `utpm export RUN --out BUNDLE` writes a bundle from a training run")
    if not (bundle / INDEX_FILE).is_file():
        fail(f"{bundle} has no tag index ({INDEX_FILE}); build it with `utpm index build {bundle}`")
