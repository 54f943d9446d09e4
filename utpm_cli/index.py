"""Typer commands for the tag index (registered in `utpm_cli/main.py`).

Domain errors become one `error: ...` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from index.errors import TagIndexError
from model_export.errors import BundleError
from utpm_cli.errors import fail, refuse_unread


def index_build_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory written by `utpm export`.")],
    kind: Annotated[
        str, typer.Option(help="auto | flat | ivf | hnsw (auto: exact up to 100k tags or on a GPU).")
    ] = "auto",
    target_recall: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="recall@50 the ANN search parameter is tuned to reach.")
    ] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of the k-means sample and the structured queries.")] = 0,
) -> None:
    """Build the bundle's FAISS inner-product tag index (index.faiss + index_infos.json with recall vs exact)."""
    from index.build import build_index
    from index.factory import KINDS

    if kind not in KINDS:
        fail(f"unknown --kind {kind!r}; valid: {', '.join(KINDS)}")
    try:
        infos = build_index(
            bundle, kind, target_recall=target_recall, seed=seed, progress=lambda m: typer.echo(f"  {m}", err=True)
        )
    except (TagIndexError, BundleError, ValueError) as e:
        fail(str(e))
    params = ", ".join(f"{k}={v}" for k, v in infos.params.items()) or "exact"
    recalls = ", ".join(f"{k} {v:.3f}" for k, v in infos.recall.items())
    warn = "" if infos.target_met in (None, True) else f" (target recall {infos.target_recall} NOT reached)"
    if infos.two_stage:  # a default-model bundle: what the served search (ANN + history tags) loses
        two = ", ".join(f"{k} {v:.3f}" for k, v in infos.two_stage.items() if k.startswith("recall@"))
        are = infos.two_stage.get("users_are") or "the export's parity users"
        typer.echo(f"two-stage search vs exact final scores on {infos.two_stage['users']} users ({are}): {two}")
    typer.echo(  # last: what was written where
        f"wrote {infos.factory} ({params}; {infos.ntotal:,} tags, {infos.memory_bytes / 1e6:.1f} MB, built in "
        f"{infos.build_seconds:.1f}s; {recalls}){warn} to {bundle}/index.faiss and {bundle}/index_infos.json"
    )


def bench_index_cmd(
    ctx: typer.Context,
    tags: Annotated[int, typer.Option(help="Number of structured tag vectors.")] = 1_000_000,
    dim: Annotated[int, typer.Option(help="Vector dimension.")] = 128,
    queries: Annotated[int, typer.Option(help="Evaluation queries (plus 500 tuning queries).")] = 2000,
    kind: Annotated[str, typer.Option(help="ANN index: auto (what `index build` picks; IVF) | ivf | hnsw.")] = "auto",
    target_recall: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="recall@50 the ANN index is tuned to reach.")
    ] = 0.95,
    peers: Annotated[bool, typer.Option(help="Also measure hnswlib at equal-or-better recall.")] = True,
    threads: Annotated[int | None, typer.Option(min=1, help="Threads for every engine (default: all CPUs).")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="20k tags, 200 queries: checks the pipeline, not speed.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the data and queries.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Exact vs ANN (faiss) vs hnswlib over structured synthetic tags: q/s, recall@10/@50, build time, size."""
    from index.bench import bench_index

    if quick:
        refuse_unread(ctx, ("tags", "queries"), "--quick sets them (20k tags, 200 queries)")
        tags, queries = 20_000, 200
    t0 = time.perf_counter()
    try:
        report = bench_index(
            tags,
            dim,
            queries,
            kind=kind,
            target_recall=target_recall,
            tuning_queries=min(500, max(100, queries // 4)) if quick else 500,
            peers=peers,
            threads=threads,
            seed=seed,
            progress=lambda m: typer.echo(f"  {m}", err=True),
        )
    except (TagIndexError, ValueError) as e:
        fail(str(e))
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        for key in (
            "tags",
            "dim",
            "exact_qps",
            "ann_factory",
            "ann_params",
            "ann_qps",
            "speedup",
            "recall@10",
            "recall@50",
            "build_s",
            "index_mb",
        ):
            typer.echo(f"{key:>12}: {report.get(key)}")
        if "peers" in report:
            h = report["peers"]["hnswlib"]
            typer.echo(f"{'hnswlib':>12}: {h['qps']} q/s at recall@50 {h['recall@50']} (ef {h['params']['ef']})")
    typer.echo(
        f"benchmarked {tags:,} x {dim} tags in {time.perf_counter() - t0:.0f}s: {report['ann_factory']} "
        f"{report['speedup']}x exact at recall@50 {report.get('recall@50')}",
        err=True,
    )
