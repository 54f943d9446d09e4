"""How every command fails on bad input: one red `error: ...` line and exit status 2, no traceback;
and the option parsing that several commands share, failing that way."""

from __future__ import annotations

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
