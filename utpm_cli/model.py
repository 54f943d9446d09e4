"""Commands for the default model (utpm-hist) and the Amazon adapter; `main.py` registers them."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from utpm.data.errors import DataError
from utpm_cli.errors import dataset_folder, fail, load_data, output_file

if TYPE_CHECKING:
    from utpm.data.loading import Dataset

# Without a terminal, `utpm train` writes a line as each stage starts, and within an epoch at most
# one line this often (seconds).
STAGE_LINE_S = 60.0


def memory_now() -> str:
    """The process's resident memory now and its peak so far, for a stage line: where a large run's
    memory goes, read from its log (Linux; elsewhere the peak, or nothing)."""
    from pipeline.build import peak_rss_gib

    try:
        with open("/proc/self/statm") as f:
            now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        now = None
    peak = peak_rss_gib()
    if peak is None:
        return "memory unknown"
    if now is None:
        return f"peak {peak:.1f} GiB"
    # the peak is read after `now` and rounded to 0.01 GiB: never print it below what `now` prints
    return f"{now:.1f} GiB, peak {max(peak, now):.1f}"


def prepare_amazon_cmd(
    src: Annotated[
        Path, typer.Argument(help="Directory with Beauty.txt and Beauty_item2attributes.json (S3-Rec layout).")
    ],
    out: Annotated[Path, typer.Argument(callback=dataset_folder, help="Output directory (items.csv, events.csv).")],
) -> None:
    """Convert the Amazon Beauty sequences (all positives, attributes as tags) to the generic format."""
    from utpm.data.amazon import prepare_amazon

    try:
        report = prepare_amazon(src, out)
    except DataError as e:
        fail(str(e))
    load_data(out)  # proves the output is valid in the generic format, and notes what it noticed
    typer.echo(report.summary())


def train_default(
    data: Path,
    out: Path,
    *,
    loss: str,
    preset: str,
    seed: int,
    test_share: float,
    note_n: bool,
    epochs: int,
    batch_size: int,
    lr: float,
    dim: int,
    max_values: int,
    counts: bool,
    history: bool,
    tie: bool,
    cross: str,
    short_requests: float,
    sparse_updates: bool,
) -> None:
    """`utpm train` for the default model: the history model with its parts switchable for ablations."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from utpm.data.protocol import split_protocol
    from utpm.models.history import HistoryOptions
    from utpm.training.history import (
        DEFAULT_HISTORY_LOSS,
        FULL_SOFTMAX_MAX_TAGS,
        HistoryTrainConfig,
        history_preset,
        train_history,
    )

    try:
        config = HistoryTrainConfig(
            loss=loss or DEFAULT_HISTORY_LOSS,
            preset=history_preset(preset, dim=dim, max_values=max_values),
            seed=seed,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            history=HistoryOptions(counts=counts, history=history, tie=tie, cross=cross),  # type: ignore[arg-type]
            short_requests=short_requests,
            sparse_updates=sparse_updates,
        )
    except ValueError as e:
        fail(str(e))
    dataset = load_data(data)
    if note_n:
        note_tags_beyond_n(dataset, preset)
    split = split_protocol(dataset, seed=seed, test_fraction=test_share)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(f"train {config.model}/{config.loss}", total=epochs, info="")

        plain = not bar.console.is_terminal  # a log file gets lines instead of a live bar
        started, last_line = time.monotonic(), -math.inf

        def line(text: str) -> None:
            nonlocal last_line
            last_line = time.monotonic()
            typer.echo(f"  [{last_line - started:6.0f}s, {memory_now()}] {text}", err=True)

        def stage(text: str, step: bool) -> None:
            bar.update(task, info=text)
            # every stage as it starts; steps within one (an epoch) at most a line a minute
            if plain and (not step or time.monotonic() - last_line >= STAGE_LINE_S):
                line(text)

        def progress(epoch: int, total: int, point: dict[str, float]) -> None:
            info = f"loss {point['loss']:.4f} val {point['val_score']:.4f}"
            bar.update(task, completed=epoch, info=info)
            if plain:
                line(f"epoch {epoch}/{total}: {info}")

        try:
            result = train_history(split, config, out=out, progress=progress, stage=stage)
        except ValueError as e:
            fail(str(e))
    test = held_out_figures(result.test, test_share)
    start = result.start or {}
    # the prior the residual was trained on: chosen on the validation users, so worth a word
    prior = f"{start.get('kind', 'blend')} start, popularity by {start.get('popularity', 'events')}"
    if result.best_epoch != result.best_epoch_ungated:  # the gate kept the start: say what it set aside
        prior += f"; epoch {result.best_epoch_ungated}'s gain within {config.keep_epoch_z:g} standard errors"
    loss = config.loss
    if result.loss and result.loss != loss:  # an all-tag loss over a large vocabulary
        loss += f" as {result.loss} (above {FULL_SOFTMAX_MAX_TAGS:,} tags)"
    typer.echo(
        f"trained {config.model}/{loss} (best epoch {result.best_epoch}, {prior}, "
        f"{result.samples_per_s:,.0f} users/s); test {test}; wrote {out}"
    )


