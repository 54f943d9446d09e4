"""The `utpm` command line. Each command is a thin wrapper over a documented library function."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from index.errors import TagIndexError
from model_export.errors import BundleError, ExportError
from utpm.data.errors import DataError
from utpm_cli.ab import bench_ab_cmd, simulate_cmd
from utpm_cli.bench import (
    bench_commits_cmd,
    bench_loop_cmd,
    bench_payloads_cmd,
    bench_reliability_cmd,
    bench_report_cmd,
    bench_roofline_cmd,
    bench_serve_cmd,
    bench_speed_cmd,
    bench_tune_cmd,
)
from utpm_cli.errors import (
    dataset_folder,
    fail,
    given_options,
    load_data,
    missing_extra,
    output_file,
    output_folder,
    positive_ints,
    refuse_unread,
    require_bundle,
    require_listenable,
    run_folder,
    say_error,
)
from utpm_cli.export import bench_model_cmd, export_cmd
from utpm_cli.index import bench_index_cmd, index_build_cmd
from utpm_cli.model import (
    bench_gate_cmd,
    bench_start_cmd,
    evaluate_run,
    held_out_figures,
    note_tags_beyond_n,
    parse_variants,
    prepare_amazon_cmd,
    train_default,
)
from utpm_cli.personal import bench_personal_cmd
from utpm_cli.profile import profile_app

# What `--help` lists, section by section, in the order data flows (one table: the order and the sections).
SECTIONS = {
    "Try it": ("demo",),
    "Pipeline: event log -> data set -> run -> bundle -> index -> service": (
        "prepare",
        "inspect",
        "train",
        "evaluate",
        "experiment",
        "export",
        "index",
        "serve",
    ),
    "Operate": ("profile", "simulate"),
    "Measure": ("bench",),
}
BENCH_SECTIONS = {
    "Model quality (validation users; served lists)": ("start", "gate", "personal"),
    "Speed": ("serve", "roofline", "model", "index", "loop", "tune", "ab", "payloads", "speed", "commits"),
    "Reliability": ("reliability",),
    "Docs from the benchmarks' JSON": ("report",),
}


def sectioned(sections: Mapping[str, Sequence[str]]) -> type[TyperGroup]:
    """A command group whose help lists its commands in `sections`' order, under their section's title
    (Typer would list them as registered, sub-groups last)."""
    order = [name for names in sections.values() for name in names]
    section_of = {name: title for title, names in sections.items() for name in names}

    class Sectioned(TyperGroup):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for name, command in self.commands.items():
                if name in section_of:
                    command.rich_help_panel = section_of[name]  # type: ignore[attr-defined]  # read by Typer's help

        def list_commands(self, ctx: Any) -> list[str]:  # Any: Typer 0.29 types it with its vendored click
            return sorted(super().list_commands(ctx), key=lambda n: order.index(n) if n in order else len(order))

    return Sectioned


app = typer.Typer(
    help="UTPM user-tag profiles: prepare data, train, evaluate, export, index, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=sectioned(SECTIONS),
    rich_markup_mode="markdown",
)
prepare_app = typer.Typer(help="Write a data set in the generic format (docs/data-format.md).", no_args_is_help=True)
app.add_typer(prepare_app, name="prepare")
index_app = typer.Typer(help="Build the FAISS tag index of a bundle.", no_args_is_help=True)
app.add_typer(index_app, name="index")
bench_app = typer.Typer(
    help="Benchmarks that print JSON (speed targets live here, not in tests).",
    no_args_is_help=True,
    cls=sectioned(BENCH_SECTIONS),
)
app.add_typer(bench_app, name="bench")
app.add_typer(profile_app, name="profile")


app.command("export")(export_cmd)
app.command("simulate")(simulate_cmd)
bench_app.command("ab")(bench_ab_cmd)
bench_app.command("model")(bench_model_cmd)
index_app.command("build")(index_build_cmd)
bench_app.command("index")(bench_index_cmd)
bench_app.command("serve")(bench_serve_cmd)
bench_app.command("tune")(bench_tune_cmd)
bench_app.command("roofline")(bench_roofline_cmd)
bench_app.command("speed")(bench_speed_cmd)
bench_app.command("loop")(bench_loop_cmd)
bench_app.command("payloads")(bench_payloads_cmd)
bench_app.command("reliability")(bench_reliability_cmd)
bench_app.command("commits")(bench_commits_cmd)
bench_app.command("report")(bench_report_cmd)
prepare_app.command("amazon-beauty")(prepare_amazon_cmd)
bench_app.command("personal")(bench_personal_cmd)
bench_app.command("start")(bench_start_cmd)
bench_app.command("gate")(bench_gate_cmd)


@app.callback()
def global_options(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )


@prepare_app.command("movielens")
def prepare_movielens_cmd(
    src: Annotated[Path, typer.Argument(help="Directory with ratings.csv, tags.csv, movies.csv.")],
    out: Annotated[Path, typer.Argument(callback=dataset_folder, help="Output directory (items.csv, events.csv).")],
    all_positive: Annotated[
        bool,
        typer.Option(
            "--all-positive/--paper-labels",
            help="Every rating is a click (label 1): a log without label-0 rows, like an implicit-feedback log.",
        ),
    ] = False,
) -> None:
    """Convert MovieLens (ml-latest-small / ml-20m / ml-25m layout) with the paper's rating thresholds."""
    from utpm.data.movielens import prepare_movielens

    try:
        report = prepare_movielens(src, out, all_positive=all_positive)
    except DataError as e:
        fail(str(e))
    load_data(out)  # proves the output is valid in the generic format, and notes what it noticed
    typer.echo(report.summary())


