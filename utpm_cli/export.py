"""Typer commands for export and the model benchmark (registered in `utpm_cli/main.py`).

Domain errors become one `error: ...` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from model_export.errors import BundleError, ExportError
from utpm_cli.errors import fail, output_folder, refuse_unread


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export_cmd(
    run: Annotated[Path, typer.Argument(help="A training run directory (config.json, model.pt, encoder/, tags.json).")],
    out: Annotated[Path, typer.Option("--out", callback=output_folder, help="The bundle directory to write.")],
    data: Annotated[
        Path | None,
        typer.Option(help="Data set whose test users check parity (default: the run's own data, if still there)."),
    ] = None,
    synthetic_inputs: Annotated[
        bool, typer.Option("--synthetic-inputs", help="Check parity on synthetic users, not the run's test users.")
    ] = False,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Also write model.fp16.onnx, with its top-50 agreement.")
    ] = False,
    int8: Annotated[
        bool, typer.Option("--int8", help="Also write model.int8.onnx (dynamic quantisation), with its agreement.")
    ] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset (17 up to what the installed torch writes).")] = 17,
    parity_users: Annotated[
        int, typer.Option(help="At most this many users in the parity check (the run's test users, else its first).")
    ] = 1024,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
    linear_scorer: Annotated[
        bool,
        typer.Option(
            help="utpm-hist: a model that is exactly its linear start (zero tag table, zero history MLP) is "
            "served without the tower; --no-linear-scorer serves it through the ONNX graph (A/B benchmarks)."
        ),
    ] = True,
) -> None:
    """Export a run as a versioned bundle: ONNX user tower, tag embeddings, vocabularies, manifest.

    Fails, writing nothing, unless ONNX Runtime matches PyTorch on the run's test users (its first users when it held
    none out; max |du| <= 1e-4, same top-50: 99%).
    """
    from model_export.onnx_export import export_bundle  # torch: a missing extra is named by utpm_cli.main.main
    from utpm.data.errors import DataError

    if data is not None and synthetic_inputs:  # else --data was read for nothing
        fail("--data and --synthetic-inputs: the parity check takes one source of users, not both")
    variants = [v for v, wanted in (("fp16", fp16), ("int8", int8)) if wanted]
    t0 = time.perf_counter()
    try:
        manifest = export_bundle(
            run,
            out,
            data=data,
            synthetic_inputs=synthetic_inputs,
            opset=opset,
            variants=variants,
            parity_users=parity_users,
            overwrite=overwrite,
            linear_scorer=linear_scorer,
            progress=lambda msg: typer.echo(f"  {msg}", err=True),
        )
    except (ExportError, BundleError, DataError) as e:
        fail(str(e))
    parity = manifest.parity
    extra = "".join(f"; {v} top-50 agreement {info['top50_agreement']:.1%}" for v, info in manifest.variants.items())
    typer.echo(
        f"wrote bundle {manifest.bundle_version} ({len(manifest.files)} files, {_dir_size(out) / 1e6:.1f} MB) "
        f"to {out} in {time.perf_counter() - t0:.1f}s: max |du| {parity['max_abs_diff_u']:.2g}, "
        f"same top-50 for {parity['top_k_agreement']:.1%} of users{extra}"
    )


def _print_table(report: dict[str, Any]) -> None:
    typer.echo(f"{report['model']} @ {report['preset']}, {report['threads']} threads, {report['providers'][0]}")
    typer.echo(f"{'batch':>6} {'ORT p50':>10} {'ORT p99':>10} {'torch p50':>10} {'torch p99':>10} {'x p50':>7}")
    for r in report["results"]:
        o, t = r["onnxruntime"], r["pytorch"]
        typer.echo(
            f"{r['batch']:>6} {o['p50_ms']:>8.3f}ms {o['p99_ms']:>8.3f}ms {t['p50_ms']:>8.3f}ms "
            f"{t['p99_ms']:>8.3f}ms {r['speedup_p50']:>6.2f}x"
        )


def bench_model_cmd(
    ctx: typer.Context,
    bundle: Annotated[Path | None, typer.Argument(help="A bundle (omit with --preset).")] = None,
    run: Annotated[
        Path | None, typer.Option(help="The run the bundle came from (default: the one its manifest names).")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Benchmark an untrained model at this preset (e.g. industrial) instead of a bundle."),
    ] = None,
    batch: Annotated[list[int] | None, typer.Option(help="Batch size; repeat for several (default 1 and 64).")] = None,
    iters: Annotated[int, typer.Option(help="Timed calls per engine and batch size.")] = 300,
    threads: Annotated[int | None, typer.Option(help="Threads for both engines (default: all CPUs).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Latency of ONNX Runtime against PyTorch eager on the same inputs (p50, p99), measured interleaved."""
    from model_export.bench import DEFAULT_BATCHES, bench_bundle, bench_preset

    if (bundle is None) == (preset is None):
        fail("give either a BUNDLE or --preset NAME")
    if preset is not None:
        refuse_unread(ctx, ("run",), "the run of a BUNDLE; --preset benchmarks an untrained model")
    if iters < 1:
        fail(f"--iters must be >= 1, got {iters}")
    batches = tuple(batch) if batch else DEFAULT_BATCHES
    if min(batches) < 1:
        fail(f"batch sizes must be >= 1, got {list(batches)}")
    t0 = time.perf_counter()
    try:
        if bundle is not None:
            report = bench_bundle(bundle, run_dir=run, batches=batches, iters=iters, threads=threads)
        else:
            assert preset is not None
            report = bench_preset(preset, batches=batches, iters=iters, threads=threads)
    except (BundleError, ExportError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_table(report)
    what = bundle if bundle is not None else f"an untrained {preset} model"
    speed = ", ".join(f"batch {r['batch']}: {r['speedup_p50']:.2f}x" for r in report["results"])
    typer.echo(f"benchmarked {what} in {time.perf_counter() - t0:.1f}s; ONNX Runtime vs PyTorch p50 {speed}", err=True)