def held_out_figures(test: dict[int, float], test_share: float) -> str:
    """The test users' Prec@K for a training's last line; a split too small to hold one says so."""
    if test_share == 0:
        return "none (--test-share 0: no user held out)"
    return ", ".join(f"Prec@{k} {v:.4f}" for k, v in test.items()) or "none (no test users with a label)"


# Above this share of clicked items with more than N tags, a training says that N cuts them.
TAGS_BEYOND_N_NOTE = 0.25


def note_tags_beyond_n(data: Dataset, preset_name: str) -> None:
    """Say on stderr when many clicked items have more tags than the preset's N: the protocol counts
    only an item's first N tags (trained on and scored), so the default preset, taken without looking
    at the data, silently drops the rest (the synthetic data has up to 5, the movielens preset keeps
    3). For a --preset left at its default: one given was chosen."""
    from utpm.data.protocol import clicked_items_tag_counts
    from utpm.models.presets import PRESETS

    preset = PRESETS[preset_name]
    counts = clicked_items_tag_counts(data)
    share = float((counts > preset.N).mean()) if len(counts) else 0.0
    if share > TAGS_BEYOND_N_NOTE:
        larger = sorted({(p.N, name) for name, p in PRESETS.items() if p.N > preset.N})
        other = "; ".join(f"--preset {name}: N = {n}" for n, name in larger) or "no preset has a larger N"
        typer.echo(
            f"note: {share:.0%} of the clicked items have more than N = {preset.N} tags (up to {int(counts.max())}); "
            f"the default --preset {preset.name} counts only each item's first {preset.N} as its tags, trained on "
            f"and scored; give --preset to choose ({other})",
            err=True,
        )


def note_other_data(what: str, differences: list[str]) -> None:
    """Say on stderr that the test users measured may not be held out (a note: other users are legitimate)."""
    typer.echo(
        f"note: {what} ({', '.join(differences)}): its test users may include users the model was "
        "trained on, and Prec@K is then not a held-out figure",
        err=True,
    )


