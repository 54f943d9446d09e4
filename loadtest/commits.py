"""One benchmark command at two commits, alternated in one run (before, after, before, after...).

For a code change that no setting can switch (`utpm bench tune` alternates settings): each commit
is checked out in a git worktree of its own whose `artifacts` links to the repository's, so the
command's relative paths (bundles, payloads) are the same for both, and the command runs there with
this interpreter (`utpm ...` becomes `python -m utpm_cli.main ...`): the worktree's code is the one
imported, the installed packages are shared. `{json}` in the command is replaced by the path of each
run's JSON report; the key figures of each report (`serve`, `roofline`, `loop`) are gathered side by side.
"""

from __future__ import annotations

import datetime as dt
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from loadtest.loop import DEFAULT_GET, DEFAULT_POST
from loadtest.measure import machine_info

Say = Callable[[str], None]
ARMS = ("before", "after")
WORKING_TREE = "WORKTREE"  # the `after` ref that means the uncommitted working tree itself


@dataclass(frozen=True)
class CommitsConfig:
    before: str  # a git ref
    after: str  # a git ref, or WORKING_TREE
    command: tuple[str, ...]  # a `utpm ...` command; "{json}" where each run writes its report
    out: Path  # the runs' reports go here
    rounds: int = 2
    repo: Path = Path()
    command_line: str = ""


def figures(report: Mapping[str, Any]) -> dict[str, float | None]:
    """The figures a run is compared by: POST and cached GET throughput, POST p99, the roofline (a serve
    report's own, or a roofline report), the event loop's CPU per request (a loop report), and the CPU
    probe's median while the POST run (or the roofline's best row) ran: how fast the machine was."""
    kind = report.get("kind")
    if kind == "roofline":
        best = (report.get("engine") or {}).get("best") or {}
        return {
            "roofline_users_per_s": best.get("users_per_s"),
            "cpu_ms_per_user": best.get("cpu_ms_per_user"),
            "cpu_probe_ms": (best.get("cpu_probe") or {}).get("median_ms"),
        }
    if kind == "loop":  # the event loop's CPU per request of the default arm of each part measured
        post = (report.get("post") or {}).get(DEFAULT_POST) or {}
        get = report.get(DEFAULT_GET) or {}
        return {
            "post_loop_us": post.get("loop_us_per_request"),
            "post_loop_rps": post.get("requests_per_s"),
            "get_loop_us": get.get("loop_us_per_request"),
        }
    if kind != "serve":
        raise ValueError(f"no figures for a {kind!r} report (serve, roofline and loop ones are compared)")
    users = report["summary"]["compare_users"]
    runs = report["runs"]

    def rps(name: str) -> float | None:
        run = runs.get(name)
        return None if run is None else run["rps"]

    post = runs.get(f"utpm/post/{users}") or {}
    best = (report.get("roofline") or {}).get("best") or {}
    return {
        "post_rps": post.get("rps"),
        "post_p99_ms": post.get("p99_ms"),
        "wrk_post_rps": rps(f"utpm/wrk/{users}"),
        "wrk_get_rps": rps(f"utpm/wrk-get/{users}"),
        "roofline_users_per_s": best.get("users_per_s"),
        "cpu_ms_per_user": best.get("cpu_ms_per_user"),
        "post_vs_roofline": report["summary"]["ratios"].get("post_vs_roofline"),
        "post_vs_raw_asgi": report["summary"]["ratios"].get("post_vs_raw_asgi"),
        "cpu_probe_ms": (post.get("cpu_probe") or {}).get("median_ms"),
    }


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


@contextmanager
def checkout(repo: Path, ref: str) -> Iterator[tuple[Path, str]]:
    """A directory holding `ref`'s code (the working tree itself for WORKING_TREE) and its commit."""
    if ref == WORKING_TREE:
        dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
        yield repo, _git(repo, "rev-parse", "--short", "HEAD") + ("+changes" if dirty else "")
        return
    commit = _git(repo, "rev-parse", "--short", f"{ref}^{{commit}}")
    where = Path(tempfile.mkdtemp(prefix=f"utpm-ab-{commit}-"))
    _git(repo, "worktree", "add", "--detach", str(where), commit)
    try:
        (where / "artifacts").symlink_to((repo / "artifacts").resolve(), target_is_directory=True)
        yield where, commit
    finally:
        _git(repo, "worktree", "remove", "--force", str(where))
        shutil.rmtree(where, ignore_errors=True)


def _argv(command: Sequence[str], json_path: Path) -> list[str]:
    if not command or command[0] != "utpm":
        raise ValueError(f"the command must be a `utpm ...` command, got {' '.join(command)!r}")
    if not any("{json}" in a for a in command):
        raise ValueError("the command must write its report to {json} (e.g. --json {json})")
    return [sys.executable, "-m", "utpm_cli.main", *(a.replace("{json}", str(json_path)) for a in command[1:])]


def run_commits(cfg: CommitsConfig, progress: Say | None = None) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    if cfg.rounds < 1:
        raise ValueError("rounds must be at least 1")
    repo = cfg.repo.resolve()
    (repo / "artifacts").mkdir(exist_ok=True)
    out = cfg.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    _argv(cfg.command, out / "x.json")  # a bad command fails before any checkout
    started = dt.datetime.now(dt.UTC)
    runs: list[dict[str, Any]] = []
    with checkout(repo, cfg.before) as (dir_a, commit_a), checkout(repo, cfg.after) as (dir_b, commit_b):
        where = {"before": (dir_a, commit_a), "after": (dir_b, commit_b)}
        for rnd in range(1, cfg.rounds + 1):
            for arm in ARMS:
                directory, commit = where[arm]
                path = out / f"{arm}-{rnd}.json"
                log = out / f"{arm}-{rnd}.log"
                say(f"round {rnd}/{cfg.rounds}: {arm} ({commit}); log {log}")
                with log.open("w") as f:
                    code = subprocess.run(_argv(cfg.command, path), cwd=directory, stdout=f, stderr=subprocess.STDOUT)
                if code.returncode != 0 or not path.is_file():
                    raise RuntimeError(f"{arm} ({commit}) round {rnd} failed (exit {code.returncode}); see {log}")
                runs.append(
                    {"round": rnd, "arm": arm, "commit": commit, "report": str(path)}
                    | figures(orjson.loads(path.read_bytes()))
                )
    names = [k for k in runs[0] if k not in ("round", "arm", "commit", "report")]
    medians = {
        arm: {
            n: (statistics.median(vs) if (vs := [r[n] for r in runs if r["arm"] == arm and r[n] is not None]) else None)
            for n in names
        }
        for arm in ARMS
    }
    return {
        "kind": "commits",
        "command": cfg.command_line,
        "measured": " ".join(cfg.command),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "commits": {"before": commit_a, "after": commit_b},
        "rounds": cfg.rounds,
        "runs": runs,
        "medians": medians,
    }
