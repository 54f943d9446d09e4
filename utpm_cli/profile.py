"""`utpm profile batch` and `utpm profile bench`: profiles of a whole population, into Redis (docs/batch.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from utpm_cli.errors import fail, output_file, output_folder, refuse_unread

profile_app = typer.Typer(
    help="Profiles for a whole population, computed in bulk into Redis (docs/batch.md).", no_args_is_help=True
)


def _parse_as_of(value: str) -> int:
    """Epoch milliseconds from an ISO 8601 time (UTC when no zone is given) or a number of ms."""
    from datetime import UTC, datetime

    if value.isdigit():
        return int(value)
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--as-of {value!r}: expected an ISO 8601 time such as 2026-11-30T00:00:00Z, or epoch milliseconds")
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


@profile_app.command("batch")
def profile_batch_cmd(
    source: Annotated[
        Path, typer.Argument(help="JSONL or Parquet of {user_id, features} rows, or a data set in the generic format.")
    ],
    bundle: Annotated[Path, typer.Option(help="Bundle directory (exported and indexed), as the service loads it.")],
    redis_url: Annotated[
        str, typer.Option(help="redis://, rediss://, redis+cluster:// or redis+sentinel:// (where the service reads).")
    ],
    out: Annotated[
        Path, typer.Option(callback=output_folder, help="Job directory: checkpoint.jsonl, rejects.jsonl, summary.json.")
    ],
    fmt: Annotated[str, typer.Option("--format", help="auto, jsonl, parquet or dataset.")] = "auto",
    engine: Annotated[str, typer.Option(help="local (processes on this machine) or ray.")] = "local",
    workers: Annotated[int, typer.Option(help="Worker processes / Ray actors, each loading the bundle once.")] = 2,
    ray_address: Annotated[
        str | None, typer.Option(help="Join this Ray cluster (default: start a small local Ray for the job).")
    ] = None,
    k: Annotated[int, typer.Option(help="Tags stored per profile (GET answers up to this many).")] = 100,
    ttl_s: Annotated[int, typer.Option(help="Seconds the profiles stay readable after --as-of.")] = 2 * 24 * 3600,
    chunk_users: Annotated[int, typer.Option(help="Rows per chunk (unit of work, checkpoint and pipeline).")] = 1000,
    as_of: Annotated[
        str | None,
        typer.Option(help="computed_at of every record (ISO 8601 or epoch ms; default: the job's start)."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Skip the chunks the checkpoint in --out records as written.")] = False,
) -> None:
    """Compute every row's profile with the service's engine and write it where GET /profile reads it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from batch import BatchJob, run_batch
    from batch.job import BatchError
    from batch.sources import SourceError, open_source

    if fmt not in ("auto", "jsonl", "parquet", "dataset"):
        fail(f"--format must be auto, jsonl, parquet or dataset, not {fmt!r}")
    if engine not in ("local", "ray"):
        fail(f"--engine must be local or ray, not {engine!r}")
    try:
        src = open_source(source, fmt, out, say=lambda m: typer.echo(m, err=True))  # type: ignore[arg-type]
        job = BatchJob(
            source=src,
            bundle=bundle,
            redis_url=redis_url,
            out=out,
            k=k,
            ttl_ms=ttl_s * 1000,
            chunk_users=chunk_users,
            computed_at_ms=_parse_as_of(as_of) if as_of else 0,
        )
        columns = (
            TextColumn("profiles"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task("profiles", total=None, rate="")
            start: list[float] = []

            def progress(done: int, total: int) -> None:
                if not start:
                    start.extend([time.perf_counter(), done])
                elapsed = time.perf_counter() - start[0]
                rate = f"{(done - start[1]) / elapsed:,.0f} users/s" if elapsed > 0 and done > start[1] else ""
                bar.update(task, completed=done, total=total, rate=rate)

            summary = run_batch(
                job,
                engine="ray" if engine == "ray" else "local",
                workers=workers,
                ray_address=ray_address,
                resume=resume,
                progress=progress,
                say=lambda m: typer.echo(m, err=True),
            )
    except (BatchError, SourceError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail(f"interrupted; the chunks written so far are checkpointed in {out}: rerun with --resume")
    typer.echo(summary.line())


@profile_app.command("bench")
def profile_bench_cmd(
    ctx: typer.Context,
    source: Annotated[
        Path | None, typer.Argument(help="A data set in the generic format, or a JSONL of {user_id, features}.")
    ] = None,
    bundle: Annotated[
        Path | None, typer.Option(help="Bundle to profile with (e.g. artifacts/bench/tags1000000/bundle).")
    ] = None,
    out: Annotated[
        Path, typer.Option(callback=output_folder, help="Work directory (staged features, job directories).")
    ] = Path("artifacts/bench/batch"),
    users: Annotated[int, typer.Option(min=1, help="Users per run (the first N rows).")] = 100_000,
    runs: Annotated[str, typer.Option(help="Comma-separated ENGINE:WORKERS runs.")] = "local:1,local:2,ray:2",
    k: Annotated[int, typer.Option(help="Tags per profile (memory is measured at this k).")] = 50,
    redis_url: Annotated[
        str | None, typer.Option(help="A Redis to measure in (FLUSHDB between runs!); default: a private redis-server.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_file, help="Write the result JSON here.")
    ] = None,
    sizing_from: Annotated[
        Path | None, typer.Option(help="Measure nothing: re-derive the 100M sizing of this earlier result JSON.")
    ] = None,
) -> None:
    """users/s per engine, Redis memory per profile, and the sizing for 100M users derived from them."""
    from batch.bench import bench_batch, sizing_of

    if sizing_from is not None:
        if source is not None:
            fail("SOURCE: --sizing-from measures nothing, so it reads no data; give one of the two")
        refuse_unread(ctx, ("bundle", "out", "users", "runs", "k", "redis_url"), "--sizing-from measures nothing")
        try:
            earlier = json.loads(sizing_from.read_text())
        except (OSError, ValueError) as e:
            fail(f"{sizing_from}: not a result of utpm profile bench ({e})")
        try:
            earlier["sizing_100m"] = sizing_of(earlier)
        except (KeyError, TypeError, ValueError) as e:
            fail(f"{sizing_from}: not a result of utpm profile bench ({type(e).__name__}: {e})")
        if earlier["sizing_100m"] is None:  # else `null` was printed and written as the sizing
            fail(f"{sizing_from}: the sizing needs its local:1 and local:2 runs and the Redis bytes per profile")
        typer.echo(json.dumps(earlier["sizing_100m"], indent=2))
        if json_out is not None:
            json_out.write_text(json.dumps(earlier, indent=2) + "\n")
        return
    if source is None or bundle is None:
        fail("SOURCE and --bundle are required (or --sizing-from JSON)")
    from batch.job import BatchError
    from batch.sources import SourceError

    try:
        plan = [(e, int(n)) for e, n in (r.split(":") for r in runs.split(",") if r.strip())]
    except ValueError:
        fail(f"--runs {runs!r}: expected ENGINE:WORKERS,... such as local:1,local:2,ray:2")
    redis = None
    if redis_url is None:
        from loadtest.procs import Redis

        out.mkdir(parents=True, exist_ok=True)
        try:
            redis = Redis(workdir=out.resolve()).start()
        except RuntimeError as e:
            fail(str(e))
        redis_url = redis.url
    try:
        result = bench_batch(bundle, source, redis_url, out, users, plan, k, say=lambda m: typer.echo(m, err=True))
    except (BatchError, SourceError) as e:
        fail(str(e))
    finally:
        if redis is not None:
            redis.stop()
    text = json.dumps(result, indent=2)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text + "\n")
    typer.echo(text)
