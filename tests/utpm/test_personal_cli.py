"""`utpm bench personal`: the counts `--counts` sends, and the quality of served lists beside the yardsticks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.datasets import synthetic_dataset
from utpm.data.loading import load_dataset
from utpm.data.protocol import split_protocol, train_val_rows
from utpm.evaluation.experiment import VAL_FRACTION
from utpm.evaluation.yardsticks import YARDSTICKS, popularity, tag_order
from utpm_cli.main import app
from utpm_cli.personal import (
    AGAINST,
    QUALITY_KS,
    SERVED,
    quality_lines,
    request_features,
    served_quality,
    whole_request,
)


def test_items_are_sent_as_the_most_recent_distinct_clicked_items_each_counted_once() -> None:
    split = split_protocol(synthetic_dataset(n_users=10, events=20), seed=0)
    i = next(i for i in range(split.n_users) if len(split.clicked_items(i)) > 3)
    clicked = split.clicked_items(i)
    plain = request_features(split, i, ["clicked_tags"], 3, counts=False, items=True)
    assert plain["clicked_items"] == clicked[-3:]
    counted = request_features(split, i, ["clicked_tags"], 3, counts=True, items=True)
    assert counted["clicked_items"] == dict.fromkeys(clicked[-3:], 1)
    assert "clicked_items" not in request_features(split, i, ["clicked_tags"], 3, counts=False)


def test_the_whole_request_is_the_one_built_from_the_log_with_the_bundles_fields() -> None:
    split = split_protocol(synthetic_dataset(n_users=10, events=20), seed=0)
    i = next(i for i in range(split.n_users) if split.clicked_items(i) and split.fields["unclicked_tags"].row(i))
    sent = whole_request(split, i, ["clicked_tags", "unclicked_tags"])
    assert set(sent) == {"clicked_tags", "unclicked_tags", "clicked_items"}
    assert sent["unclicked_tags"] == split.counted("unclicked_tags", i)
    assert sent["clicked_items"] == split.clicked_items(i)


def test_bench_personal_sends_the_whole_request(hist_bundle: Path, movielens_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "personal.json"
    args = [str(hist_bundle), str(movielens_dir), "--users", "20", "--whole", "--no-quality", "--json", str(out)]
    res = CliRunner().invoke(app, ["bench", "personal", *args])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["whole"] is True and "the whole request built from the log" in res.output


def test_served_quality_pairs_each_test_user_with_the_experiments_yardsticks(movielens_dir: Path) -> None:
    split = split_protocol(load_dataset(movielens_dir), seed=0)
    train_rows, _ = train_val_rows(split, VAL_FRACTION, 0)
    popular = popularity(split, train_rows, 3, tag_order(split, train_rows, 3))
    test_rows = split.indices(test=True).tolist()

    def oracle(i: int, limit: int) -> list[str]:  # C first: Prec@K is 1 for every user
        return sorted(split.clicked_tags(i, 3)) + popular[:limit]

    quality = served_quality(oracle, split, movielens_dir, 3, seed=0)
    rows = {(r["model"], r["k"]): r for r in quality["rows"]}
    assert quality["users"] == sum(1 for i in test_rows if split.clicked_tags(i, 3))
    assert {m for m, _ in rows} == {SERVED, *YARDSTICKS}
    for k in QUALITY_KS:
        assert rows[(SERVED, k)]["mean"] == 1.0
        assert rows[(SERVED, k)]["vs"]["mostpop"]["gap"] == pytest.approx(1.0 - rows[("mostpop", k)]["mean"])

    def pop(i: int, limit: int) -> list[str]:
        return popular[:limit]

    quality = served_quality(pop, split, movielens_dir, 3, seed=0, against=oracle)
    served = {r["k"]: r for r in quality["rows"] if r["model"] == SERVED}
    assert all(served[k]["vs"]["mostpop"] == {"gap": 0.0, "ci95": [0.0, 0.0]} for k in QUALITY_KS)
    # another bundle's lists for the same users, paired: popularity minus the oracle
    against = {r["k"]: r for r in quality["rows"] if r["model"] == AGAINST}
    for k in QUALITY_KS:
        gap = quality["vs_against"][str(k)]
        assert gap["gap"] == pytest.approx(served[k]["mean"] - 1.0) and against[k]["mean"] == 1.0
        assert gap["ci95"][0] <= gap["gap"] <= gap["ci95"][1] < 0
    assert all(served[k]["vs"]["blend"]["gap"] != 0.0 for k in QUALITY_KS)
    assert any("served - blend" in line for line in quality_lines(quality))


def test_bench_personal_reports_jaccard_the_served_lists_quality_and_a_paired_gap_to_another_bundle(
    hist_bundle: Path, movielens_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "personal.json"
    args = [str(hist_bundle), str(movielens_dir), "--users", "20", "--against", str(hist_bundle), "--json", str(out)]
    res = CliRunner().invoke(app, ["bench", "personal", *args])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["users"] == 20 and 0.0 <= result["served"]["jaccard"] <= 1.0
    quality = result["quality"]
    assert quality["tags_per_item"] == 3  # the bundle's preset N
    split = split_protocol(load_dataset(movielens_dir), seed=0)
    assert quality["users"] == sum(1 for i in split.indices(test=True).tolist() if split.clicked_tags(i, 3))
    assert {r["model"] for r in quality["rows"]} == {SERVED, AGAINST, *YARDSTICKS}
    # the same bundle against itself: the same lists for every user, so every paired gap is exactly 0
    assert quality["against"]["model"] == "utpm-hist"
    assert all(g == {"gap": 0.0, "ci95": [0.0, 0.0]} for g in quality["vs_against"].values())
    assert "served - mostpop:" in res.output and "served - against:" in res.output and f"wrote {out}" in res.output
    assert result["same_data_as_training"] is True and "was trained on" not in res.output
    # a line as each long part starts, before the figures
    starts = [res.output.index(f"Prec@K: the {part}") for part in ("served lists", "--against bundle's", "yardsticks")]
    assert starts == sorted(starts) and starts[-1] < res.output.index("served - mostpop:")


def test_bench_personal_says_when_its_split_is_not_the_one_the_bundle_was_trained_on(
    hist_bundle: Path, movielens_dir: Path, tmp_path: Path
) -> None:
    """Before, `--seed 1` (or other data) scored the served lists on test users the model may have
    trained on, beside yardsticks that had not, as if both were held out."""
    out = tmp_path / "personal.json"
    args = [str(hist_bundle), str(movielens_dir), "--users", "20", "--seed", "1", "--no-quality", "--json", str(out)]
    res = CliRunner().invoke(app, ["bench", "personal", *args])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["same_data_as_training"] is False
    assert (
        f"note: {movielens_dir} under --seed 1 is not the split {hist_bundle} was trained on (seed 0 then, 1 now"
        in (" ".join(res.output.split()))
    )


def test_bench_personal_takes_the_bundles_training_seed_by_default(
    bundles: dict[str, Path], movielens_dir: Path, tmp_path: Path
) -> None:
    """Before, the split was seed 0's whatever seed the bundle was trained under (bundle b: seed 1),
    so its served lists were scored on users it had trained on unless --seed was given."""
    out = tmp_path / "personal.json"
    args = [str(bundles["b"]), str(movielens_dir), "--users", "20", "--no-quality", "--json", str(out)]
    res = CliRunner().invoke(app, ["bench", "personal", *args])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["same_data_as_training"] is True and "is not the split" not in res.output