@prepare_app.command("synthetic")
def prepare_synthetic_cmd(
    out: Annotated[
        Path, typer.Argument(callback=dataset_folder, help="Output directory (Parquet files, truth.csv, meta.json).")
    ],
    tags: Annotated[int, typer.Option(help="Number of tags.")] = 1_000_000,
    users: Annotated[int, typer.Option(help="Number of users.")] = 100_000,
    events_per_user: Annotated[int, typer.Option(help="Mean impressions per user.")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same files.")] = 0,
) -> None:
    """Generate WeChat-like data with planted interests (docs/synthetic.md)."""
    from rich.progress import Progress

    from utpm.data.synthetic import generate_synthetic

    with Progress(transient=True) as bar:
        tasks: dict[str, object] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)  # type: ignore[arg-type]

        try:
            report = generate_synthetic(
                out, n_tags=tags, n_users=users, events_per_user=events_per_user, seed=seed, progress=progress
            )
        except ValueError as e:
            fail(str(e))
    rows = ", ".join(f"{v:,} {k}" for k, v in report.rows.items())
    typer.echo(f"wrote {rows} to {out} in {report.seconds:.1f}s (peak RSS {report.peak_rss_mb:.0f} MB)")


# One user with this share of all clicks among 20 or more users is worth a note in `inspect`.
HEAVY_USER_SHARE = 0.05


@app.command("inspect")
def inspect_cmd(data: Annotated[Path, typer.Argument(help="A data set in the generic format.")]) -> None:
    """Validate a data set and print its row counts, warnings and the protocol's user split."""
    import json

    import numpy as np

    from utpm.data.loading import load_dataset
    from utpm.data.protocol import clicked_items_tag_counts, clicks_per_user, split_protocol

    t0 = time.perf_counter()
    try:
        ds = load_dataset(data)
    except DataError as e:
        fail(str(e))
    split = split_protocol(ds)
    info = {"rows": ds.report.rows, "warnings": ds.report.warnings, "protocol": split.protocol_info()}
    counts = clicked_items_tag_counts(ds)
    if len(counts):  # what to choose a preset's N by: an item's tags past its first N are not counted
        quantiles = np.percentile(counts, [50, 90]).tolist()
        info["tags_per_clicked_item"] = {"median": quantiles[0], "p90": quantiles[1], "max": int(counts.max())}
    clicks = clicks_per_user(ds)
    if len(clicks):  # a crawler or a shared account: by clicks, its tags would be the popular ones
        top, share = str(clicks.index[0]), float(clicks.iloc[0] / clicks.sum())
        quantiles = [round(q, 1) for q in np.percentile(clicks.to_numpy(), [50, 99]).tolist()]
        info["clicks_per_user"] = {
            "median": quantiles[0],
            "p99": quantiles[1],
            "max": int(clicks.iloc[0]),
            "heaviest_user": top,
            "heaviest_share": round(share, 4),
        }
        if len(clicks) >= 20 and share >= HEAVY_USER_SHARE:
            typer.echo(
                f"note: user {top!r} has {share:.0%} of the label-1 events ({int(clicks.iloc[0]):,}; median "
                f"{quantiles[0]:g}): a tag's popularity counted by events would be mostly theirs (the blend and "
                "the default model choose on validation users whether to count users instead, docs/model.md)",
                err=True,
            )
    typer.echo(json.dumps(info, indent=2))
    typer.echo(f"validated {data} in {time.perf_counter() - t0:.1f}s")


