"""The benchmark bundle's recipe builds the default model too (a small size of the 1M-tag recipe)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from loadtest.bundle import Recipe, prepare_bench_bundle
from utpm.data.protocol import REQUEST_SHAPE


def test_the_default_models_benchmark_bundle_builds_and_serves(tmp_path: Path) -> None:
    from service.config import Settings
    from service.engine import ProfileEngine

    recipe = dataclasses.replace(
        Recipe.for_tags(1000, model="utpm-hist"),
        users=300,
        events_per_user=20,
        train_users=100,
        batch_size=64,
        test_fraction=0.05,
        parity_users=32,
    )
    built = prepare_bench_bundle(recipe, tmp_path)
    assert built.root == tmp_path / "tags1000-utpm-hist" and (tmp_path / "tags1000" / "data").is_dir()
    manifest = json.loads((built.bundle / "manifest.json").read_text())
    assert manifest["model"]["name"] == "utpm-hist" and manifest["parity"]["passed"]
    assert manifest["dims"]["user"] == 128  # the paper preset's U: the structured tag vectors fit
    infos = json.loads((built.bundle / "index_infos.json").read_text())
    assert infos["two_stage"]["users"] > 0 and 0.0 < infos["two_stage"]["recall@50"] <= 1.0
    assert "heldout_users" in infos["queries"]["sources"]  # its own users, not the paper model's structured queries
    bodies = built.payloads.read_text()
    payload = json.loads(bodies.splitlines()[0])
    assert isinstance(payload["features"]["clicked_tags"], dict)  # as ProtocolSplit.request builds it
    engine = ProfileEngine.load(built.bundle, Settings.model_validate({"bundle": str(built.bundle)}))
    profile = engine.compute([engine.encode(payload["features"], 10, False)])[0]
    assert len(profile.tag_ids) == 10
    # a second call reuses it (same recipe), a paper recipe gets its own directory over the same data
    assert prepare_bench_bundle(recipe, tmp_path).info == built.info
    assert Recipe.for_tags(1000, "utpm").directory(tmp_path) == tmp_path / "tags1000"
    # re-exported: the same run (not retrained) exported and indexed again, the payloads kept
    trained = (built.run / "model.pt").stat().st_mtime_ns
    again = prepare_bench_bundle(recipe, tmp_path, reexport=True)
    assert (built.run / "model.pt").stat().st_mtime_ns == trained
    assert again.info["stages"]["train"] == built.info["stages"]["train"] and "reexported_at" in again.info
    version = json.loads((again.bundle / "manifest.json").read_text())["bundle_version"]
    assert json.loads((again.bundle / "index_infos.json").read_text())["bundle_version"] == version
    assert again.payloads.read_text() == bodies
    # request bodies written before their shape changed (REQUEST_SHAPE) are rewritten, the bundle kept
    meta_path = built.root / "bench_bundle.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "payloads_version"}))
    built.payloads.write_text('{"features": {"clicked_tags": ["x"]}}\n')
    reused = prepare_bench_bundle(recipe, tmp_path)
    assert reused.payloads.read_text() == bodies and reused.info["payloads_version"] == REQUEST_SHAPE
    assert json.loads((reused.bundle / "manifest.json").read_text())["bundle_version"] == version
    with pytest.raises(FileNotFoundError, match="no trained run"):
        prepare_bench_bundle(dataclasses.replace(recipe, seed=1), tmp_path, reexport=True)


def test_the_recipe_takes_the_default_models_cross_layer_in_its_own_directory(tmp_path: Path) -> None:
    """An ablation of utpm-hist's cross layer is built beside the default one (none), over the same data;
    a bundle built before the option existed (its stored recipe lacks it) is the cf one."""
    none, cf = Recipe.for_tags(1000, "utpm-hist"), Recipe.for_tags(1000, "utpm-hist", cross="cf")
    assert none.cross == "none" and Recipe.for_tags(1000, "utpm").cross == "cf"  # the paper model keeps its layer
    assert cf.directory(tmp_path) == tmp_path / "tags1000-utpm-hist-cross-cf"
    assert none.directory(tmp_path) == tmp_path / "tags1000-utpm-hist"
    assert cf.train_config(tmp_path / "v.npz").history.cross == "cf"
    assert none.train_config(tmp_path / "v.npz").history.cross == "none"
    stored = {k: v for k, v in dataclasses.asdict(cf).items() if k != "cross"}
    assert cf.same_as(stored) and not none.same_as(stored) and not cf.same_as(None)
    with pytest.raises(ValueError, match="option of utpm-hist"):
        Recipe.for_tags(1000, "utpm", cross="none")
    with pytest.raises(ValueError, match="unknown cross layer 'cartesian'; valid: none, cf"):
        Recipe.for_tags(1000, "utpm-hist", cross="cartesian")


def test_the_benchmarks_build_the_default_model_unless_told_otherwise() -> None:
    """`Recipe.for_tags`, `python -m loadtest.bundle` and `utpm bench serve` / `tune --tags` name the
    default model; the CLI's defaults (shown in --help) are checked against the recipe's."""
    import inspect

    from loadtest.bundle import DEFAULT_MODEL
    from utpm.evaluation.experiment import DEFAULT_MODEL as PROJECT_DEFAULT
    from utpm_cli.bench import bench_serve_cmd, bench_tune_cmd

    assert DEFAULT_MODEL == PROJECT_DEFAULT and Recipe.for_tags(1000).model == DEFAULT_MODEL
    for cmd in (bench_serve_cmd, bench_tune_cmd):
        assert inspect.signature(cmd).parameters["model"].default == DEFAULT_MODEL, cmd.__name__


def test_an_unknown_benchmark_model_is_refused_before_anything_runs() -> None:
    from typer.testing import CliRunner

    from utpm_cli.main import app

    for command in (["bench", "serve"], ["bench", "tune", "--variant", ""]):
        res = CliRunner().invoke(app, [*command, "--model", "utpm-xl"])
        assert res.exit_code == 2 and "unknown benchmark model 'utpm-xl'; valid: utpm-hist, utpm" in res.output


def test_bad_benchmark_arguments_end_in_one_error_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from utpm_cli.main import app

    cases = {
        ("bench", "serve", "--bundle", str(tmp_path)): f"error: {tmp_path} is not a bundle: no manifest.json",
        ("bench", "serve", "--users", "0"): "error: --users needs at least one value, each >= 1, got '0'",
        ("bench", "roofline", str(tmp_path)): f"error: {tmp_path} is not a bundle",
    }
    for args, line in cases.items():
        res = CliRunner().invoke(app, list(args))
        assert res.exit_code == 2 and res.output.strip().splitlines()[-1].startswith(line), res.output
        assert "Traceback" not in res.output


def test_the_bundle_command_refuses_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loadtest.bundle import main

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = [
        (["--tags", "0"], "--tags must be at least 1000, got 0"),  # before: the generator's traceback
        (["--tags", "5000", "--cross", "zz"], "unknown cross layer 'zz'"),  # before: a traceback
        (["--tags", "5000", "--root", str(a_file / "bench")], "cannot create --root"),  # before: a traceback
    ]
    for argv, problem in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and problem in capsys.readouterr().err, argv


def test_raising_one_models_recipe_version_keeps_the_other_models_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    """A change to the default model rebuilds its benchmark bundle, not the paper model's (20 min at 1M tags)."""
    import loadtest.bundle as bench

    paper, default = (
        dataclasses.asdict(bench.Recipe.for_tags(1000, m)) for m in (bench.PAPER_MODEL, bench.DEFAULT_MODEL)
    )
    monkeypatch.setitem(bench.RECIPE_VERSIONS, bench.DEFAULT_MODEL, bench.RECIPE_VERSIONS[bench.DEFAULT_MODEL] + 1)
    assert not bench.Recipe.for_tags(1000, bench.DEFAULT_MODEL).same_as(default)
    assert bench.Recipe.for_tags(1000, bench.PAPER_MODEL).same_as(paper)


def test_the_recipe_takes_validation_users_for_the_start_only_when_asked(tmp_path: Path) -> None:
    """By default the benchmark trains without validation users (a 1M-tag validation pass costs more
    than its training); `val_users` asks for about that many, and a bundle recorded before the field
    existed is the recipe without them."""
    plain = Recipe.for_tags(1000, "utpm-hist")
    assert plain.val_users == 0 and plain.train_config(tmp_path / "v.npz").val_fraction == 0.0
    asked = dataclasses.replace(plain, val_users=256)
    fraction = asked.train_config(tmp_path / "v.npz").val_fraction
    training_users = plain.users - round(plain.users * plain.test_fraction)
    assert abs(training_users * fraction - 256) < 1
    stored = {k: v for k, v in dataclasses.asdict(plain).items() if k != "val_users"}
    assert plain.same_as(stored) and not asked.same_as(stored)
