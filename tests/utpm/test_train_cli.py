"""The library's commands: `utpm train DATA --out RUN` without --model or --loss trains the default
model with its default loss; `experiment` and `simulate` end with one clear error line on bad input."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from utpm.training import history
from utpm.training.history import DEFAULT_HISTORY_LOSS
from utpm_cli.main import app


def test_train_without_options_trains_the_default_model_with_its_default_loss(
    movielens_sample_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", str(movielens_sample_dir), "--out", str(out), "--epochs", "1", "--dim", "8"]
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "utpm-hist"
    assert config["loss"] == DEFAULT_HISTORY_LOSS == "bce"
    # what loading noticed is said (before, only `inspect` showed it: a training on data with dropped
    # rows said nothing of them)
    assert "note: " in result.output and "item(s) have no tags" in result.output
    # the prior the validation users chose (start and popularity count) is on the summary line
    metrics = json.loads((out / "metrics.json").read_text())
    start = metrics["start"]
    assert f"{start['kind']} start, popularity by {start['popularity']}" in result.output
    assert metrics["loss"] == "bce" and "trained utpm-hist/bce (best epoch" in result.output
    # without a terminal (a log file) each stage is a line as it starts, with the seconds and the memory
    # so far, in order, and each epoch's figures (steps within an epoch only a minute apart)
    line = r"^\s*\[\s*\d+s, (\d+\.\d) GiB, peak (\d+\.\d)\] "
    memory = [re.match(line, x) for x in result.output.splitlines()]
    assert all(0 < float(m[1]) <= float(m[2]) for m in memory if m), result.output
    stages = [re.sub(line, "", x) for x in result.output.splitlines() if re.match(line, x)]
    assert stages[0].startswith("vocabularies of ") and stages[-1] == f"writing {out}", stages
    order = ["encoding ", "the blend and the tuned start", "epoch 1/1: validating", "epoch 1/1: loss "]
    at = [next(i for i, x in enumerate(stages) if x.startswith(o)) for o in order]
    assert at == sorted(at), stages
    # the start's choice validated the start kept: its figures are reused, not a second pass over every tag
    assert "validating the start" not in stages


def test_a_stage_line_never_prints_the_peak_below_the_memory_now(monkeypatch: pytest.MonkeyPatch) -> None:
    # the peak is read after the resident size and rounded to 0.01 GiB: CI once printed "1.7 GiB, peak 1.6"
    import pipeline.build
    from utpm_cli.model import memory_now

    monkeypatch.setattr(pipeline.build, "peak_rss_gib", lambda: 0.01)
    now, peak = re.fullmatch(r"(\d+\.\d) GiB, peak (\d+\.\d)", memory_now()).groups()  # type: ignore[union-attr]
    assert float(now) > 0 and peak == now


def test_an_all_tag_loss_over_a_large_vocabulary_says_it_trained_its_sampled_form(
    movielens_sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above FULL_SOFTMAX_MAX_TAGS tags `bce` trains as `sampled_bce` (and `softmax` as `sampled`): the
    summary line and metrics.json said "bce" of a run over a million tags that never scored every tag."""
    monkeypatch.setattr(history, "FULL_SOFTMAX_MAX_TAGS", 10)
    out = tmp_path / "run"
    args = ["train", str(movielens_sample_dir), "--out", str(out), "--epochs", "1", "--dim", "8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "trained utpm-hist/bce as sampled_bce (above 10 tags) (best epoch" in result.output
    assert json.loads((out / "metrics.json").read_text())["loss"] == "sampled_bce"
    assert json.loads((out / "config.json").read_text())["loss"] == "bce"  # what was asked for


def test_train_refuses_an_unknown_loss_by_name(movielens_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(movielens_dir), "--out", str(tmp_path / "r"), "--loss", "hinge"])
    assert result.exit_code != 0
    assert "hinge" in result.output


def test_train_takes_the_cross_layer_of_the_default_model_and_refuses_an_unknown_one(
    movielens_sample_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["train", str(movielens_sample_dir), "--out", str(out), "--epochs", "1", "--dim", "8", "--cross", "cf"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # the paper's layer, an option of the default model (whose default is none)
    assert json.loads((out / "config.json").read_text())["history"]["cross"] == "cf"
    bad = CliRunner().invoke(app, [*args[:3], str(tmp_path / "r"), "--cross", "cartesian"])
    assert bad.exit_code != 0
    assert "cartesian" in bad.output and "valid" in bad.output


def test_train_options_default_to_the_default_models_options() -> None:
    """`utpm train`'s switches of the default model name its defaults once more (typer shows them in
    --help): they must be `HistoryOptions`' (and `HistoryTrainConfig`'s) own."""
    import inspect

    from utpm.models.history import HistoryOptions
    from utpm.training.history import HistoryTrainConfig
    from utpm_cli.main import train_cmd

    params = inspect.signature(train_cmd).parameters
    for name in ("counts", "history", "tie", "cross"):
        assert params[name].default == getattr(HistoryOptions(), name), name
    assert params["short_requests"].default == HistoryTrainConfig().short_requests
    assert params["sparse_updates"].default == HistoryTrainConfig().sparse_updates


def test_a_paper_model_refuses_the_default_models_update_switch(movielens_sample_dir: Path, tmp_path: Path) -> None:
    """The paper's trainer has no row-sparse updates: asked for dense ones, it says so instead of training."""
    args = ["train", str(movielens_sample_dir), "--out", str(tmp_path / "r"), "--model", "utpm", "--dense-updates"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    # named as the user wrote it, not by a rule the flag does not follow (`--no-sparse-updates`)
    assert result.output.startswith("error: --dense-updates: options of utpm-hist (the default model), not of utpm")


def test_experiment_on_a_missing_directory_ends_with_the_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["experiment", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == f"error: {tmp_path / 'missing'}: not a directory"


def test_simulate_names_the_service_it_cannot_reach(movielens_sample_dir: Path) -> None:
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = CliRunner().invoke(app, ["simulate", url, str(movielens_sample_dir)])
    assert result.exit_code == 2
    assert f"error: cannot reach the service at {url}" in result.output


def test_a_k_below_1_is_refused_naming_the_option(tmp_path: Path) -> None:
    for args in (["evaluate", str(tmp_path), str(tmp_path)], ["experiment", str(tmp_path)]):
        result = CliRunner().invoke(app, [*args, "--k", "0"])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1] == "error: --k needs at least one value, each >= 1, got '0'"


def test_a_run_trained_on_every_user_ships_and_is_not_evaluated(movielens_sample_dir: Path, tmp_path: Path) -> None:
    """`--test-share 0`: the bundle to ship once the figures are taken, trained on every user but the
    validation users; its parity is checked on real users it trained on (not synthetic ones), and
    `evaluate` refuses it (its figures would be over trained-on users)."""
    data, run, bundle = str(movielens_sample_dir), tmp_path / "run", tmp_path / "bundle"
    args = ["train", data, "--out", str(run), "--epochs", "1", "--dim", "8", "--test-share", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "test none (--test-share 0: no user held out)" in result.output, result.output
    protocol = json.loads((run / "config.json").read_text())["protocol"]
    assert protocol["test_users"] == 0 and protocol["train_users"] == protocol["users"]
    assert CliRunner().invoke(app, ["export", str(run), "--out", str(bundle)]).exit_code == 0
    parity = json.loads((bundle / "manifest.json").read_text())["parity"]
    assert parity["inputs"] == f"trained-on users of {data}; the run held none out"
    refused = CliRunner().invoke(app, ["evaluate", str(run), data])
    assert refused.exit_code != 0 and "trained with no user held out (--test-share 0)" in refused.output
    # the served lists' Prec@K would be over trained-on users too; their personalisation is still measured
    assert CliRunner().invoke(app, ["index", "build", str(bundle), "--kind", "flat"]).exit_code == 0
    personal = ["bench", "personal", str(bundle), data, "--users", "20"]
    refused = CliRunner().invoke(app, personal)
    assert refused.exit_code != 0 and "its Prec@K needs --no-quality" in refused.output, refused.output
    assert CliRunner().invoke(app, [*personal, "--no-quality"]).exit_code == 0
    # another share: evaluate splits as the run did (before, at 0.2 whatever the run's share)
    other = tmp_path / "run30"
    assert CliRunner().invoke(app, [*args[:3], str(other), *args[4:8], "--test-share", "0.3"]).exit_code == 0
    figures = CliRunner().invoke(app, ["evaluate", str(other), data, "--json"])
    assert figures.exit_code == 0 and "is not the data" not in figures.output, figures.output
    recorded = json.loads((other / "config.json").read_text())["protocol"]["test_users"]
    measured = json.loads(figures.stdout)
    assert measured["test_users"] == recorded and measured["same_data_as_training"] is True


def test_a_default_preset_that_cuts_most_items_tags_is_noted(tmp_path: Path) -> None:
    """The default --preset movielens counts an item's first 3 tags only: on data whose items have 5
    (the synthetic data's), training dropped two of them from every label without a word."""
    data = tmp_path / "data"
    data.mkdir()
    items = [f"i{j},{'|'.join(f'{t}{j % 4}' for t in 'abcde')}," for j in range(8)]
    (data / "items.csv").write_text("item_id,tags,categories\n" + "\n".join(items) + "\n")
    events = [f"u{u},i{(u + t) % 8},{t},1" for u in range(20) for t in range(10)]
    (data / "events.csv").write_text("user_id,item_id,timestamp,label\n" + "\n".join(events) + "\n")
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--dim", "8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "note: 100% of the clicked items have more than N = 3 tags (up to 5); the default --preset movielens" in (
        result.output
    )
    chosen = CliRunner().invoke(app, [*args, "--preset", "tiny"])  # a preset given was chosen: no note
    assert chosen.exit_code == 0 and "more than N" not in chosen.output, chosen.output