def _load_split(data: Path, seed: int):
    from utpm.data.loading import load_dataset
    from utpm.data.protocol import split_protocol

    try:
        return split_protocol(load_dataset(data), seed=seed)
    except DataError as e:
        fail(str(e))


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="A data set in the generic format.")],
    out: Annotated[
        Path,
        typer.Option("--out", callback=run_folder, help="Run directory to write (a previous run there is replaced)."),
    ],
    model: Annotated[
        str, typer.Option(help="Model name: utpm-hist (the default model), or the paper's utpm, youtube, af2-cf, ...")
    ] = "utpm-hist",
    loss: Annotated[
        str,
        typer.Option(
            help="utpm-hist: bce (default), softmax, sampled, sampled_bce, joint; the paper's: joint, separate."
        ),
    ] = "",
    preset: Annotated[str, typer.Option(help="Preset: movielens, synthetic (N = 5), industrial, tiny.")] = "movielens",
    seed: Annotated[int, typer.Option(help="Seed of the user split, the initial weights and the sampling.")] = 0,
    test_share: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.5,
            help="Share of users held out as test users (the protocol's 0.2). 0: every user but the validation "
            "users is trained on, for the bundle to ship once the figures are taken; no test figures.",
        ),
    ] = 0.2,
    epochs: Annotated[int, typer.Option(help="Maximum epochs (early stopping on validation Prec@K).")] = 40,
    batch_size: Annotated[int, typer.Option(help="Samples per batch.")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate (default 1e-3 for utpm-hist, 3e-3 otherwise).")] = 0.0,
    dim: Annotated[int, typer.Option(help="utpm-hist: E = U.")] = 64,
    max_values: Annotated[int, typer.Option(help="utpm-hist: H, values kept per field (most frequent).")] = 100,
    counts: Annotated[bool, typer.Option(help="utpm-hist: log1p(count) in the attention logits.")] = True,
    history: Annotated[bool, typer.Option(help="utpm-hist: the history path g(phi).")] = True,
    tie: Annotated[bool, typer.Option(help="utpm-hist: output table tied to the tag input embedding.")] = False,
    cross: Annotated[
        str, typer.Option(help="utpm-hist: the tower's cross layer: none, cf (the paper's), afm, nfm, dcn, autoint.")
    ] = "none",
    short_requests: Annotated[
        float, typer.Option(help="utpm-hist: share of training examples sent as a short request (1-20 recent values).")
    ] = 0.0,
    sparse_updates: Annotated[
        bool,
        typer.Option(
            "--sparse-updates/--dense-updates",
            help="utpm-hist, sampled loss (above 50,000 tags): Adam updates only the looked-up rows of tables "
            "over 50,000 rows; --dense-updates: every row at every step.",
        ),
    ] = True,
) -> None:
    """Train a model under the paper's protocol; writes a run directory (docs in utpm/training/run.py)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if model in ("utpm-hist", "default"):
        return train_default(
            data, out, loss=loss, preset=preset, seed=seed, test_share=test_share,
            note_n=not given_options(ctx, ("preset",)), epochs=epochs,
            batch_size=batch_size, lr=lr or 1e-3,
            dim=dim, max_values=max_values, counts=counts, history=history, tie=tie, cross=cross,
            short_requests=short_requests, sparse_updates=sparse_updates,
        )  # fmt: skip
    refuse_unread(
        ctx,
        ("dim", "max_values", "counts", "history", "tie", "cross", "short_requests", "sparse_updates"),
        f"options of utpm-hist (the default model), not of {model}, whose sizes come from --preset ({preset})",
    )
    lr = lr or 3e-3

    from utpm.models.presets import get_preset
    from utpm.models.registry import default_loss
    from utpm.training.trainer import TrainConfig, train

    try:
        config = TrainConfig(
            model=model,
            loss=loss or default_loss(model),
            preset=get_preset(preset),
            seed=seed,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
        )
    except ValueError as e:
        fail(str(e))
    from utpm.data.protocol import split_protocol

    dataset = load_data(data)
    if not given_options(ctx, ("preset",)):
        note_tags_beyond_n(dataset, preset)
    split = split_protocol(dataset, seed=seed, test_fraction=test_share)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(f"train {model}/{config.loss}", total=epochs, info="")

        def progress(epoch: int, total: int, point: dict[str, float]) -> None:
            ks = "/".join(str(k) for k in config.early_stop_ks)
            info = f"loss {point['loss']:.4f} val mean Prec@{ks} {point['val_score']:.4f}"
            bar.update(task, completed=epoch, info=info)

        try:
            result = train(split, config, data=dataset, out=out, progress=progress)
        except ValueError as e:
            fail(str(e))
    test = held_out_figures(result.test, test_share)
    typer.echo(
        f"trained {model}/{config.loss} (best epoch {result.best_epoch}, {result.samples_per_s:,.0f} samples/s); "
        f"test {test}; wrote {out}"
    )


@app.command("evaluate")
def evaluate_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory from `utpm train`.")],
    data: Annotated[Path, typer.Argument(help="The data set it was trained on.")],
    k: Annotated[str, typer.Option("--k", help="Comma-separated K values.")] = "1,2,3",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Prec@K (the paper's Eq. 5) and personalisation of the top-10 lists of a trained run on its test users."""
    import json

    ks = list(positive_ints(k, "--k"))
    result = evaluate_run(run, data, ks)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        p = result["personalisation"]
        typer.echo(
            " ".join(f"Prec@{kk} {result[f'prec@{kk}']:.4f}" for kk in ks)
            + f" ({result['test_users']} test users); top-10 mean pairwise Jaccard {p['jaccard']:.3f}, "
            f"{p['distinct_tags']:.0f} distinct tags, #1 tag shared by {p['top1_share']:.0%}"
        )


