"""`utpm prepare movielens`: the paper's labels by default, every rating a click with --all-positive."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from utpm_cli.main import app

SRC = Path(__file__).resolve().parents[2] / "data" / "movielens-small"


def test_all_positive_writes_every_rating_as_a_click_and_the_default_keeps_the_papers_labels(tmp_path: Path) -> None:
    runner = CliRunner()
    paper = runner.invoke(app, ["prepare", "movielens", str(SRC), str(tmp_path / "paper")])
    allpos = runner.invoke(app, ["prepare", "movielens", str(SRC), str(tmp_path / "allpos"), "--all-positive"])
    assert paper.exit_code == 0 and allpos.exit_code == 0, paper.output + allpos.output
    ratings = len(pd.read_csv(SRC / "ratings.csv"))
    labels = pd.read_csv(tmp_path / "allpos" / "events.csv")["label"]
    assert len(labels) == ratings and set(labels) == {1}
    paper_labels = pd.read_csv(tmp_path / "paper" / "events.csv")["label"]
    assert set(paper_labels) == {0, 1} and len(paper_labels) < ratings  # the middle ratings dropped
    assert f"{ratings} label 1, 0 label 0" in allpos.output
