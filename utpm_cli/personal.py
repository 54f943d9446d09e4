"""`utpm bench personal`: how personal a served bundle's profiles are (issue 12's measurement).

The bundle answers, in process through the service's engine (ONNX model + tag index), the profiles
of `--users` users of a data set, each sent as the service would receive it: the user's most
recent distinct clicked tags and categories (at most `--values` each) from the first 80% of their
events. Reported: mean pairwise Jaccard of the top-k lists, distinct tags served, the share of users
whose #1 tag is the most common #1, next to the same users' own clicked-tag frequencies.

`--counts` sends the same most recent distinct values with their counts instead (the API's
{value: count} form): how often each value occurs among the user's clicked history items (all of an
item's tags, as the field holds them), in recency order. It is a second measurement
next to the default one, not a replacement: a request with counts says more about the user.
`--items` also sends the user's most recent distinct clicked items (at most `--values`, with their
counts under `--counts`) as `clicked_items`, which the default model reads through its item
neighbours. `--whole` sends instead the request the repository builds from the log for every
client of its own (`ProtocolSplit.request`: `utpm profile batch`, the load tests, the export's parity
users): every field the bundle reads, each multi-valued one with counts, at most 100 values each,
and up to 1000 clicked items.

Quality of the same requests: the split's test users (held out from the bundle's training when it
was trained on DATA: the split is its run's, seed and share of test users from its manifest unless
`--seed` says otherwise) are sent the same way, and the
served lists' Prec@1/2/3 (C: the first N tags of the label-1 items, N the bundle's) are set beside the
experiments' yardsticks (mostpop, histfreq and the tuned blend, which read the users' whole
histories), with paired bootstrap 95% intervals: is what a request of this shape gets better than
popularity?
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from utpm_cli.bench import progress_lines
from utpm_cli.errors import fail, load_data, output_file, require_bundle
from utpm_cli.model import note_other_data

if TYPE_CHECKING:  # pandas: `utpm serve` runs on a serving install, without the train extra
    from utpm.data.protocol import ProtocolSplit

SERVED = "served"  # the served lists' row among the yardsticks'
AGAINST = "against"  # --against: the other bundle's lists for the same requests
QUALITY_KS = (1, 2, 3)
VALUES = 10  # --values: the most recent distinct values sent per field


def bench_personal_cmd(
    bundle: Annotated[Path, typer.Argument(help="An exported and indexed bundle.")],
    data: Annotated[Path, typer.Argument(help="A data set in the generic format (e.g. artifacts/movielens).")],
    users: Annotated[int, typer.Option(min=2, help="Users to profile (a seeded draw).")] = 200,
    k: Annotated[int, typer.Option(min=1, max=1000, help="Tags per profile.")] = 10,
    values: Annotated[int, typer.Option(min=1, help="Most recent distinct values sent per field.")] = VALUES,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of the protocol split and of the draw of users (default: the bundle's training seed)."),
    ] = None,
    counts: Annotated[
        bool, typer.Option("--counts", help="Send each value with its count among the clicked history items.")
    ] = False,
    items: Annotated[
        bool,
        typer.Option(
            "--items", help="Also send the most recent distinct clicked items (at most --values) as clicked_items."
        ),
    ] = False,
    whole: Annotated[
        bool,
        typer.Option(
            "--whole",
            help="Send the request the repository builds from the log (every field with counts, up to 100 values "
            "each, up to 1000 clicked items) instead of --values/--counts/--items.",
        ),
    ] = False,
    quality: Annotated[
        bool, typer.Option(help="Also Prec@K of the test users' served lists beside the yardsticks.")
    ] = True,
    tags_per_item: Annotated[
        int | None, typer.Option(help="N of C (tags per label item); default: the bundle's preset.")
    ] = None,
    against: Annotated[
        Path | None,
        typer.Option(help="Another bundle sent the same test users' requests: its Prec@K and the paired gap."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_file, help="Write the result JSON here.")
    ] = None,
) -> None:
    """Profiles of many users from a served bundle: are they different from one another?"""
    from service.config import Settings
    from service.engine import ProfileEngine
    from utpm.data.protocol import split_protocol
    from utpm.evaluation.personalisation import personalisation

    quality_only = [o for o, v in (("--against", against), ("--tags-per-item", tags_per_item)) if v is not None]
    if whole and (counts or items or values != VALUES):
        fail("--whole sends the request built from the log: leave out --values, --counts and --items")
    if quality_only and not quality:  # else the comparison asked for was silently not made
        fail(f"{', '.join(quality_only)}: part of the Prec@K figures, which --no-quality turns off")
    for path in (bundle, *([against] if against is not None else [])):
        require_bundle(path)
    from model_export.errors import BundleError
    from model_export.manifest import Manifest

    try:
        recorded = Manifest.read(bundle).model.get("protocol")
    except BundleError as e:
        fail(str(e))
    recorded = recorded if isinstance(recorded, dict) else {}
    seed = int(recorded.get("seed", 0)) if seed is None else seed  # its test users are its run's
    if quality and recorded.get("test_users") == 0:  # its Prec@K would be over users it was trained on
        fail(f"{bundle} was trained with no user held out (--test-share 0): its Prec@K needs --no-quality")
    # the bundle's own test users: its run's share of them (the protocol's 0.2 unless trained otherwise)
    split = split_protocol(load_data(data), seed=seed, test_fraction=float(recorded.get("test_fraction", 0.2)))

    unknown_only: list[bool] = []  # per request served: none of its values is in the bundle's vocabularies

    def load(path: Path) -> tuple[Callable[[int, int], list[str]], str, int | None, Any]:
        """A bundle's serve function (test user, k -> tags), its model name, its preset's N and the
        protocol of its run (None for a bundle exported before it was recorded)."""
        engine = ProfileEngine.load(path, Settings.model_validate({"bundle": str(path), "device": "cpu"}))
        chosen = split.fields if whole else ("clicked_tags", "clicked_categories")
        fields = [f for f in chosen if f in engine.field_names and f in split.fields]

        def serve(i: int, limit: int) -> list[str]:
            if whole:
                feats = whole_request(split, i, fields)
            else:
                feats = request_features(split, i, fields, values, counts, items)
            user = engine.encode(feats, limit, False)
            profile = engine.compute([user])[0]
            unknown_only.append(user.all_unknown)  # read after compute: utpm-hist encodes there
            return [engine.bundle.tags.token(int(t)) for t in profile.tag_ids]

        model = engine.bundle.manifest.model
        return serve, engine.model_name, model.get("preset", {}).get("N"), model.get("protocol")

    serve, model_name, preset_n, protocol = load(bundle)
    differences = split.differences(protocol) if isinstance(protocol, dict) else []
    if differences:
        note_other_data(f"{data} under --seed {seed} is not the split {bundle} was trained on", differences)
    n_tags = tags_per_item if tags_per_item is not None else preset_n
    if quality and n_tags is None:
        fail("the bundle records no tags per item (N): pass --tags-per-item")

    say = progress_lines(time.perf_counter())  # a 1M-tag bundle takes minutes
    say(f"profiles of {users} drawn users from {bundle}")
    rows = np.random.default_rng(seed).permutation(split.n_users)
    served: list[list[str]] = []
    own: list[list[str]] = []
    for i in rows:
        if not split.fields["clicked_tags"].row(int(i)):
            continue
        served.append(serve(int(i), k))
        freq = Counter(split.fields["clicked_tags"].row(int(i))[-values:])
        own.append([t for t, _ in freq.most_common(k)])
        if len(served) == users:
            break
    if unknown_only and all(unknown_only):
        fail(
            f"none of the values sent for {len(served)} users of {data} is in the vocabularies of {bundle}: "
            "is it the data the bundle was trained on (or data of the same catalogue)?"
        )
    unknown_share = sum(unknown_only) / max(1, len(unknown_only))
    mine, theirs = personalisation(served, k), personalisation(own, k)
    result: dict[str, Any] = {
        "bundle": str(bundle),
        "model": model_name,
        "users": len(served),
        "k": k,
        "values": values,
        "counts": counts,
        "items": items,
        "whole": whole,
        "served": mine,
        "own_clicked_tags": theirs,
        "unknown_only_share": round(unknown_share, 4),
        "same_data_as_training": None if not isinstance(protocol, dict) else not differences,
    }
    if quality and n_tags is not None:
        other = load(against) if against is not None else None
        if other is not None and isinstance(other[3], dict) and split.differences(other[3]):
            note_other_data(
                f"{data} under --seed {seed} is not the split {against} was trained on", split.differences(other[3])
            )
        result["quality"] = served_quality(serve, split, data, n_tags, seed, other[0] if other else None, say)
        if other is not None:
            result["quality"]["against"] = {"bundle": str(against), "model": other[1]}
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))
    s = mine
    sent = f"{values} most recent distinct values per field" + (" and items" if items else "")
    sent += " with their counts" if counts else ""
    sent = "the whole request built from the log" if whole else sent
    typer.echo(
        f"{model_name} ({sent}): {len(served)} users, top-{k} mean pairwise Jaccard {s['jaccard']:.3f}, "
        f"{s['distinct_tags']:.0f} distinct tags, #1 tag shared by {s['top1_share']:.0%} "
        f"(the same users' own clicked tags sent: {theirs['jaccard']:.3f})"
    )
    if unknown_share > 0:
        typer.echo(
            f"warning: {unknown_share:.0%} of these users' requests held no value the bundle knows "
            "(their profiles are the model's answer to an empty request)"
        )
    if "quality" in result:
        for line in quality_lines(result["quality"]):
            typer.echo(line)
    if json_out is not None:
        typer.echo(f"wrote {json_out}")


def request_features(
    split: ProtocolSplit, user: int, fields: Sequence[str], values: int, counts: bool, items: bool = False
) -> dict[str, Sequence[str] | Mapping[str, float]]:
    """User `user`'s request as the measurement sends it: the `values` most recent distinct values of
    each field, with `counts` as {value: count} (`ProtocolSplit.counted`: occurrences in the user's
    history); with `items`, the `values` most recent distinct clicked items too (`clicked_items`; the
    model reads no item counts, so each counts 1)."""
    from utpm.features.history import ITEM_FIELD

    recent = {f: split.fields[f].row(user)[-values:] for f in fields}
    clicked = split.clicked_items(user)[-values:] if items else []
    if clicked:
        recent[ITEM_FIELD] = clicked
    if not counts:
        return dict(recent)
    counted = {f: split.counted(f, user) for f in fields if f in split.field_counts}
    return {f: {v: counted.get(f, {}).get(v, 1) for v in vs} for f, vs in recent.items()}


def whole_request(split: ProtocolSplit, user: int, fields: Sequence[str]) -> dict[str, Any]:
    """`ProtocolSplit.request` with the fields `fields` and the clicked items."""
    from utpm.features.history import ITEM_FIELD

    return {f: v for f, v in split.request(user).items() if f in fields or f == ITEM_FIELD}


def served_quality(
    serve: Callable[[int, int], list[str]],
    split: ProtocolSplit,
    data: Path,
    n_tags: int,
    seed: int,
    against: Callable[[int, int], list[str]] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Prec@K of the served lists of the split's test users and of the experiments' yardsticks on the
    same users, with 95% intervals of each mean and of served minus each yardstick (paired by user);
    with `against`, another bundle's lists for the same requests and served minus them (`vs_against`).
    `say`: a line as each part starts."""
    from utpm.evaluation.experiment import PERSONAL_K, ExperimentResult, score_rankings, split_yardstick_runs
    from utpm.evaluation.personalisation import bootstrap_mean_ci

    test_rows = split.indices(test=True)
    runs: dict[str, dict[str, Any]] = {}
    say = say or (lambda _line: None)
    for name, fn in ((SERVED, serve), (AGAINST, against)):
        if fn is not None:
            whose = "served lists" if name == SERVED else "--against bundle's lists"
            say(f"Prec@K: the {whose} of {len(test_rows):,} test users")
            ranked = [fn(int(i), max(PERSONAL_K, *QUALITY_KS)) for i in test_rows]
            runs[name] = {"model": name, "loss": "-", "seed": seed}
            score_rankings(runs[name], split, test_rows, ranked, QUALITY_KS, n_tags)
    # the yardsticks on this split: the data set is not read and split a second time
    say(f"Prec@K: the yardsticks on the same {len(test_rows):,} users")
    yardsticks = split_yardstick_runs(split, seed, QUALITY_KS, n_tags)
    result = ExperimentResult(str(data), {}, [*runs.values(), *yardsticks])
    rows = [{k: v for k, v in r.items() if k not in ("loss", "std", "n_seeds")} for r in result.intervals(QUALITY_KS)]
    users = next((r["users"] for r in rows if r["model"] == SERVED), 0)
    out: dict[str, Any] = {"users": users, "tags_per_item": n_tags, "rows": rows}
    if AGAINST in runs:
        mine, theirs = runs[SERVED]["per_user"], runs[AGAINST]["per_user"]
        out["vs_against"] = {}
        for k in QUALITY_KS:
            gaps = np.asarray(mine[f"prec@{k}"]) - np.asarray(theirs[f"prec@{k}"])  # the same users, in order
            out["vs_against"][str(k)] = {"gap": float(gaps.mean()), "ci95": list(bootstrap_mean_ci(gaps))}
    return out


def quality_lines(quality: Mapping[str, Any]) -> list[str]:
    """The quality table as text: Prec@1/2/3 per list, then served minus each yardstick with its interval."""
    by: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in quality["rows"]:
        by.setdefault(r["model"], {})[r["k"]] = r
    ks = QUALITY_KS
    n, per_item = quality["users"], quality["tags_per_item"]
    lines = [f"Prec@{'/'.join(map(str, ks))} of {n} test users (C: first {per_item} tags per item):"]
    for model, rows in by.items():
        lines.append(f"  {model:<9} " + " / ".join(f"{rows[k]['mean']:.3f}" for k in ks))
    served = by.get(SERVED, {})
    for y in dict.fromkeys(y for r in served.values() for y in r.get("vs", {})):
        gaps = [served[k]["vs"][y] for k in ks]
        text = " / ".join(f"{g['gap']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]" for g in gaps)
        lines.append(f"  served - {y}: {text}")
    if "vs_against" in quality:
        gaps = [quality["vs_against"][str(k)] for k in ks]
        text = " / ".join(f"{g['gap']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]" for g in gaps)
        lines.append(f"  served - against: {text}")
    return lines