def evaluate_run(run: Path, data: Path, ks: list[int]) -> dict[str, Any]:
    """Prec@K and personalisation of a run directory (any model) on its test users."""
    from utpm.data.protocol import split_protocol
    from utpm.evaluation.metrics import precision_at_k
    from utpm.evaluation.personalisation import personalisation
    from utpm.models.history import HISTORY_MODEL
    from utpm.training.run import load_run

    try:
        loaded = load_run(run)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    protocol = loaded.config["protocol"]
    if protocol.get("test_users") == 0:  # the figures would be over users it was trained on
        fail(f"{run} was trained with no user held out (--test-share 0): there is no test user to evaluate on")
    split = split_protocol(
        load_data(data), seed=int(protocol["seed"]), test_fraction=float(protocol.get("test_fraction", 0.2))
    )
    differences = split.differences(loaded.config["protocol"])
    if differences:
        note_other_data(f"{data} is not the data {run} was trained on", differences)
    rows = split.indices(test=True)
    n = loaded.preset.N
    top = max(10, *ks)
    clicked = [split.clicked_tags(int(i), n) for i in rows]
    if any(clicked) and not any(t in loaded.tags for c in clicked for t in c):
        fail(
            f"none of the test users' label tags in {data} is in the tag vocabulary of {run}: "
            "is it the data the run was trained on?"
        )
    if loaded.config["model"] == HISTORY_MODEL:
        from model_export.bundle import load_history_encoder
        from utpm.models.history import HistoryOptions
        from utpm.training.history import UserSequences, rank_users

        # with the per-tag arrays training saved (history_encoder.npz), as export and serving read them
        henc = load_history_encoder(Path(run), loaded.encoder, loaded.tags, dict(loaded.config["history"]))
        options = HistoryOptions.from_dict(dict(loaded.config["history"]))
        seqs = UserSequences(split, n, all_item_tags=options.all_item_tags)
        ranked = rank_users(loaded.model, seqs, henc, rows, top)
    else:
        from utpm.training.samples import encode_rows
        from utpm.training.trainer import rank_tags

        ids, masks = encode_rows(split, loaded.encoder, rows)
        ranked = rank_tags(loaded.model, ids, masks, loaded.tags, top)
    results = {k: precision_at_k(ranked, clicked, k) for k in ks}
    return {
        "run": str(run),
        "model": loaded.config["model"],
        "loss": loaded.config["loss"],
        "test_users": len(rows),
        "same_data_as_training": not differences,
        "skipped_users_empty_C": results[ks[0]].skipped_users,
        **{f"prec@{k}": r.value for k, r in results.items()},
        "personalisation": personalisation(ranked, 10),
    }


def _finite_float(text: str) -> float | None:
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def parse_variants(specs: list[str]) -> list[tuple[tuple[str, Any], ...]]:
    """'counts=false,loss=joint,lr=3e-3' -> (('counts', False), ('loss', 'joint'), ('lr', 0.003)); one
    variant per --variant (an integer, a finite float, true/false, else the text)."""
    out = []
    for spec in specs:
        pairs: list[tuple[str, Any]] = []
        for part in spec.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                fail(f"--variant {spec!r}: expected key=value[,key=value]")
            k, v = (x.strip() for x in part.split("=", 1))
            value: Any = v
            if v.lower() in ("true", "false"):
                value = v.lower() == "true"
            elif v.lstrip("-").isdigit():
                value = int(v)
            elif (x := _finite_float(v)) is not None:
                value = x  # lr=3e-3, keep_epoch_z=1.645
            pairs.append((k, value))
        out.append(tuple(pairs))
    return out