@app.command("experiment")
def experiment_cmd(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="A data set in the generic format.")],
    models: Annotated[
        str,
        typer.Option(help="Comma-separated model names; 'paper' = the paper's ladder + utpm; 'default' = utpm-hist."),
    ] = "paper",
    loss: Annotated[
        str,
        typer.Option(
            help="joint, separate, both, default (each model's own), or bce/softmax/sampled/sampled_bce (utpm-hist)."
        ),
    ] = "both",
    seeds: Annotated[int, typer.Option(min=1, help="Number of seeds (0..N-1).")] = 5,
    folds: Annotated[
        int, typer.Option(min=0, help="k-fold over users instead of seeded 80/20 draws (0: off; else >= 2).")
    ] = 0,
    repeats: Annotated[int, typer.Option(min=1, help="Repetitions of the k-fold (each a fresh user permutation).")] = 1,
    variant: Annotated[
        list[str] | None,
        typer.Option(help="Extra utpm-hist run, e.g. 'counts=false' or 'loss=joint,dim=16' (repeatable)."),
    ] = None,
    served_requests: Annotated[
        bool,
        typer.Option(
            help="Also rank each utpm-hist run's test users as the service does, from the request built from the "
            "log, and report it as 'utpm-hist (served)' with its paired gap to the run's own evaluation."
        ),
    ] = False,
    k: Annotated[str, typer.Option("--k", help="Comma-separated K values.")] = "1,2,3",
    preset: Annotated[str, typer.Option(help="Preset name.")] = "movielens",
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs per run.")] = 40,
    hparams: Annotated[
        bool, typer.Option(help="Also run the hyper-parameter study (E, heads, C, activation).")
    ] = False,
    hparam_seeds: Annotated[
        int, typer.Option(min=0, help="Seeds for the hyper-parameter study (default: --seeds).")
    ] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_file, help="Write the results JSON here.")
    ] = None,
    report: Annotated[Path | None, typer.Option(callback=output_folder, help="Write report.md, plots here.")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Worker processes (0: up to 2).")] = 0,
) -> None:
    """The paper's protocol for many models, losses and seeds: JSON + a report like Tables 2-4."""
    import json
    import shlex

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from utpm.evaluation.experiment import DEFAULT_MODEL, PAPER_MODELS, ExperimentError, run_experiment
    from utpm.evaluation.report import attention_example, plot_hparams, plot_models, render
    from utpm.models.registry import MODEL_NAMES

    names = [*PAPER_MODELS] if models == "paper" else [m.strip() for m in models.split(",") if m.strip()]
    names = [DEFAULT_MODEL if m == "default" else m for m in names]
    bad = [m for m in names if m not in (*MODEL_NAMES, DEFAULT_MODEL)]
    if bad:
        fail(f"unknown model(s) {bad}; valid: default ({DEFAULT_MODEL}), {', '.join(MODEL_NAMES)}")
    losses = {"both": ["separate", "joint"]}.get(loss, [loss])
    if any(lo not in ("joint", "separate", "default", "bce", "softmax", "sampled", "sampled_bce") for lo in losses):
        fail(f"--loss must be joint, separate, both, default, bce, softmax, sampled or sampled_bce, not {loss!r}")
    ks = list(positive_ints(k, "--k"))
    if folds == 1:
        fail("--folds must be 0 (seeded 80/20 draws) or at least 2, got 1")
    # each of these was ignored: the runs were not the ones asked for
    if folds == 0 and repeats != 1:
        fail("--repeats repeats the k-fold: it needs --folds (seeded draws take --seeds)")
    if folds > 0:
        refuse_unread(
            ctx, ("seeds",), "with --folds the runs are folds x --repeats, not seeded draws; give one of the two"
        )
    if hparam_seeds and not hparams:
        fail("--hparam-seeds: seeds of the hyper-parameter study, which needs --hparams")
    from utpm.evaluation.experiment import experiment_dataset
    from utpm.models.presets import PRESETS

    dataset = load_data(data, experiment_dataset)  # its notes before the bar; the experiment reads it from there
    if preset in PRESETS and not given_options(ctx, ("preset",)):  # an unknown one is refused later
        note_tags_beyond_n(dataset, preset)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("experiment", total=None)

        def progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)
            if not bar.console.is_terminal:  # a log file gets one line per update instead of a live bar
                typer.echo(f"  [{done}/{total} jobs] {label}", err=True)

        error: str | None = None
        try:
            result = run_experiment(
                data, names, losses, seeds, ks, preset, hparams, hparam_seeds or None, epochs, workers or None,
                progress, folds=folds, repeats=repeats, variants=parse_variants(variant or []),
                served=served_requests,
            )  # fmt: skip
        except (DataError, ExperimentError) as e:
            error = str(e)
    if error is not None:  # after the bar has closed, so that the error is the last line
        fail(error)
    payload = {
        "dataset": result.dataset,
        "protocol": result.protocol,
        "results": result.intervals(ks),
        "personalisation": result.personalisation(),
        # per-user scores feed the intervals above; they are left out of the file
        "runs": [{k: v for k, v in r.items() if k != "per_user"} for r in result.runs],
    }
    if any("recovery@1" in r for r in result.runs):
        payload["recovery"] = result.intervals(ks, "recovery")
    wrote = []
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2))
        wrote.append(str(json_out))
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        plot_models(result, ks, report / "prec_at_k.png")
        hp = None
        if hparams:
            plot_hparams(result, ks, report / "hparams.png")
            hp = "hparams.png"
        attention = attention_example(str(data), preset) if "utpm" in names or "af2-cf" in names else None
        command = "utpm experiment " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        (report / "report.md").write_text(render(result, ks, "prec_at_k.png", attention, hp, command))
        wrote.append(str(report / "report.md"))
    if not wrote:
        typer.echo(json.dumps(payload["results"], indent=2))
    typer.echo(f"experiment: {len(result.runs)} runs on {data}; wrote {', '.join(wrote) or 'stdout'}")


