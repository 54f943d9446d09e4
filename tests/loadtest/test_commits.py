"""`utpm bench commits`: the same command at two commits, alternated, each commit's own code run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from loadtest.commits import WORKING_TREE, CommitsConfig, figures, run_commits
from loadtest.loop import DEFAULT_GET, DEFAULT_POST
from loadtest.report import render_commits

# A stand-in for utpm_cli.main: writes a roofline report whose figure is the commit's VALUE file,
# and records that the command saw the repository's artifacts through the link.
FAKE_MAIN = """
import json, sys
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--json") + 1])
value = float(Path("VALUE").read_text())
seen = Path("artifacts/shared.txt").read_text()
out.write_text(json.dumps({"kind": "roofline", "engine": {"best": {"users_per_s": value, "cpu_ms_per_user": 1 / value}},
                           "seen": seen}))
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "utpm_cli").mkdir(parents=True)
    (repo / "utpm_cli" / "__init__.py").write_text("")
    (repo / "utpm_cli" / "main.py").write_text(FAKE_MAIN)
    (repo / ".gitignore").write_text("artifacts/\n")
    (repo / "VALUE").write_text("100")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "before")
    (repo / "VALUE").write_text("200")
    _git(repo, "commit", "-qam", "after")
    (repo / "artifacts").mkdir()
    (repo / "artifacts" / "shared.txt").write_text("the repository's artifacts")
    return repo


ROOFLINE = ("utpm", "bench", "roofline", "--json", "{json}")


def _config(repo: Path, tmp_path: Path, before: str, after: str, rounds: int) -> CommitsConfig:
    return CommitsConfig(before=before, after=after, command=ROOFLINE, out=tmp_path / "out", rounds=rounds, repo=repo)


def test_each_commit_runs_its_own_code_in_alternation(repo: Path, tmp_path: Path) -> None:
    cfg = _config(repo, tmp_path, "HEAD~1", "HEAD", rounds=2)
    report = run_commits(cfg)
    assert [(r["round"], r["arm"], r["roofline_users_per_s"]) for r in report["runs"]] == [
        (1, "before", 100.0),
        (1, "after", 200.0),
        (2, "before", 100.0),
        (2, "after", 200.0),
    ]
    assert report["medians"]["after"]["roofline_users_per_s"] == 200.0
    assert report["commits"]["before"] != report["commits"]["after"]
    assert '"seen": "the repository\'s artifacts"' in (tmp_path / "out" / "before-1.json").read_text()
    assert _git(repo, "worktree", "list").count("\n") == 0  # the checkouts are removed again
    table = render_commits(report)
    assert "| median | after | 200.0 |" in table and "roofline users/s" in table


def test_the_working_tree_is_the_after_arm(repo: Path, tmp_path: Path) -> None:
    (repo / "VALUE").write_text("300")  # uncommitted
    cfg = _config(repo, tmp_path, "HEAD", WORKING_TREE, rounds=1)
    report = run_commits(cfg)
    assert [r["roofline_users_per_s"] for r in report["runs"]] == [200.0, 300.0]
    assert report["commits"]["after"].endswith("+changes")


@pytest.mark.parametrize(
    ("command", "message"),
    [(("python", "x.py", "--json", "{json}"), "utpm ..."), (("utpm", "bench", "roofline"), "{json}")],
)
def test_a_command_it_cannot_compare_is_refused_before_any_checkout(
    repo: Path, tmp_path: Path, command: tuple[str, ...], message: str
) -> None:
    cfg = CommitsConfig(before="HEAD~1", after="HEAD", command=command, out=tmp_path / "out", repo=repo)
    with pytest.raises(ValueError, match=re.escape(message)):
        run_commits(cfg)
    assert _git(repo, "worktree", "list").count("\n") == 0


def test_a_failing_run_names_its_log(repo: Path, tmp_path: Path) -> None:
    (repo / "VALUE").write_text("not a number")
    cfg = _config(repo, tmp_path, "HEAD", WORKING_TREE, rounds=1)
    with pytest.raises(RuntimeError, match=re.escape("after-1.log")):
        run_commits(cfg)


def test_a_loop_report_is_compared_by_the_default_arms() -> None:
    post = {DEFAULT_POST: {"loop_us_per_request": 700.0, "requests_per_s": 1000.0}, "before": {}}
    report = {"kind": "loop", "post": post, DEFAULT_GET: {"loop_us_per_request": 90.0}, "other": {}}
    assert figures(report) == {"post_loop_us": 700.0, "post_loop_rps": 1000.0, "get_loop_us": 90.0}
    # `--post-only` writes no GET arms
    assert figures({"kind": "loop", "post": post})["get_loop_us"] is None
