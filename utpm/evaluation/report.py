"""Markdown report of an experiment, laid out like the paper's Tables 2, 3 and 4 and Figures 3, 4."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utpm.evaluation.experiment import EVALUATED, HPARAM_GRID, SERVED_MODEL, ExperimentResult, paired_gap, verdict
from utpm.evaluation.yardsticks import ORACLES, PLANTED, PLANTED_SEEN, REFERENCES, YARDSTICKS

TABLES: dict[str, tuple[str, ...]] = {
    "Table 2: attention fusion": ("youtube", "af1-unshared", "af1", "af2"),
    "Table 3: cross features": ("af2", "af2-cf", "af2-afm", "af2-nfm", "af2-dcn", "af2-autoint"),
}
# The paper's orderings, each a (worse, better) pair that it reports as an improvement.
PAPER_CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("Table 2", "youtube", "af1-unshared"),
    ("Table 2", "af1-unshared", "af1"),
    ("Table 2", "af1", "af2"),
    ("Table 3", "af2", "af2-cf"),
    ("Table 3", "af2-afm", "af2-cf"),
    ("Table 3", "af2-nfm", "af2-cf"),
    ("Table 3", "af2-dcn", "af2-cf"),
    ("Table 3", "af2-autoint", "af2-cf"),
)


def _cells(result: ExperimentResult, model: str, loss: str, ks: Sequence[int], metric: str) -> list[str]:
    rows = {(r["model"], r["loss"], r["k"]): r for r in result.summary(ks, metric) if "variant" not in r}
    out = []
    for k in ks:
        r = rows.get((model, loss, k))
        out.append(f"{r['mean']:.4f} ± {r['std']:.4f}" if r else "–")
    return out


def _table(result: ExperimentResult, entries: Sequence[tuple[str, str]], ks: Sequence[int], metric: str) -> list[str]:
    head = "| model | loss | " + " | ".join(f"{metric.capitalize()}@{k}" for k in ks) + " |"
    lines = [head, "|" + "---|" * (len(ks) + 2)]
    for model, loss in entries:
        cells = _cells(result, model, loss, ks, metric)
        if any(c != "–" for c in cells):
            lines.append(f"| {model} | {loss} | " + " | ".join(cells) + " |")
    return lines


def _losses(result: ExperimentResult) -> list[str]:
    return sorted({r["loss"] for r in result.runs if r["loss"] != "-" and "variant" not in r})


def render(
    result: ExperimentResult,
    ks: Sequence[int],
    plot: str | None,
    attention: list[dict[str, Any]] | None,
    hparam_plot: str | None,
    command: str,
) -> str:
    metric_names = ["prec"] + (["recovery"] if any("recovery@1" in r for r in result.runs) else [])
    p = result.protocol
    lines = [
        f"# Experiment on `{result.dataset}`",
        "",
        f"Generated {dt.date.today().isoformat()} by `{command}`.",
        "",
        f"Protocol: {p['users']} users ({p['train_users']} train / {p['test_users']} test at seed 0, "
        f"{p['dropped_users']} left out), history {p['history_fraction']:.0%} / labels {1 - p['history_fraction']:.0%} "
        f"by time, seeds {p['seeds']}, preset `{p['preset']['name']}` (N = {p['preset']['N']} tags per item). "
        "Prec@K is the paper's Eq. 5 on test users with a non-empty C; mean ± std over seeds "
        "(each seed redraws the user split and the initial weights).",
        "",
    ]
    if p.get("folds"):
        lines += [
            f"Users are split by {p['folds']}-fold cross-validation, repeated {p.get('repeats', 1)} times (a seed is "
            "one fold of one repetition; every user is a test user once per repetition). Models and yardsticks "
            "see the same training rows; 20% of the training users are validation users (early stopping, the "
            "blend's a, c and what its popularity counts).",
            "",
        ]
    counts = [r["blend_popularity"] for r in result.runs if r["model"] == "blend" and "blend_popularity" in r]
    if counts:
        lines += [
            f"The blend's popularity (and the default model's b_t) counted users in {counts.count('users')} of "
            f"{len(counts)} runs, label items in the others, as each run's validation users chose.",
            "",
        ]
    gated = [r for r in result.runs if "best_epoch_ungated" in r]
    if gated:
        trained = [r for r in gated if r["best_epoch_ungated"] > 0]
        kept = [r for r in gated if r["best_epoch"] > 0]
        lines += [
            f"The default model kept a trained epoch in {len(kept)} of {len(gated)} runs; the early stopping had "
            f"chosen one in {len(trained)}, and the epoch gate (a paired gain over the start of at least "
            "`keep_epoch_z` standard errors on the validation users) kept the start in the others.",
            "",
        ]
    losses = _losses(result)
    for metric in metric_names:
        if metric == "recovery":
            lines += ["## Profile recovery against planted interests (truth.csv)", ""]
        all_entries = [
            (m, lo)
            for m in dict.fromkeys(r["model"] for r in result.runs if "variant" not in r)
            for lo in (["-"] if m in REFERENCES else sorted({r["loss"] for r in result.runs if r["model"] == m}))
        ]
        lines += [f"### All models and yardsticks ({metric})", "", *_table(result, all_entries, ks, metric), ""]
        best = _best(result, ks, metric)
        if best:
            lines += [best, ""]
        present = {r["model"] for r in result.runs}
        if metric == "prec" and present & {m for ms in TABLES.values() for m in ms}:
            for title, models in TABLES.items():
                for loss in losses:
                    lines += [
                        f"### {title} ({loss} loss)",
                        "",
                        *_table(result, [(m, loss) for m in models], ks, metric),
                        "",
                    ]
            if {"joint", "separate"} <= set(losses):
                lines += [
                    "### Table 4: joint loss",
                    "",
                    *_table(result, [("af2-cf", "separate"), ("af2-cf", "joint")], ks, metric),
                    "",
                ]
        if present & {m for ms in TABLES.values() for m in ms}:
            lines += _claims(result, ks, metric, losses)
        lines += _gaps(result, ks, metric)
    lines += _validation(result, ks)
    lines += _personal(result)
    if plot:
        lines += [f"![Prec@K by model]({plot})", ""]
    if attention:
        lines += _attention(attention)
    if hparam_plot:
        lines += _hparams(result, ks, hparam_plot)
    return "\n".join(lines) + "\n"


def _best(result: ExperimentResult, ks: Sequence[int], metric: str) -> str:
    # the planted-first references read the truth: they are no contenders
    rows = [r for r in result.summary(ks, metric) if "variant" not in r and r["model"] not in ORACLES]
    out = []
    for k in ks:
        at_k = sorted((r for r in rows if r["k"] == k), key=lambda r: -r["mean"])
        if at_k:
            top = at_k[0]
            out.append(f"{metric.capitalize()}@{k}: highest mean is {top['model']}/{top['loss']} ({top['mean']:.4f})")
    return "; ".join(out) + "." if out else ""


def _claims(result: ExperimentResult, ks: Sequence[int], metric: str, losses: Sequence[str]) -> list[str]:
    key_claims: list[tuple[str, tuple[str, str], tuple[str, str]]] = [
        (t, (a, lo), (b, lo)) for lo in losses for t, a, b in PAPER_CLAIMS
    ]
    if {"joint", "separate"} <= set(losses):
        key_claims.append(("Table 4", ("af2-cf", "separate"), ("af2-cf", "joint")))
    for y in ("mostpop", "histfreq"):
        key_claims += [("yardstick", (y, "-"), ("af2-cf", lo)) for lo in losses]
        key_claims += [("yardstick", (y, "-"), ("youtube", lo)) for lo in losses]
    lines = [
        f"### Does each ordering hold here? ({metric})",
        "",
        "Paired by seed: gap = mean over seeds of (better − worse); it *holds* when the gap exceeds the "
        "std of the paired gaps, is *reversed* when below minus that std, and is a *tie* otherwise.",
        "",
        "| source | claim | " + " | ".join(f"gap@{k} (verdict)" for k in ks) + " |",
        "|" + "---|" * (len(ks) + 2),
    ]
    for source, worse, better in key_claims:
        cells = []
        for k in ks:
            mean, std, n = paired_gap(result.runs, worse, better, f"{metric}@{k}")
            if n == 0:
                break
            cells.append(f"{mean:+.4f} ± {std:.4f} ({verdict(mean, std)})")
        if cells:
            lines.append(f"| {source} | {better[0]}/{better[1]} > {worse[0]}/{worse[1]} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _gaps(result: ExperimentResult, ks: Sequence[int], metric: str) -> list[str]:
    """Every model against every yardstick: mean paired gap and its 95% bootstrap interval over users."""
    rows = [r for r in result.intervals(ks, metric) if r.get("vs")]
    if not rows:
        return []
    shown = [*YARDSTICKS, *(o for o in (*ORACLES, EVALUATED) if any(o in r["vs"] for r in rows))]
    lines = [
        f"### Gaps to the yardsticks with paired bootstrap 95% intervals ({metric})",
        "",
        "Per user: the model's score minus the yardstick's on the same run (mean over the runs in which "
        "the user was tested); intervals from 2,000 resamples of the users. *above 0*: the whole interval "
        "is above zero."
        + (
            f" `{PLANTED}` and `{PLANTED_SEEN}` are no yardsticks: they read the test users' planted interests "
            "(the blend with them moved first; the second only those among the user's history tags), so a gap "
            "to the first says what knowing each user's interests exactly would add, to the second how much of "
            "that a better ranking of the tags the history shows could reach."
            if PLANTED in shown
            else ""
        )
        + (
            f" `{SERVED_MODEL}` ranks the same runs' test users from their requests as the service parses them;"
            f" its gap to `{EVALUATED}` is what serving changes against the model's own evaluation."
            if EVALUATED in shown
            else ""
        ),
        "",
        "| model | loss | yardstick | " + " | ".join(f"gap@{k} [95% interval]" for k in ks) + " |",
        "|" + "---|" * (len(ks) + 3),
    ]
    by = {(r["model"], r["loss"], r.get("variant", ""), r["k"]): r for r in rows}
    for model, loss, variant in dict.fromkeys((r["model"], r["loss"], r.get("variant", "")) for r in rows):
        name = model + (f" [{variant}]" if variant else "")
        # the gap to its own evaluation only in a served row
        for y in (y for y in shown if y != EVALUATED or model == SERVED_MODEL):
            cells = []
            for k in ks:
                g = by.get((model, loss, variant, k), {}).get("vs", {}).get(y)
                if g is None:
                    cells.append("–")
                    continue
                lo, hi = g["ci95"]
                mark = " above 0" if lo > 0 else (" below 0" if hi < 0 else "")
                cells.append(f"{g['gap']:+.4f} [{lo:+.4f}, {hi:+.4f}]{mark}")
            lines.append(f"| {name} | {loss} | {y} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _validation(result: ExperimentResult, ks: Sequence[int]) -> list[str]:
    """The validation users' Prec@K of each trained model and variant (the runs that record it)."""
    rows = result.summary(ks, "val_prec")
    if not rows:
        return []
    lines = [
        "### On the validation users (what a default or a variant is decided on; mean ± std over runs)",
        "",
        "| model | loss | " + " | ".join(f"Prec@{k}" for k in ks) + " |",
        "|" + "---|" * (len(ks) + 2),
    ]
    by = {(r["model"], r["loss"], r.get("variant", ""), r["k"]): r for r in rows}
    for model, loss, variant in dict.fromkeys((r["model"], r["loss"], r.get("variant", "")) for r in rows):
        found = [by.get((model, loss, variant, k)) for k in ks]
        cells = [f"{f['mean']:.4f} ± {f['std']:.4f}" if f else "–" for f in found]
        name = model + (f" [{variant}]" if variant else "")
        lines.append(f"| {name} | {loss} | " + " | ".join(cells) + " |")
    pairs = result.variant_differences(ks)
    if pairs:
        lines += [
            "",
            "Each variant against the default model's run of the same fold (the same validation users): the mean "
            "difference of validation Prec@K ± its std over runs, and in how many runs the variant scored higher "
            "/ the same.",
            "",
            "| variant | " + " | ".join(f"Prec@{k}" for k in ks) + " |",
            "|" + "---|" * (len(ks) + 1),
        ]
        for variant, by_k in pairs.items():
            found = [by_k.get(k) for k in ks]
            cells = [
                f"{d['mean']:+.4f} ± {d['std']:.4f} ({d['wins']} / {d['ties']} of {d['runs']})" if d else "–"
                for d in found
            ]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _personal(result: ExperimentResult) -> list[str]:
    rows = result.personalisation()
    if not rows:
        return []
    lines = [
        "### How personal the profiles are (top-10 lists of the test users, mean over runs)",
        "",
        "| model | loss | mean pairwise Jaccard | distinct tags served | share of users with the most common #1 tag |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["model"] + (f" [{r['variant']}]" if r.get("variant") else "")
        lines.append(
            f"| {name} | {r['loss']} | {r['jaccard']:.3f} | {r['distinct_tags']:.0f} | {r['top1_share']:.2f} |"
        )
    return [*lines, ""]


def _attention(rows: list[dict[str, Any]]) -> list[str]:
    heads = len(rows[0]["weights"])
    lines = [
        "## Attention weights for one test user (like the paper's Figure 3)",
        "",
        "| field | value | " + " | ".join(f"head {h + 1}" for h in range(heads)) + " |",
        "|" + "---|" * (heads + 2),
    ]
    for r in rows:
        lines.append(f"| {r['field']} | {r['value']} | " + " | ".join(f"{w:.4f}" for w in r["weights"]) + " |")
    fields = {r["field"]: r["field_weights"] for r in rows}
    lines += [
        "",
        "Merge level (weight of each field):",
        "",
        "| field | " + " | ".join(f"head {h + 1}" for h in range(heads)) + " |",
        "|" + "---|" * (heads + 1),
    ]
    lines += [f"| {f} | " + " | ".join(f"{w:.4f}" for w in ws) + " |" for f, ws in fields.items()]
    return [*lines, ""]


def _hparams(result: ExperimentResult, ks: Sequence[int], plot: str) -> list[str]:
    rows = [r for r in result.summary(ks) if "variant" in r]
    lines = [
        "## Hyper-parameters (like the paper's Figure 4; utpm, joint loss)",
        "",
        "| variant | " + " | ".join(f"Prec@{k}" for k in ks) + " |",
        "|" + "---|" * (len(ks) + 1),
    ]
    for key, values in HPARAM_GRID.items():
        for v in values:
            name = f"{key}={v}"
            cells = [
                next((f"{r['mean']:.4f} ± {r['std']:.4f}" for r in rows if r["variant"] == name and r["k"] == k), "–")
                for k in ks
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, "", f"![hyper-parameters]({plot})", ""]


def plot_models(result: ExperimentResult, ks: Sequence[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.summary(ks) if "variant" not in r]
    names = list(dict.fromkeys(f"{r['model']}/{r['loss']}" for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.7), 4))
    width = 0.8 / len(ks)
    for j, k in enumerate(ks):
        vals = {f"{r['model']}/{r['loss']}": r for r in rows if r["k"] == k}
        xs = [i + j * width for i in range(len(names))]
        ax.bar(xs, [vals[n]["mean"] for n in names], width, yerr=[vals[n]["std"] for n in names], label=f"Prec@{k}")
    ax.set_xticks([i + width * (len(ks) - 1) / 2 for i in range(len(names))], names, rotation=45, ha="right")
    ax.set_ylabel("Prec@K (mean ± std over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_hparams(result: ExperimentResult, ks: Sequence[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.summary(ks) if "variant" in r]
    fig, axes = plt.subplots(1, len(HPARAM_GRID), figsize=(4 * len(HPARAM_GRID), 3.2))
    for ax, (key, values) in zip(axes, HPARAM_GRID.items(), strict=True):
        for k in ks:
            means = [
                next((r["mean"] for r in rows if r["variant"] == f"{key}={v}" and r["k"] == k), float("nan"))
                for v in values
            ]
            ax.plot([str(v) for v in values], means, marker="o", label=f"Prec@{k}")
        ax.set_title(key)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def attention_example(data_path: str, preset: str, seed: int = 0) -> list[dict[str, Any]]:
    """Train utpm (joint) at `seed` and explain the test user with the most input values."""
    import torch

    from utpm.data.loading import load_dataset
    from utpm.data.protocol import split_protocol
    from utpm.models.explain import explain, feature_weights
    from utpm.models.presets import get_preset
    from utpm.training.samples import encode_rows
    from utpm.training.trainer import TrainConfig, train

    data = load_dataset(data_path)
    split = split_protocol(data, seed=seed)
    result = train(split, TrainConfig(model="utpm", loss="joint", preset=get_preset(preset), seed=seed), data=data)
    rows = split.indices(test=True)
    ids, masks = encode_rows(split, result.encoder, rows)
    fullest = int(sum(m.sum(axis=1) for m in masks).argmax())
    ex = explain(
        result.model,
        [torch.from_numpy(x[fullest : fullest + 1]) for x in ids],
        [torch.from_numpy(m[fullest : fullest + 1]) for m in masks],
    )
    return feature_weights(ex, result.encoder, 0)