@app.command("serve")
def serve_cmd(
    bundle: Annotated[
        Path, typer.Argument(envvar="UTPM_BUNDLE", help="Bundle directory (exported, indexed); default: UTPM_BUNDLE.")
    ],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port.")] = 8000,
    redis_url: Annotated[
        str | None, typer.Option(help="Redis URL (overrides UTPM_REDIS_URL); default: the embedded in-process cache.")
    ] = None,
) -> None:
    """Serve profiles over HTTP (settings: UTPM_* environment variables, see service/config.py)."""
    import uvicorn
    from pydantic import ValidationError

    from service.config import Settings, settings_error
    from service.main import create_app

    require_bundle(bundle)
    require_listenable(host, port)
    overrides: dict[str, object] = {"bundle": bundle}
    if redis_url:
        overrides["redis_url"] = redis_url
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        fail(settings_error(e))
    if settings.ab_challenger_bundle is not None:
        require_bundle(settings.ab_challenger_bundle)
    typer.echo(f"starting {bundle} on http://{host}:{port} (docs at /docs)")  # the service logs when it serves
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False)


REPO_DATA = Path(__file__).resolve().parent.parent / "data" / "movielens-small"


# Two users with little in common: the default model's profiles must tell them apart (issue 12).
DEMO_USERS: dict[str, dict[str, object]] = {
    "family-animation": {
        "clicked_tags": {"disney": 4, "animation": 3, "pixar": 2, "family": 1},
        "clicked_categories": ["Animation", "Children", "Comedy"],
        "clicked_items": ["1", "2355", "3114", "4886", "6377"],  # MovieLens ids: Toy Story ... Finding Nemo
    },
    "dark-sci-fi": {
        "clicked_tags": ["sci-fi", "atmospheric", "dark comedy", "sci-fi", "dystopia"],
        "clicked_categories": ["Sci-Fi", "Thriller"],
        "clicked_items": ["541", "1199", "32", "1206", "2571"],  # Blade Runner, Brazil, 12 Monkeys, ...
    },
}


