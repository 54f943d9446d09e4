"""The pipeline's two front doors on the command line: `utpm demo` (what `make demo` runs: raw MovieLens
to an indexed bundle, the two demo users' profiles, with --no-serve a last line saying what it wrote
where) and `utpm serve` refusing what it cannot serve before any server starts."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import MOVIELENS_SMALL
from utpm_cli.main import DEMO_USERS, app


@pytest.fixture(scope="module")
def raw_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ml-latest-small with the ratings of its first 100 users (every movie and tag application kept,
    so items keep their tags): the demo's input format, trained in seconds."""
    out = tmp_path_factory.mktemp("ml-raw-sample")
    for name in ("movies.csv", "tags.csv"):
        shutil.copy(MOVIELENS_SMALL / name, out / name)
    with (MOVIELENS_SMALL / "ratings.csv").open(newline="") as src, (out / "ratings.csv").open("w", newline="") as dst:
        rows = csv.reader(src)
        writer = csv.writer(dst)
        writer.writerow(next(rows))
        writer.writerows(r for r in rows if int(r[0]) <= 100)
    return out


def test_demo_without_serving_builds_an_indexed_bundle_and_says_where(raw_sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--src", str(raw_sample), "--out", str(out), "--no-serve"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    stages = [line.split(":")[0] for line in lines if line.startswith("[")]
    assert stages == ["[1/4] prepare", "[2/4] train", "[3/4] export + index", "[4/4] serve"]
    assert "utpm-hist" in next(line for line in lines if line.startswith("[2/4]"))
    version = json.loads((out / "bundle" / "manifest.json").read_text())["bundle_version"]
    assert (out / "bundle" / "index.faiss").is_file() and (out / "bundle" / "model.onnx").is_file()
    for name in DEMO_USERS:  # each demo user's profile: five tags with scores
        shown = lines[lines.index(next(line for line in lines if line.strip().startswith(name))) + 1]
        assert shown.strip().startswith("->") and shown.count("(") == 5, shown
    assert "skipped (--no-serve)" in lines[-2] and "http://" not in result.output  # it does not claim to serve
    assert lines[-1] == f"wrote the demo's data, run and bundle {version} under {out}"


def test_serve_refuses_what_is_not_a_servable_bundle_in_one_line(bundles: dict[str, Path], tmp_path: Path) -> None:
    """`utpm serve` on the usual mistakes (the bundle or the settings): one `error:` line that says what
    is wrong, no server start-up and no traceback."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    unindexed = bundles["root"] / "b_raw"  # exported, not indexed
    cases = {
        tmp_path / "missing": "is not a directory",
        run_dir: "is not a bundle: no manifest.json; `utpm export RUN --out BUNDLE`",
        unindexed: f"has no tag index (index.faiss); build it with `utpm index build {unindexed}`",
    }
    for bundle, needle in cases.items():
        result = CliRunner().invoke(app, ["serve", str(bundle)])
        assert result.exit_code == 2 and needle in result.output, result.output
        assert "Traceback" not in result.output and "http://" not in result.output
    for env, needle in (
        ({"UTPM_REDIS_URL": "localhost:6379"}, "invalid settings: UTPM_REDIS_URL: the Redis URL must start with"),
        ({"UTPM_AB_CHALLENGER_BUNDLE": str(tmp_path / "missing")}, "missing is not a directory"),
    ):
        result = CliRunner().invoke(app, ["serve", str(bundles["a"])], env=env)
        assert result.exit_code == 2 and needle in result.output, result.output
        assert "Traceback" not in result.output and "http://" not in result.output
