"""Bad input to any `utpm` command ends in one clear error and exit status 2, before the command's
work: no traceback, no hang, no run of minutes that then fails to write its result.

Each case goes through `utpm_cli.main.main`, the console script, in process: an exception other
than SystemExit(2) fails the test, as a traceback would have reached the user."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.build import BuiltBundle
from utpm_cli.main import main


@pytest.fixture()
def utpm(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., str]:
    """Run `utpm ARGS...`; its output (stdout and stderr, the usage box's frame and line breaks gone),
    after asserting that it exited with status 2."""
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: object) -> str:
        monkeypatch.setattr(sys, "argv", ["utpm", *map(str, args)])
        with pytest.raises(SystemExit) as exited:
            main()
        out = capsys.readouterr()
        text = re.sub(r"[\s│╭╮╰╯─]+", " ", out.out + out.err)
        assert exited.value.code == 2, text
        return text

    return run


@pytest.fixture()
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


def test_options_out_of_range_or_not_read_are_refused_before_any_work(
    utpm: Callable[..., str], hist_built: BuiltBundle, movielens_sample_dir: Path, tmp_path: Path
) -> None:
    bundle, data = hist_built.bundle, movielens_sample_dir
    # each of these ran (and exited 0, or for minutes), raised a traceback, or hung (the port)
    cases = [
        (["demo", "--port", -1], "'--port'"),
        (["experiment", data, "--seeds", 0], "'--seeds'"),
        (["experiment", data, "--repeats", 0], "'--repeats'"),
        (["experiment", data, "--folds", 1], "--folds must be 0 (seeded 80/20 draws) or at least 2, got 1"),
        (["experiment", data, "--workers", -1], "'--workers'"),
        (
            ["experiment", data, "--models", "youtube", "--epochs", 1, "--variant", "cross=none,nonsense=1"],
            "variant 'cross=none,nonsense=1' cannot run: unknown key(s) ['nonsense']; valid: loss, ",
        ),
        # a paper model's job was started with it and failed when it reached the loss (after others had run)
        (["experiment", data, "--models", "youtube,default", "--loss", "bce"], "--loss bce: not a loss of youtube"),
        # options the chosen mode does not read were ignored: the runs or figures were not the ones asked for
        (["experiment", data, "--repeats", 2], "--repeats repeats the k-fold: it needs --folds"),
        (["experiment", data, "--folds", 2, "--seeds", 3], "--seeds: with --folds the runs are folds x --repeats"),
        (["experiment", data, "--hparam-seeds", 2], "--hparam-seeds: seeds of the hyper-parameter study, which"),
        (["bench", "personal", bundle, data, "--no-quality", "--against", bundle], "--against: part of the Prec@K"),
        (["bench", "personal", bundle, data, "--no-quality", "--tags-per-item", 3], "--tags-per-item: part of"),
        (["bench", "personal", bundle, data, "--whole", "--counts"], "--whole sends the request built from the log"),
        (
            ["export", tmp_path / "run", "--out", tmp_path / "b", "--data", data, "--synthetic-inputs"],
            "--data and --synthetic-inputs: the parity check takes one source of users, not both",
        ),
        (["bench", "serve", "--bundle", bundle, "--tags", 5000], "--tags: they describe the benchmark bundle"),
        (["bench", "tune", "--bundle", bundle, "--model", "utpm", "--variant", "a=1"], "--model: they describe the"),
        (["bench", "serve", "--bundle", bundle, "--no-peers", "--run", tmp_path], "--run: the run the naive peer"),
        (["bench", "roofline", bundle, "--no-asgi", "--duration", 3], "--duration: settings of the raw ASGI ceiling"),
        (["bench", "loop", bundle, "--payloads", tmp_path / "p.jsonl"], "--payloads: bodies of the POST A/B"),
        (["bench", "index", "--quick", "--tags", 50000], "--tags: --quick sets them (20k tags, 200 queries)"),
        (["bench", "model", "--preset", "tiny", "--run", tmp_path], "--run: the run of a BUNDLE; --preset"),
        # a default-model option given to a paper model was ignored: trained at the preset's sizes
        (
            ["train", data, "--out", tmp_path / "r", "--model", "utpm", "--dim", 32, "--no-counts"],
            "--dim, --no-counts: options of utpm-hist (the default model), not of utpm, whose sizes come from "
            "--preset (movielens)",
        ),
        (["bench", "personal", bundle, data, "--k", 0], "'--k'"),
        (["bench", "personal", bundle, data, "--values", 0], "'--values'"),
        (["bench", "ab", bundle, bundle, "--rounds", 0], "'--rounds'"),
        (["bench", "loop", bundle, "--concurrency", 0], "'--concurrency'"),
        (["bench", "serve", "--bundle", bundle, "--duration", 0], "'--duration'"),
        (["bench", "serve", "--bundle", bundle, "--workers", 0], "'--workers'"),
        (["profile", "bench", data, "--bundle", bundle, "--users", 0], "'--users'"),
        (["index", "build", bundle, "--target-recall", 2], "'--target-recall'"),
        (["bench", "index", "--quick", "--target-recall", 2], "'--target-recall'"),
        (["bench", "index", "--quick", "--threads", 0], "'--threads'"),
        # a --set value the service refuses was pydantic's traceback; a key it lacks was ignored, silently
        (
            ["bench", "roofline", bundle, "--set", "batch_max_users=abc"],
            "--set: invalid settings: UTPM_BATCH_MAX_USERS",
        ),
        (["bench", "roofline", bundle, "--set", "nonsense=1"], "--set: not a service setting: nonsense"),
    ]
    for args, expected in cases:
        assert expected in utpm(*args), args


def test_a_port_out_of_range_is_refused_instead_of_hanging(hist_built: BuiltBundle) -> None:
    """uvicorn's bind raised OverflowError, which it does not handle: the process served nothing and
    never exited. In a child process with a timeout, so that a regression fails instead of hanging."""
    done = subprocess.run(
        [sys.executable, "-m", "utpm_cli.main", "serve", str(hist_built.bundle), "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 2 and "Invalid value for '--port'" in done.stderr, done.stderr


def test_a_port_in_use_is_one_line_before_the_service_loads_or_the_demo_builds(
    utpm: Callable[..., str], hist_built: BuiltBundle, tmp_path: Path
) -> None:
    """uvicorn said it only after the service had loaded and logged that it was serving (status 3);
    the demo found it after a minute of building."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = utpm("serve", hist_built.bundle, "--port", port)
        assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in out
        assert "serving bundle" not in out
        out = utpm("demo", "--out", tmp_path / "demo", "--port", port)
        assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in out
        assert not (tmp_path / "demo").exists()
    assert "error: cannot listen on no.such.host.invalid:8000" in utpm(
        "serve", hist_built.bundle, "--host", "no.such.host.invalid"
    )


def test_serve_takes_the_bundle_from_utpm_bundle_as_the_service_does(
    utpm: Callable[..., str], hist_built: BuiltBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, `utpm serve` with UTPM_BUNDLE set (the service's one required setting) said "Missing
    argument 'bundle'". The port taken: the command gets past the bundle and stops before serving."""
    monkeypatch.setenv("UTPM_BUNDLE", str(hist_built.bundle))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"error: cannot listen on 127.0.0.1:{port}" in utpm("serve", "--port", port)
    monkeypatch.setenv("UTPM_BUNDLE", str(hist_built.run))  # a run, not a bundle: named as on the command line
    assert "is not a bundle" in utpm("serve")


def test_an_opset_the_exporter_cannot_write_is_named(
    utpm: Callable[..., str], hist_built: BuiltBundle, tmp_path: Path
) -> None:
    for opset in (16, 99):
        out = utpm("export", hist_built.run, "--out", tmp_path / f"b{opset}", "--opset", opset)
        assert "opset must be between 17 and" in out and f"got {opset}" in out
        assert not (tmp_path / f"b{opset}").exists()


def test_a_run_where_a_bundle_belongs_is_named(
    utpm: Callable[..., str], hist_built: BuiltBundle, movielens_sample_dir: Path
) -> None:
    out = utpm("bench", "personal", hist_built.run, movielens_sample_dir)
    assert f"{hist_built.run} is not a bundle: no manifest.json" in out


def test_a_damaged_run_directory_names_the_file(
    utpm: Callable[..., str], hist_built: BuiltBundle, movielens_sample_dir: Path, tmp_path: Path
) -> None:
    """A run copied in part or damaged: before, a truncated model.pt and a damaged history_encoder.npz
    were tracebacks in `evaluate` (the npz in `export` too), a config.json that is not an object a
    TypeError, and JSON that does not parse was json's message without the file."""
    import shutil

    damage = {
        "model.pt": (b"PK\x03\x04 truncated", "model.pt: not a readable checkpoint"),
        "history_encoder.npz": (b"not an npz", "history_encoder.npz: not a readable .npz of arrays"),
        "config.json": (b"[1, 2]", "config.json: not a run's config"),
    }
    for name, (content, problem) in damage.items():
        run = tmp_path / name
        shutil.copytree(hist_built.run, run)
        (run / name).write_bytes(content)
        assert problem in utpm("evaluate", run, movielens_sample_dir), name
        assert problem in utpm("export", run, "--out", tmp_path / f"bundle-{name}"), name
    (tmp_path / "config.json" / "config.json").write_text('{"model": ')
    assert "config.json: not readable JSON" in utpm("evaluate", tmp_path / "config.json", movielens_sample_dir)


def test_an_output_that_cannot_be_written_stops_the_command_before_its_work(
    utpm: Callable[..., str], hist_built: BuiltBundle, movielens_sample_dir: Path, a_file: Path
) -> None:
    data = movielens_sample_dir
    cases = [
        (["train", data, "--out", a_file / "run", "--epochs", 1], "'--out'"),
        (["experiment", data, "--models", "youtube", "--epochs", 1, "--json", a_file / "x.json"], "'--json'"),
        (["experiment", data, "--models", "youtube", "--epochs", 1, "--report", a_file / "r"], "'--report'"),
        (["export", hist_built.run, "--out", a_file / "bundle"], "'--out'"),
        (["prepare", "synthetic", a_file / "s", "--tags", 1000, "--users", 10], "'out'"),
        (["bench", "personal", hist_built.bundle, data, "--json", a_file / "p.json"], "'--json'"),
    ]
    for args, option in cases:
        # refused while the arguments are parsed, so before the command's work
        out = utpm(*args)
        assert f"Invalid value for {option}: cannot write {a_file}" in out, args
        assert f"{a_file} is a file" in out, args
    assert a_file.read_text() == "not a folder\n"


def test_a_path_the_system_refuses_is_one_line(utpm: Callable[..., str], tmp_path: Path) -> None:
    """What no option check covers (an input that is a folder where a file belongs) reaches the
    console script's net for OSError: the path and the reason, in one line."""
    src = tmp_path / "ml"
    (src / "ratings.csv").mkdir(parents=True)
    (src / "movies.csv").write_text("movieId,title,genres\n")
    (src / "tags.csv").write_text("userId,movieId,tag,timestamp\n")
    assert f"error: {src / 'ratings.csv'}: Is a directory" in utpm("prepare", "movielens", src, tmp_path / "out")


def test_bench_report_names_a_missing_doc_one_without_blocks_and_an_artifact_that_is_not_json(
    utpm: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert "docs/performance.md: no such file (run from the repository root, or name the docs)" in utpm(
        "bench", "report"
    )
    plain = tmp_path / "plain.md"
    plain.write_text("# no measured blocks\n")
    assert f"{plain} has no measured blocks" in utpm("bench", "report", plain)
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- report: x.json -->\nby hand\n<!-- /report -->\n")
    (tmp_path / "x.json").write_text("{not json")
    assert f"{doc}: x.json is not JSON" in utpm("bench", "report", doc)
    assert doc.read_text() == "<!-- report: x.json -->\nby hand\n<!-- /report -->\n"


def test_a_job_the_data_cannot_make_ends_the_experiment_in_one_line(tmp_path: Path) -> None:
    """Before: the job's ValueError came back through the process pool as a traceback, after the
    pool had run every other queued job; stopping early also left the workers' progress queue
    closed under them (their own tracebacks)."""
    data = tmp_path / "one-click"
    data.mkdir()
    (data / "items.csv").write_text("item_id,tags,categories\ni1,a|b,c\ni2,b,c\n")
    (data / "events.csv").write_text("user_id,item_id,timestamp,label\nu1,i1,1,1\nu2,i2,1,1\nu2,i9,2,1\n")
    args = [sys.executable, "-m", "utpm_cli.main", "experiment", str(data), "--folds", "2", "--epochs", "1"]
    done = subprocess.run([*args, "--json", str(tmp_path / "e.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    # what loading noticed is said first (before, the experiment never said it)
    assert "note: " in done.stderr and "dropped 1 event(s) whose item is not in the items file" in done.stderr
    assert "Traceback" not in done.stderr and "no training" in done.stderr.splitlines()[-1], done.stderr
    assert done.stderr.splitlines()[-1].startswith("error: "), done.stderr


def test_train_never_writes_over_a_folder_that_is_not_a_run(
    utpm: Callable[..., str], movielens_sample_dir: Path, tmp_path: Path
) -> None:
    """Before, `--out` into a folder of other files wrote config.json (and the rest) over them."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "config.json").write_text('{"mine": true}')
    out = utpm("train", movielens_sample_dir, "--out", notes, "--epochs", 1)
    assert "holds files and is not a run directory" in out
    assert (notes / "config.json").read_text() == '{"mine": true}' and sorted(notes.iterdir()) == [
        notes / "config.json"
    ]


def test_prepare_replaces_a_previous_data_set_and_never_writes_among_other_files(
    utpm: Callable[..., str], tmp_path: Path
) -> None:
    """Before, `prepare movielens` into the folder of a synthetic data set wrote events.csv and
    items.csv next to its Parquet tables and reported success, while the folder still loaded as the
    synthetic data (Parquet is read first) with its users table and truth.csv."""
    from utpm.data.loading import load_dataset
    from utpm.data.movielens import prepare_movielens
    from utpm.data.synthetic import generate_synthetic
    from utpm_cli.main import REPO_DATA

    data = tmp_path / "data"
    generate_synthetic(data, n_tags=200, n_users=30, events_per_user=5, seed=0)
    prepare_movielens(REPO_DATA, data)  # what the command runs once the folder is accepted
    assert sorted(p.name for p in data.iterdir()) == ["events.csv", "items.csv"]
    assert load_dataset(data).report.rows["events"] == 67_688  # MovieLens's, not the synthetic 150
    out = utpm("prepare", "movielens", REPO_DATA, REPO_DATA)  # the source itself: its own files would mix in
    assert "holds files that are not a prepared data set's (README.txt, movies.csv" in out
    assert not (REPO_DATA / "events.csv").exists()


def test_measurements_refuse_data_the_model_knows_nothing_of(
    utpm: Callable[..., str], hist_built: BuiltBundle, tmp_path: Path
) -> None:
    """Before: synthetic data against the MovieLens bundle printed Jaccard and Prec@K figures of
    profiles computed from empty requests, as if they measured something."""
    from utpm.data.synthetic import generate_synthetic

    generate_synthetic(tmp_path / "other", n_tags=500, n_users=60, events_per_user=10, seed=1)
    out = utpm("bench", "personal", hist_built.bundle, tmp_path / "other", "--users", 20)
    assert "none of the values sent for 20 users" in out and "is it the data the bundle was trained on" in out
    # and `evaluate` printed Prec@K 0.0000 for a run on data whose tags it never saw
    out = utpm("evaluate", hist_built.run, tmp_path / "other")
    assert "none of the test users' label tags" in out and "is it the data the run was trained on" in out


def test_evaluate_says_when_the_data_is_not_what_the_run_was_trained_on(
    hist_built: BuiltBundle, movielens_dir: Path, movielens_sample_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, a subset (or a re-prepared copy) of the training data gave Prec@K over a split whose
    test users the run may have trained on, with nothing to say the figure was not held out."""
    from utpm_cli.model import evaluate_run

    assert evaluate_run(hist_built.run, movielens_dir, [1])["same_data_as_training"] is True
    assert "was trained on" not in capsys.readouterr().err
    assert evaluate_run(hist_built.run, movielens_sample_dir, [1])["same_data_as_training"] is False
    note = capsys.readouterr().err
    assert f"note: {movielens_sample_dir} is not the data {hist_built.run} was trained on (users 609 then" in note
    assert "not a held-out figure" in note


def test_a_sizing_from_what_is_no_bench_result_is_one_line(utpm: Callable[..., str], tmp_path: Path) -> None:
    """`profile bench --sizing-from` over a file without `runs` was a KeyError traceback, and over a
    result without its local:1 and local:2 runs it printed `null` as the sizing and exited 0."""
    earlier = Path(__file__).parents[2] / "docs" / "results" / "batch-run3.json"
    result = tmp_path / "result.json"
    result.write_text(earlier.read_text())
    out = subprocess.run(
        [sys.executable, "-m", "utpm_cli.main", "profile", "bench", "--sizing-from", str(result)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and '"population": 100000000' in out.stdout, out.stderr
    cases = [
        ("{}", "not a result of utpm profile bench (KeyError: 'runs')"),
        ("[1]", "not a result of utpm profile bench (TypeError"),
        ('{"runs": [{"engine": "ray", "workers": 2}], "k": 50}', "the sizing needs its local:1 and local:2 runs"),
    ]
    for text, expected in cases:
        result.write_text(text)
        assert expected in utpm("profile", "bench", "--sizing-from", result), text
    assert "--users: --sizing-from measures nothing" in utpm("profile", "bench", "--sizing-from", result, "--users", 5)
