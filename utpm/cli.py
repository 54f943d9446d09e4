"""The `utpm` command line. Each command is a thin wrapper over a documented library function."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from utpm.data.errors import DataError

app = typer.Typer(help="UTPM user-tag profiles: prepare data, train, evaluate, export, index, serve.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
prepare_app = typer.Typer(help="Write a data set in the generic format (docs/data-format.md).",
                          no_args_is_help=True)
app.add_typer(prepare_app, name="prepare")


def fail(message: str) -> None:
    """Print one clear error line and exit 2: never a traceback for bad input."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


@prepare_app.command("movielens")
def prepare_movielens_cmd(
    src: Annotated[Path, typer.Argument(help="Directory with ratings.csv, tags.csv, movies.csv.")],
    out: Annotated[Path, typer.Argument(help="Output directory (items.csv, events.csv).")],
) -> None:
    """Convert MovieLens (ml-latest-small / ml-20m / ml-25m layout) with the paper's rating thresholds."""
    from utpm.data.loading import load_dataset
    from utpm.data.movielens import prepare_movielens

    try:
        report = prepare_movielens(src, out)
        data = load_dataset(out)  # proves the output is valid in the generic format
    except DataError as e:
        fail(str(e))
    for w in data.report.warnings:
        typer.echo(f"note: {w}", err=True)
    typer.echo(report.summary())


@app.command("inspect")
def inspect_cmd(data: Annotated[Path, typer.Argument(help="A data set in the generic format.")]) -> None:
    """Validate a data set and print its row counts, warnings and the protocol's user split."""
    import json

    from utpm.data.loading import load_dataset
    from utpm.data.protocol import split_protocol

    t0 = time.perf_counter()
    try:
        ds = load_dataset(data)
    except DataError as e:
        fail(str(e))
    split = split_protocol(ds)
    info = {"rows": ds.report.rows, "warnings": ds.report.warnings, "protocol": split.protocol_info()}
    typer.echo(json.dumps(info, indent=2))
    typer.echo(f"validated {data} in {time.perf_counter() - t0:.1f}s")


REPO_DATA = Path(__file__).resolve().parent.parent / "data" / "movielens-small"


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option(help="Where the demo writes its data, runs and bundle.")] = Path(
        "artifacts/demo"
    ),
    src: Annotated[Path, typer.Option(help="MovieLens directory (the vendored ml-latest-small).")] = REPO_DATA,
) -> None:
    """The whole pipeline on the vendored MovieLens data, as far as the project goes."""
    from utpm.data.loading import load_dataset
    from utpm.data.movielens import prepare_movielens
    from utpm.data.protocol import split_protocol

    data_dir = out / "data"
    try:
        report = prepare_movielens(src, data_dir)
        split = split_protocol(load_dataset(data_dir))
    except DataError as e:
        fail(str(e))
    typer.echo(f"[1/1] prepare: {report.summary()}")
    info = split.protocol_info()
    typer.echo(f"demo: {info['train_users']} train and {info['test_users']} test users under the paper's "
               f"protocol; data in {data_dir}")


if __name__ == "__main__":
    app()