def demo_profiles(bundle: Path, k: int = 5) -> dict[str, list[tuple[str, float]]]:
    """Each `DEMO_USERS` user's top-k tags, computed by the service's engine in process."""
    from service.config import Settings
    from service.engine import ProfileEngine
    from utpm.features.history import ITEM_FIELD

    engine = ProfileEngine.load(bundle, Settings.model_validate({"bundle": str(bundle), "device": "cpu"}))
    out = {}
    for name, features in DEMO_USERS.items():
        feats = {f: v for f, v in features.items() if f in engine.field_names or f == ITEM_FIELD}
        p = engine.compute([engine.encode(feats, k, False)])[0]  # type: ignore[arg-type]
        out[name] = [(engine.bundle.tags.token(int(t)), float(s)) for t, s in zip(p.tag_ids, p.scores, strict=True)]
    return out


@app.command("demo")
def demo_cmd(
    out: Annotated[
        Path, typer.Option(callback=output_folder, help="Where the demo writes its data, run and bundle.")
    ] = Path("artifacts/demo"),
    src: Annotated[Path, typer.Option(help="MovieLens directory (the vendored ml-latest-small).")] = REPO_DATA,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to serve on.")] = 8000,
    serve: Annotated[bool, typer.Option(help="Serve the bundle at the end (Ctrl-C stops).")] = True,
    model: Annotated[str, typer.Option(help="utpm-hist (the default model) or the paper's utpm.")] = "utpm-hist",
) -> None:
    """The whole pipeline on the vendored MovieLens data: prepare, train, export, index, serve."""
    import json

    from pipeline import DataSource, build_bundle
    from utpm.models.history import HISTORY_MODEL
    from utpm.models.presets import get_preset
    from utpm.training.trainer import TrainConfig

    if serve:
        require_listenable("127.0.0.1", port)  # before the minute of building, not after it
    if model in (HISTORY_MODEL, "default"):
        from utpm.training.history import HistoryTrainConfig

        config: TrainConfig = HistoryTrainConfig(seed=0)
    else:
        try:
            config = TrainConfig(model=model, loss="joint", preset=get_preset("movielens"), seed=0)
        except ValueError as e:
            fail(str(e))
    try:
        built = build_bundle(out, DataSource("movielens", src), config, progress=lambda m: typer.echo(f"  {m}"))
    except (DataError, ValueError) as e:
        fail(str(e))
    train, export, index = built.stages["train"], built.stages["export"], built.stages["index"]
    test = ", ".join(f"{k} {v:.3f}" for k, v in train["test"].items())
    typer.echo(f"[1/4] prepare: {built.stages['prepare']['summary']}")
    typer.echo(f"[2/4] train: {config.model}, best epoch {train['best_epoch']}; test {test}; run in {built.run}")
    two_stage = index.get("two_stage") or {}
    searched = f"two-stage recall@50 {two_stage['recall@50']:.3f}" if "recall@50" in two_stage else ""
    typer.echo(
        f"[3/4] export + index: bundle {export['bundle_version']} in {built.bundle} (parity: same top-"
        f"{export['parity']['top_k']} for {export['parity']['top_k_agreement']:.1%} of users); {index['factory']}, "
        f"recall@50 {index['recall'].get('recall@50', 1.0):.3f} {searched}"
    )
    bundle_dir = built.bundle
    profiles = demo_profiles(bundle_dir)
    tops = []
    for name, tags in profiles.items():
        typer.echo(f"  {name} {json.dumps(DEMO_USERS[name])}\n    -> " + ", ".join(f"{t} ({s:.2f})" for t, s in tags))
        tops.append({t for t, _ in tags})
    shared = len(tops[0] & tops[1]) / max(1, len(tops[0] | tops[1]))
    typer.echo(f"  the two profiles share {shared:.0%} of their tags (Jaccard)")
    if not serve:
        typer.echo(f"[4/4] serve: skipped (--no-serve); `utpm serve {bundle_dir}` serves the bundle")
        typer.echo(f"wrote the demo's data, run and bundle {export['bundle_version']} under {out}")
        return
    example = {"user_id": "demo-user", "k": 5, "explain": False, "features": DEMO_USERS["dark-sci-fi"]}
    curl = (
        f"curl -s -X POST http://127.0.0.1:{port}/profile -H 'content-type: application/json' "
        f"-d '{json.dumps(example)}'"
    )
    typer.echo(
        f"[4/4] serve: with the embedded cache; once it serves, try:\n  {curl}\n"
        f"  curl -s http://127.0.0.1:{port}/profile/demo-user"
    )
    serve_cmd(bundle_dir, host="127.0.0.1", port=port, redis_url=None)


def main() -> None:
    """The `utpm` command. A serving install lacks the extras of training, batch and load tests: a
    command that needs one of their modules says which extra to install, in one line. A path the
    system refuses (an output folder under a file, no permission, a full disk) and the packages'
    own domain errors, wherever a command left them unhandled, end the same way: one line, status 2."""
    try:
        app()
    except ModuleNotFoundError as e:
        message = missing_extra(e)
        if message is None:
            raise
        _exit_with(message)
    except OSError as e:
        if e.filename is None:  # not about a path (a socket, a subprocess): a defect to see in full
            raise
        _exit_with(f"{e.filename}: {e.strerror or e}")
    except (DataError, BundleError, ExportError, TagIndexError) as e:
        _exit_with(str(e))


def _exit_with(message: str) -> NoReturn:
    say_error(message)  # as `fail`, which raises typer.Exit: only the Typer app turns that into a status
    raise SystemExit(2) from None


if __name__ == "__main__":
    main()
