"""`utpm profile batch` end to end: real redis-server, real worker processes, a real (small) Ray.

The reference is one local run over every MovieLens user; the Ray run, a killed-and-resumed run
and a rerun must leave exactly its Redis contents (values and absolute expiry), and the service
must serve those records as cached profiles, identical to what it computes itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from batch import BatchJob, run_batch
from batch.job import BatchError
from batch.sources import JsonlSource, open_source
from service.main import create_app
from service.profile_record import iso_ms
from tests.batch.conftest import AS_OF_MS, TTL_S, contents, flush
from tests.conftest import RedisServer
from tests.serving import settings_for

REFERENCE_DB, RAY_DB, RESUME_DB, REJECTS_DB, CLI_DB = 1, 2, 3, 4, 5


def job(population: Path, bundle: Path, url: str, out: Path, **kw: object) -> BatchJob:
    base: dict[str, object] = {
        "source": JsonlSource(population),
        "k": 20,
        "ttl_ms": TTL_S * 1000,
        "chunk_users": 10,  # the same chunks (so the same model batches, bit for bit) in every run
        "computed_at_ms": AS_OF_MS,
    }
    return BatchJob(bundle=bundle, redis_url=url, out=out, **{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reference(
    population: Path, bundles: dict[str, Path], redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[bytes, tuple[bytes, int]]:
    """One uninterrupted local run (2 processes) over every user: the Redis contents every other run must match."""
    url = flush(redis_server, REFERENCE_DB)
    summary = run_batch(job(population, bundles["a"], url, tmp_path_factory.mktemp("ref")), workers=2)
    assert summary.written == summary.rows == 610 and summary.rejected == 0 and summary.skipped == 0
    assert summary.computed_at == iso_ms(AS_OF_MS)
    return contents(redis_server, REFERENCE_DB)


def test_local_job_writes_what_the_service_serves_as_cached(
    reference: dict[bytes, tuple[bytes, int]], population: Path, bundles: dict[str, Path], redis_server: RedisServer
) -> None:
    assert len(reference) == 610
    rows = [json.loads(line) for line in population.read_text().splitlines()[:5]]
    settings = settings_for(bundles["a"], None, redis_url=f"redis://127.0.0.1:{redis_server.port}/{REFERENCE_DB}")
    with TestClient(create_app(settings.model_copy(update={"near_cache_ttl_ms": 0}))) as c:
        for row in rows:
            got = c.get(f"/profile/{row['user_id']}", params={"k": 20})
            assert got.status_code == 200, got.text
            cached = got.json()
            assert cached["cached"] is True and cached["stale"] is False
            assert cached["computed_at"] == iso_ms(AS_OF_MS) and cached["expires_at"] == iso_ms(AS_OF_MS + TTL_S * 1000)
            # the same features through POST (writing nothing): the same ranking and scores
            fresh = c.post("/profile", json={**row, "k": 20, "store": False}).json()
            assert fresh["model_version"] == cached["model_version"]
            assert [t["tag"] for t in fresh["tags"]] == [t["tag"] for t in cached["tags"]]
            # batch 1 vs batch 64 in ONNX Runtime: the same floats up to the GEMM's rounding
            assert [t["score"] for t in fresh["tags"]] == pytest.approx([t["score"] for t in cached["tags"]], rel=1e-5)
            assert fresh["unknown"] == cached["unknown"]
    expiry = {exp for _, exp in reference.values()}
    assert expiry == {AS_OF_MS + TTL_S * 1000}  # PXAT: Redis drops each record exactly at its expires_at


@pytest.mark.usefixtures("local_ray")
def test_ray_job_writes_the_same_records(
    reference: dict[bytes, tuple[bytes, int]],
    population: Path,
    bundles: dict[str, Path],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    url = flush(redis_server, RAY_DB)
    summary = run_batch(job(population, bundles["a"], url, tmp_path), engine="ray", workers=2)
    assert (summary.written, summary.rejected, summary.engine) == (610, 0, "ray")
    assert contents(redis_server, RAY_DB) == reference


def _set_counter(port: int, db: int, stop_word: str) -> tuple[threading.Thread, Counter[str]]:
    """Count every SET of each key in `db` (Redis MONITOR) until `ECHO stop_word` is seen."""
    counts: Counter[str] = Counter()
    ready = threading.Event()

    def watch() -> None:
        # no read timeout (redis-py's default is 5 s): on a loaded machine the resumed job can take
        # longer than that to send its first SET, and a timed-out MONITOR would stop counting
        client = redis.Redis(port=port, socket_timeout=None)
        with client.monitor() as m:
            ready.set()
            for event in m.listen():
                command = event["command"]
                if stop_word in command:
                    return
                if event.get("db") == db and command.startswith("SET "):
                    counts[command.split(" ", 2)[1]] += 1

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(0.2)
    return thread, counts


def _cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "utpm"), "profile", "batch", *args]


def test_killed_job_resumes_writing_each_user_at_most_once_more(
    reference: dict[bytes, tuple[bytes, int]],
    population: Path,
    bundles: dict[str, Path],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    url = flush(redis_server, RESUME_DB)
    out = tmp_path / "job"
    args = [str(population), "--bundle", str(bundles["a"]), "--redis-url", url, "--out", str(out)]
    args += ["--k", "20", "--ttl-s", str(TTL_S), "--chunk-users", "10", "--as-of", str(AS_OF_MS), "--workers", "1"]
    thread, sets = _set_counter(redis_server.port, RESUME_DB, "stop-counting")
    out.mkdir()
    (out / "summary.json").write_text('{"written": 609}')  # an earlier job's
    proc = subprocess.Popen(_cli(*args), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = out / "checkpoint.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if checkpoint.is_file() and len(checkpoint.read_bytes().splitlines()) >= 1 + 5:  # header + 5 chunks
            break
        assert proc.poll() is None, f"the job ended before it could be killed: {proc.communicate()}"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes, mid-job
    proc.wait(10)
    killed_at = len(checkpoint.read_bytes().splitlines()) - 1
    assert 5 <= killed_at < 61, killed_at
    assert not (out / "summary.json").exists()  # before, the earlier job's summary stood as if this one's
    first_run = Counter(sets)

    done = subprocess.run(_cli(*args, "--resume"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    redis.Redis(port=redis_server.port).echo("stop-counting")
    thread.join(10)
    resumed = Counter({k: n - first_run[k] for k, n in sets.items() if n > first_run[k]})

    assert contents(redis_server, RESUME_DB) == reference  # the same records and expiry as one uninterrupted run
    assert max(sets.values()) <= 2  # every user written at most once more
    assert sum(resumed.values()) == 610 - 10 * killed_at  # the resumed run wrote exactly the unfinished chunks
    assert len([k for k, n in sets.items() if n == 2]) <= 10 * 3  # at most the chunks in flight were redone
    assert f"skipped {10 * killed_at:,} rows already done" in done.stdout


def test_bad_rows_go_to_the_rejects_file_and_never_into_redis(
    population: Path, bundles: dict[str, Path], redis_server: RedisServer, tmp_path: Path
) -> None:
    good = [json.loads(line) for line in population.read_text().splitlines()[:3]]
    lines = [json.dumps(r) for r in good[:2]]
    lines += [
        "{not json",
        json.dumps({"features": {"clicked_tags": ["sci-fi"]}}),  # no user_id
        json.dumps({"user_id": "u-list", "features": ["sci-fi"]}),
        json.dumps({"user_id": "u-field", "features": {"no_such_field": ["x"]}}),
        json.dumps({"user_id": "u-type", "features": {"clicked_tags": [1, 2]}}),
        json.dumps({"user_id": "u-long", "features": {"clicked_tags": ["x"] * 10_001}}),
        json.dumps({"user_id": "x" * 300, "features": {}}),
        "",  # a blank line is not a row
        json.dumps(good[2]),
        json.dumps({**good[2], "features": {}}),  # the same user again: the later line wins
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    url = flush(redis_server, REJECTS_DB)
    summary = run_batch(job(path, bundles["a"], url, tmp_path / "job"), workers=1)
    rejects = [json.loads(line) for line in (tmp_path / "job" / "rejects.jsonl").read_text().splitlines()]
    by_row = {r["row"]: r for r in rejects}
    assert summary.written == 3 and summary.rejected == len(rejects) == 8, rejects
    assert "invalid JSON" in by_row[3]["reason"]
    assert "no user_id" in by_row[4]["reason"]
    assert "must be an object" in by_row[5]["reason"]
    assert "unknown field(s) ['no_such_field']" in by_row[6]["reason"]
    # what the list says, without the other union members' errors (service/schema_errors.py)
    # (a list is read up to its first bad value)
    assert by_row[7]["reason"] == "features.clicked_tags.0: Input should be a valid string"
    assert "at most 10000 are accepted" in by_row[8]["reason"]
    assert "user_id" in by_row[9]["reason"] and "256" in by_row[9]["reason"]
    assert by_row[11]["reason"] == "duplicate of row 12"
    keys = {k.decode().rsplit(":", 1)[1] for k in contents(redis_server, REJECTS_DB)}
    assert keys == {good[0]["user_id"], good[1]["user_id"], good[2]["user_id"]}
    record = redis.Redis(port=redis_server.port, db=REJECTS_DB).get(
        next(k for k in contents(redis_server, REJECTS_DB) if k.endswith(good[2]["user_id"].encode()))
    )
    assert record is not None and b'"unknown":{}' in record  # the later (empty) line of the user won
    # that empty request is counted and named in the summary: before, nothing said a profile came from no value
    assert summary.unknown_only == 1 and "warning: 1 profiles (33%) came from rows with no value" in summary.line()


def test_parquet_rows_make_the_same_records_as_jsonl(
    reference: dict[bytes, tuple[bytes, int]],
    population: Path,
    bundles: dict[str, Path],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in population.read_text().splitlines()[:120]]
    fields = sorted({f for r in rows for f in r["features"]})
    counted = pa.map_(pa.string(), pa.int64())  # a field's {value: count}: a Parquet map
    columns = {f: [r["features"].get(f) for r in rows] for f in fields}
    table = pa.table(
        {"user_id": [r["user_id"] for r in rows]}
        | {f: pa.array(v, counted if any(isinstance(x, dict) for x in v) else None) for f, v in columns.items()}
    )
    assert any(pa.types.is_map(t) for t in table.schema.types)
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=70)
    url = flush(redis_server, REJECTS_DB)
    source = open_source(tmp_path / "rows.parquet", "auto", tmp_path)
    summary = run_batch(job(population, bundles["a"], url, tmp_path / "job", source=source), workers=1)
    assert (summary.written, summary.rejected, summary.chunks) == (120, 0, 12)  # row groups of 70 + 50, chunks of 10
    got = contents(redis_server, REJECTS_DB)
    assert got == {k: reference[k] for k in got} and len(got) == 120
    # an integer user_id column (MovieLens ids are numbers): the same records; before, every row was rejected
    table = table.set_column(0, "user_id", pa.array([int(r["user_id"]) for r in rows], pa.int64()))
    pq.write_table(table, tmp_path / "int-ids.parquet", row_group_size=70)
    url = flush(redis_server, REJECTS_DB)
    source = open_source(tmp_path / "int-ids.parquet", "auto", tmp_path)
    summary = run_batch(job(population, bundles["a"], url, tmp_path / "job-int", source=source), workers=1)
    assert (summary.written, summary.rejected) == (120, 0)
    assert contents(redis_server, REJECTS_DB) == got


def test_cli_reports_bad_input_in_one_line(population: Path, bundles: dict[str, Path], tmp_path: Path) -> None:
    dead = "redis://127.0.0.1:1/0"
    for args, needle in (
        ([str(tmp_path / "nope.jsonl"), "--bundle", str(bundles["a"]), "--redis-url", dead], "no such file"),
        ([str(population), "--bundle", str(tmp_path), "--redis-url", dead], "not a bundle"),
        ([str(population), "--bundle", str(bundles["a"]), "--redis-url", dead], "cannot reach Redis at"),
        ([str(population), "--bundle", str(bundles["a"]), "--redis-url", dead, "--engine", "spark"], "--engine"),
        ([str(population), "--bundle", str(bundles["a"]), "--redis-url", "localhost:6379"], "--redis-url: the Redis"),
        (
            [str(population), "--bundle", str(bundles["a"]), "--redis-url", "redis+sentinel://:s3cret@h:26379"],
            "--redis-url: a Sentinel URL is",
        ),
        # before: a traceback (OSError from the time), a year-3,170,900 expiry, a silently local job
        ([str(population), "--bundle", str(bundles["a"]), "--redis-url", dead, "--as-of", "9" * 20], "--as-of must"),
        ([str(population), "--bundle", str(bundles["a"]), "--redis-url", dead, "--ttl-s", "9" * 14], "--ttl-s must"),
        ([str(population), "--bundle", str(bundles["a"]), "--redis-url", dead, "--ray-address", "h:6379"], "needs"),
    ):
        r = subprocess.run(_cli(*args, "--out", str(tmp_path / "job")), capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "s3cret" not in r.stderr


def test_resume_refuses_another_jobs_checkpoint(
    population: Path, bundles: dict[str, Path], redis_server: RedisServer, tmp_path: Path
) -> None:
    url = flush(redis_server, REJECTS_DB)
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(population.read_text().splitlines()[:20]) + "\n")
    run_batch(job(small, bundles["a"], url, tmp_path / "job"), workers=1)
    with pytest.raises(BatchError, match=r"belongs to another job.*k: was 20, now 30"):
        run_batch(job(small, bundles["a"], url, tmp_path / "job", k=30), workers=1, resume=True)
    again = run_batch(job(small, bundles["a"], url, tmp_path / "job"), workers=1, resume=True)
    assert (again.written, again.skipped) == (0, 20)  # nothing left to do
    said: list[str] = []  # before: a --resume that found no checkpoint (a mistyped --out) redid the job unnoticed
    fresh = run_batch(job(small, bundles["a"], url, tmp_path / "typo"), workers=1, resume=True, say=said.append)
    assert fresh.skipped == 0
    assert said == [f"--resume: no checkpoint in {tmp_path / 'typo'}; starting from the first row"]


def test_a_data_set_is_staged_from_all_of_each_users_events(tmp_path: Path) -> None:
    """The staging used the training protocol's cut: each user's most recent fifth of events (the
    protocol's labels) was left out of the profile, and a user with one event was left out, as was a
    user the users table describes who has no event yet. It sent no counts, which the default model
    learnt from, nor each tag's distinct items where a user clicked an item twice."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "items.csv").write_text("item_id,tags,categories\ni1,old,\ni2,older,\ni3,newest,\n")
    events = ["u0,i2,1,1", "u0,i1,2,1", "u0,i2,3,1", "u0,i1,4,1", "u0,i3,5,1", "u1,i1,1,1"]
    (data / "events.csv").write_text("user_id,item_id,timestamp,label\n" + "\n".join(events) + "\n")
    (data / "users.csv").write_text("user_id,age\nu1,30s\nu2,20s\nu3,\n")  # u3: nothing to profile from
    staged = open_source(data, "dataset", tmp_path / "stage").path
    rows = {r["user_id"]: r["features"] for r in map(json.loads, staged.read_text().splitlines())}
    assert rows == {
        "u0": {
            "clicked_tags": {"older": {"count": 2, "items": 1}, "old": {"count": 2, "items": 1}, "newest": 1},
            "clicked_items": ["i2", "i1", "i3"],
        },
        "u1": {"clicked_tags": {"old": 1}, "age": ["30s"], "clicked_items": ["i1"]},
        "u2": {"age": ["20s"]},
    }
    # a staging written by the protocol's cut, or before requests carried counts and items, is not reused
    meta = json.loads((tmp_path / "stage" / "features.json").read_text())
    before_shapes = {k: v for k, v in meta.items() if k != "request_shape"}  # as stagings before it was recorded
    for stale in ({**meta, "events": None}, before_shapes, {**meta, "request_shape": meta["request_shape"] - 1}):
        (tmp_path / "stage" / "features.json").write_text(json.dumps(stale))
        staged.write_text('{"user_id": "u0", "features": {"clicked_tags": ["older", "old"]}}\n')
        assert "newest" in open_source(data, "dataset", tmp_path / "stage").path.read_text()
