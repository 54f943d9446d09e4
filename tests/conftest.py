"""Shared fixtures. `redis_server` starts a real redis-server on a free port for the session."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadtest._procs import start_redis

REPO = Path(__file__).resolve().parent.parent
MOVIELENS_SMALL = REPO / "data" / "movielens-small"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server process this test session owns; `stop()`/`start()` simulate an outage."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        try:
            self.proc = start_redis(self.port, self.workdir)
        except RuntimeError as e:
            pytest.fail(f"{e}; `make test` installs it")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(port=free_port(), workdir=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def movielens_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The vendored MovieLens data converted to the generic format once per session."""
    from utpm.data.movielens import prepare_movielens

    out = tmp_path_factory.mktemp("movielens")
    prepare_movielens(MOVIELENS_SMALL, out)
    return out


# --- model_export / index fixtures (ONNX bundle + FAISS index issue) ---------------------------


@pytest.fixture(scope="session")
def tiny_run(movielens_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A UTPM run at the tiny preset, 2 epochs on the vendored MovieLens (a few seconds). Read-only."""
    from utpm.data.loading import load_dataset
    from utpm.data.protocol import split_protocol
    from utpm.models.presets import get_preset
    from utpm.training.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny_run")
    split = split_protocol(load_dataset(movielens_dir))
    train(split, TrainConfig(model="utpm", loss="joint", preset=get_preset("tiny"), epochs=2), out=out)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported as a bundle (parity checked on its MovieLens test users). Read-only:
    tests that change a bundle copy it first."""
    from model_export.onnx_export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(tiny_run, out)
    return out


# --- service fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bundles(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory, movielens_dir: Path) -> dict[str, Path]:
    """Two servable (indexed) bundles under one root: `a` (the tiny bundle) and `b` (another seed);
    `b_raw` is `b` before its index was built (a bundle the service must refuse)."""

    from index.build import build_index
    from model_export.onnx_export import export_bundle
    from utpm.data.loading import load_dataset
    from utpm.data.protocol import split_protocol
    from utpm.models.presets import get_preset
    from utpm.training.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("served")
    shutil.copytree(tiny_bundle, root / "a")
    build_index(root / "a", kind="flat")
    run_b = tmp_path_factory.mktemp("run_b")
    split = split_protocol(load_dataset(movielens_dir), seed=1)
    train(split, TrainConfig(model="utpm", loss="joint", preset=get_preset("tiny"), epochs=1, seed=1), out=run_b)
    export_bundle(run_b, root / "b_raw")
    shutil.copytree(root / "b_raw", root / "b")
    build_index(root / "b", kind="flat")
    return {"a": root / "a", "b": root / "b", "root": root}
