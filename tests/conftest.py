"""Shared fixtures. `redis_server` starts a real redis-server on a free port for the session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.procs import Redis
from loadtest.procs import free_port as free_port  # re-exported: one free_port for every test
from pipeline import BuiltBundle, DataSource, build_bundle

REPO = Path(__file__).resolve().parent.parent
MOVIELENS_SMALL = REPO / "data" / "movielens-small"


RedisServer = Redis  # the type of the `redis_server` fixture


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = Redis(workdir=tmp_path_factory.mktemp("redis"))
    try:
        server.start()
    except RuntimeError as e:
        pytest.fail(f"{e}; `make test` installs it")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def movielens_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The vendored MovieLens data converted to the generic format once per session."""
    from utpm.data.movielens import prepare_movielens

    out = tmp_path_factory.mktemp("movielens")
    prepare_movielens(MOVIELENS_SMALL, out)
    return out


@pytest.fixture(scope="session")
def movielens_sample_dir(movielens_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 100 users of `movielens_dir` (all items): for tests of what a command does, not of
    what the model learns, so that they train in seconds instead of a minute."""
    import pandas as pd

    out = tmp_path_factory.mktemp("movielens-sample")
    events = pd.read_csv(movielens_dir / "events.csv", dtype={"user_id": str, "item_id": str})
    events[events["user_id"].isin(events["user_id"].unique()[:100])].to_csv(out / "events.csv", index=False)
    shutil.copy(movielens_dir / "items.csv", out / "items.csv")
    return out


# --- model_export / index fixtures (ONNX bundle + FAISS index issue) ---------------------------


def tiny_config(epochs: int, seed: int = 0) -> Any:
    """The tiny preset's training config (trains in seconds on the vendored MovieLens)."""
    from utpm.models.presets import get_preset
    from utpm.training.trainer import TrainConfig

    return TrainConfig(model="utpm", loss="joint", preset=get_preset("tiny"), epochs=epochs, seed=seed)


@pytest.fixture(scope="session")
def tiny_built(movielens_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> BuiltBundle:
    """The pipeline on the vendored MovieLens at the tiny preset, 2 epochs, exported (parity checked
    on its test users) but not indexed. Read-only: tests that change it copy it first."""
    out = tmp_path_factory.mktemp("tiny")
    return build_bundle(out, DataSource("generic", movielens_dir), tiny_config(epochs=2), index_kind=None)


@pytest.fixture(scope="session")
def tiny_run(tiny_built: BuiltBundle) -> Path:
    return tiny_built.run


@pytest.fixture(scope="session")
def tiny_bundle(tiny_built: BuiltBundle) -> Path:
    return tiny_built.bundle


def hist_config(epochs: int = 1, seed: int = 0) -> Any:
    """The default model (utpm-hist) at small sizes, asked for through a plain TrainConfig as a caller
    of `pipeline.build_bundle` would: `trainer.train` dispatches it to the history trainer."""
    from utpm.training.history import history_preset
    from utpm.training.trainer import TrainConfig

    preset = history_preset("tiny", dim=16, max_values=20)
    return TrainConfig(model="utpm-hist", loss="softmax", preset=preset, epochs=epochs, seed=seed, augment_cuts=())


@pytest.fixture(scope="session")
def hist_built(movielens_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> BuiltBundle:
    """The default model through the pipeline on the vendored MovieLens, exported and indexed (flat).
    Read-only: tests that change it copy it first."""
    out = tmp_path_factory.mktemp("hist")
    return build_bundle(out, DataSource("generic", movielens_dir), hist_config(), index_kind="flat")


@pytest.fixture(scope="session")
def hist_bundle(hist_built: BuiltBundle) -> Path:
    return hist_built.bundle


# --- service fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bundles(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory, movielens_dir: Path) -> dict[str, Path]:
    """Two servable (indexed) bundles under one root: `a` (the tiny bundle) and `b` (another seed);
    `b_raw` is `b` before its index was built (a bundle the service must refuse)."""
    from index.build import build_index

    root = tmp_path_factory.mktemp("served")
    shutil.copytree(tiny_bundle, root / "a")
    build_index(root / "a", kind="flat")
    other = build_bundle(
        tmp_path_factory.mktemp("b"),
        DataSource("generic", movielens_dir),
        tiny_config(epochs=1, seed=1),
        index_kind=None,
    )
    shutil.copytree(other.bundle, root / "b_raw")
    shutil.copytree(other.bundle, root / "b")
    build_index(root / "b", kind="flat")
    return {"a": root / "a", "b": root / "b", "root": root}
