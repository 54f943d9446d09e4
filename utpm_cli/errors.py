"""How every command fails on bad input: one red `error: ...` line and exit status 2, no traceback;
and the checks that several commands share, failing that way. Numbers out of an option's range and
output paths that cannot be written (`output_file`, `output_folder`) are refused while the arguments
are parsed, by Typer, also with status 2: before the command's work, not after it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from utpm.data.loading import Dataset


def say_error(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)


def fail(message: str) -> NoReturn:
    say_error(message)
    raise typer.Exit(2)


def load_data(data: Path, loader: Callable[[str], Dataset] | None = None) -> Dataset:
    """The data set a command reads: its problems one `error:` line, and what loading dropped or noticed
    (rows dropped, items without tags) a `note:` line each, so that a command trained on them says so.
    `loader`: another way to load it (the experiment's, which keeps it for the experiment)."""
    from utpm.data.errors import DataError
    from utpm.data.loading import load_dataset

    try:
        dataset = (loader or load_dataset)(str(data))
    except DataError as e:
        fail(str(e))
    for warning in dataset.report.warnings:
        typer.echo(f"note: {warning}", err=True)
    return dataset


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The one-line error for a module that one of utpm's extras installs (`pandas` -> the `train`
    extra), read from the installed package's own requirements; None for any other missing module."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    module = (error.name or "").partition(".")[0]
    try:
        requires = metadata.requires("utpm") or []
        offered = metadata.metadata("utpm").get_all("Provides-Extra") or []
    except metadata.PackageNotFoundError:
        return None
    extras: set[str] = set()
    for req in map(Requirement, requires):
        if canonicalize_name(req.name) == canonicalize_name(module) and req.marker is not None:
            extras.update(e for e in offered if req.marker.evaluate({"extra": e}))
    if not extras:
        return None
    options = " or ".join(f"pip install 'utpm[{e}]'" for e in sorted(extras))
    return f"this command needs {module}, which is not installed: {options}"


def positive_ints(text: str, option: str) -> tuple[int, ...]:
    """A comma-separated list of integers >= 1 given to `option` (e.g. --k 1,2,3)."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        fail(f"{option} must be comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        fail(f"{option} needs at least one value, each >= 1, got {text!r}")
    return values


def given_options(ctx: typer.Context, names: Sequence[str]) -> list[str]:
    """The options among `names` that the command line set, as the user wrote them (`--no-counts`)."""
    given = []
    params = {p.name: p for p in ctx.command.params}
    for name in names:
        source = ctx.get_parameter_source(name)  # Typer's own copy of click's enum: compared by name
        if source is not None and source.name == "COMMANDLINE":
            value, param = ctx.params[name], params.get(name)
            flag = name.replace("_", "-")
            on, off = f"--{flag}", f"--no-{flag}"
            if param is not None:  # the flag's own names (`--sparse-updates/--dense-updates`)
                on = next((o for o in param.opts if o.startswith("--")), on)
                off = next((o for o in param.secondary_opts if o.startswith("--")), off)
            given.append(on if not isinstance(value, bool) or value else off)
    return given


def refuse_unread(ctx: typer.Context, names: Sequence[str], why: str) -> None:
    """Fail when the command line set any of `names`, options the chosen mode does not read: the
    user would get a run or a figure other than the one asked for, with exit status 0."""
    given = given_options(ctx, names)
    if given:
        fail(f"{', '.join(given)}: {why}")


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


def _refuse_unwritable(path: Path | None, folder: bool) -> Path | None:
    """`path` unchanged, or typer.BadParameter saying why it cannot be written as a file (`folder`
    False) or a folder, as far as the file system shows now. Nothing is created."""
    if path is None:
        return None
    reason = None
    above = path if folder else path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if path.exists() and path.is_dir() != folder:
        reason = f"{path} is {'a file' if folder else 'a folder'}"
    elif not above.is_dir():
        reason = f"{above} is a file, not a folder"
    elif not os.access(above, os.W_OK | os.X_OK):
        reason = f"{above} is not writable"
    if reason:
        raise typer.BadParameter(f"cannot write {path}: {reason}")
    return path


def output_file(path: Path | None) -> Path | None:
    """Typer callback of an option naming a file to write: refused when it cannot be written, so that
    a long command stops before its work, not after it."""
    return _refuse_unwritable(path, folder=False)


def output_folder(path: Path | None) -> Path | None:
    """As `output_file`, for a folder the command writes into (creating it and its parents)."""
    return _refuse_unwritable(path, folder=True)


def dataset_folder(path: Path | None) -> Path | None:
    """As `output_folder`, for a `prepare`'s data set: a previous data set there is replaced, but a
    folder that holds other files is refused before the source is read (utpm.data.dataset_folder)."""
    from utpm.data.dataset_folder import refuse_foreign
    from utpm.data.errors import DataError

    path = output_folder(path)
    if path is not None:
        try:
            refuse_foreign(path)
        except DataError as e:
            raise typer.BadParameter(str(e)) from None
    return path


def run_folder(path: Path | None) -> Path | None:
    """As `output_folder`, for a run directory: a previous run there is replaced, but a folder that
    holds other files is refused, since a run writes config.json, model.pt and more over what is there."""
    path = output_folder(path)
    a_run = path is not None and (path / "config.json").is_file() and (path / "model.pt").is_file()
    if path is not None and path.is_dir() and any(path.iterdir()) and not a_run:
        raise typer.BadParameter(
            f"{path} holds files and is not a run directory (no config.json and model.pt): "
            "a run would write over them; choose another folder"
        )
    return path


def require_listenable(host: str, port: int) -> None:
    """`host:port` can be listened on now (uvicorn binds it the same way, SO_REUSEADDR), so that a
    port in use is one line before the service loads and logs, not uvicorn's error after."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as e:  # gaierror (no such host) included
        fail(f"cannot listen on {host}:{port}: {e.strerror or e}")