def bench_start_cmd(
    data: Annotated[Path, typer.Argument(help="A data set in the generic format (truth.csv adds the oracle).")],
    preset: Annotated[str, typer.Option(help="Preset of the data (N, K), as in `utpm experiment`.")] = "movielens",
    folds: Annotated[int, typer.Option(min=2, help="Folds of the k-fold split, as in `utpm experiment --folds`.")] = 5,
    fold: Annotated[
        list[int] | None, typer.Option(min=0, help="Fold seeds to check (repeatable; default all).")
    ] = None,
    item_neighbours: Annotated[
        int, typer.Option(min=1, help="Neighbours each item keeps for the half-items candidate.")
    ] = 200,
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_file, help="Write the rows and the mean here.")
    ] = None,
) -> None:
    """The default model's starting points and two candidate features (item-level credit, item neighbours) on each
    fold's validation users, no test user read (the rows: docs/results.md, "A candidate the model does not have")."""
    import json

    from utpm.evaluation.experiment import _load_truth
    from utpm.evaluation.start_check import CANDIDATES, KS, candidate_gap, check_start, summarise, train_gaps

    try:
        seeds = fold if fold else list(range(folds))
        rows = check_start(data, preset, folds, seeds, _load_truth(data), item_neighbours)
    except (DataError, ValueError) as e:
        fail(str(e))
    mean = summarise(rows)
    for r in rows:
        line = "  ".join(f"{n} {'/'.join(f'{r[n][k]:.3f}' for k in KS)}" for n in mean)
        typer.echo(f"fold {r['fold']} ({r['val_users']} validation users): {line}")
        typer.echo(f"  tuned: w_b {r['tuned']['w_bias']}, {r['tuned']['weights']}")
        chosen = r["train_count"]
        typer.echo(f"  popularity by {r['popularity']} (validation), by {chosen['popularity']} (training users)")
    total = sum(r["val_users"] for r in rows)
    typer.echo(f"mean over {total} validation users (Prec@1/2/3):")
    for n, v in mean.items():
        typer.echo(f"  {n:12s} {' / '.join(f'{v[k]:.3f}' for k in KS)}  (mean {np.mean(list(v.values())):.4f})")
    gaps = {cand: candidate_gap(rows, cand) for cand in CANDIDATES}
    for cand, gap in gaps.items():
        line = " / ".join(f"{g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]" for g in gap.values())
        typer.echo(f"half-{cand} - half-blend, paired per user (95% interval): {line}")
    chosen_on_training = train_gaps(rows)
    for name, g in chosen_on_training.items():
        line = " / ".join(f"{x['mean']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]" for x in g.values())
        typer.echo(f"{name} - half-blend, paired per user (95% interval): {line}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        per_user = (*(f"{cand}_gaps" for cand in CANDIDATES), "train_gaps")  # per user: not an artifact
        kept = [{k: v for k, v in r.items() if k not in per_user} for r in rows]
        doc = {
            "data": str(data),
            "folds": folds,
            "rows": kept,
            "mean": mean,
            **{f"{cand}_gap": gap for cand, gap in gaps.items()},
            "train_gap": chosen_on_training,
        }
        json_out.write_text(json.dumps(doc, indent=2))
    wrote = f"; wrote {json_out}" if json_out is not None else ""
    typer.echo(f"bench start: {len(rows)} folds of {data}, {total} validation users{wrote}")


def bench_gate_cmd(
    data: Annotated[Path, typer.Argument(help="A data set in the generic format.")],
    preset: Annotated[str, typer.Option(help="Preset of the data (N, K), as in `utpm experiment`.")] = "movielens",
    folds: Annotated[int, typer.Option(min=2, help="Folds of the k-fold split, as in `utpm experiment --folds`.")] = 5,
    repeats: Annotated[int, typer.Option(min=1, help="Repetitions of the k-fold split, as in `utpm experiment`.")] = 1,
    epochs: Annotated[int, typer.Option(min=1, help="Epoch cap, as in `utpm experiment --epochs`.")] = 40,
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_file, help="Write the rows and the summary here.")
    ] = None,
) -> None:
    """Whether a trained epoch should need a significant gain to replace the start (`keep_epoch_z`): each fold
    trained as `utpm experiment` trains it, the epoch chosen on half its validation users and scored on the other
    half; no test user read (docs/results.md, "When a trained epoch replaces the start")."""
    import json

    from utpm.evaluation.gate_check import check_gate, summarise_gate

    def shown(row: dict) -> None:
        chosen = ", ".join(f"{n} {'/'.join(map(str, e))}" for n, e in row["chosen"].items())
        typer.echo(
            f"fold {row['fold']} ({row['val_users']} validation users, {row['start']} start): "
            f"{row['epochs_run']} epochs, best {row['best_epoch']}; per half: {chosen}"
        )

    try:
        rows = check_gate(data, preset, folds, list(range(folds * repeats)), epochs, progress=shown)
    except (DataError, ValueError) as e:
        fail(str(e))
    summary = summarise_gate(rows)
    typer.echo(f"held out, mean Prec@1-3 per user over {summary['halves']} halves:")
    for n, v in summary["held_out_mean"].items():
        kept = summary["halves_keeping_start"].get(n)
        typer.echo(f"  {n:8s} {v:.4f}" + (f"  (start kept in {kept} halves)" if kept is not None else ""))
    for n, g in summary["gap_to_ungated"].items():
        typer.echo(
            f"{n} - ungated, paired per user (95% interval): {g['mean']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]"
        )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        kept_rows = [{k: v for k, v in r.items() if k not in ("held_out", "gaps")} for r in rows]  # per user: not kept
        json_out.write_text(
            json.dumps(
                {
                    "data": str(data),
                    "folds": folds,
                    "repeats": repeats,
                    "epochs": epochs,
                    "rows": kept_rows,
                    "summary": summary,
                },
                indent=2,
            )
        )
    wrote = f"; wrote {json_out}" if json_out is not None else ""
    typer.echo(f"bench gate: {len(rows)} folds of {data}{wrote}")
