"""An experiment whose job fails ends soon: the queued jobs are cancelled and the running ones end at
their next epoch, instead of training to the end for a result that is thrown away."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.datasets import synthetic_dataset
from utpm.evaluation import experiment
from utpm.evaluation.experiment import ExperimentError, run_experiment

REAL_RUN_JOB = experiment.run_job


def youtube_fails(data_path: str, job: Any, ks: Any, updates: Any = None) -> dict[str, Any]:
    """The real job, except that youtube's fails at once; a job that trains to its end leaves a mark."""
    if job.model == "youtube":
        raise ValueError("a planted failure")
    out = REAL_RUN_JOB(data_path, job, ks, updates)
    (Path(data_path) / f"finished-{job.model}").touch()
    return out


def test_a_failed_job_stops_the_job_running_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = synthetic_dataset(n_users=60, events=30, only_positive=True)
    path = tmp_path / "data"
    path.mkdir()
    items = data.items.assign(tags=data.items["tags"].map("|".join), categories=data.items["categories"].map("|".join))
    items.to_csv(path / "items.csv", index=False)
    data.events.to_csv(path / "events.csv", index=False)
    # the pool's workers are forked from this process, so they run the patched job
    monkeypatch.setattr(experiment, "run_job", youtube_fails)
    with pytest.raises(ExperimentError, match="youtube/separate/seed0: a planted failure"):
        run_experiment(str(path), ["youtube", "utpm-hist"], ["default"], 1, (1, 2), "tiny", epochs=40, workers=2)
    assert not (path / "finished-utpm-hist").exists()  # before, it trained to its end while the error waited
