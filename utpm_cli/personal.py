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
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from utpm.data.errors import DataError
from utpm.data.protocol import ProtocolSplit


def bench_personal_cmd(
    bundle: Annotated[Path, typer.Argument(help="An exported and indexed bundle.")],
    data: Annotated[Path, typer.Argument(help="A data set in the generic format (e.g. artifacts/movielens).")],
    users: Annotated[int, typer.Option(help="Users to profile (a seeded draw).")] = 200,
    k: Annotated[int, typer.Option(help="Tags per profile.")] = 10,
    values: Annotated[int, typer.Option(help="Most recent distinct values sent per field.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the protocol split and of the draw of users.")] = 0,
    counts: Annotated[
        bool, typer.Option("--counts", help="Send each value with its count among the clicked history items.")
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result JSON here.")] = None,
) -> None:
    """Profiles of many users from a served bundle: are they different from one another?"""
    from service.config import Settings
    from service.engine import ProfileEngine
    from utpm.data.loading import load_dataset
    from utpm.data.protocol import split_protocol
    from utpm.evaluation.personalisation import personalisation

    try:
        split = split_protocol(load_dataset(data), seed=seed)
    except DataError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    engine = ProfileEngine.load(bundle, Settings.model_validate({"bundle": str(bundle), "device": "cpu"}))
    fields: list[str] = [
        f for f in ("clicked_tags", "clicked_categories") if f in engine.field_names and f in split.fields
    ]
    rows = np.random.default_rng(seed).permutation(split.n_users)
    served: list[list[str]] = []
    own: list[list[str]] = []
    for i in rows:
        recent = {f: split.fields[f].row(int(i))[-values:] for f in fields}
        feats: dict[str, Sequence[str] | Mapping[str, float]] = dict(recent)
        if counts:
            counted = clicked_counts(split, int(i))
            feats = {f: {v: counted.get(f, {}).get(v, 1.0) for v in vs} for f, vs in recent.items()}
        if not feats.get("clicked_tags"):
            continue
        profile = engine.compute([engine.encode(feats, k, False)])[0]
        served.append([engine.bundle.tags.token(int(t)) for t in profile.tag_ids])
        freq = Counter(split.fields["clicked_tags"].row(int(i))[-values:])
        own.append([t for t, _ in freq.most_common(k)])
        if len(served) == users:
            break
    mine, theirs = personalisation(served, k), personalisation(own, k)
    result = {
        "bundle": str(bundle),
        "model": engine.model_name,
        "users": len(served),
        "k": k,
        "values": values,
        "counts": counts,
        "served": mine,
        "own_clicked_tags": theirs,
    }
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))
    s = mine
    sent = f"{values} most recent distinct values per field" + (" with their counts" if counts else "")
    typer.echo(
        f"{engine.model_name} ({sent}): {len(served)} users, top-{k} mean pairwise Jaccard {s['jaccard']:.3f}, "
        f"{s['distinct_tags']:.0f} distinct tags, #1 tag shared by {s['top1_share']:.0%} "
        f"(the same users' own clicked tags sent: {theirs['jaccard']:.3f})"
    )


def clicked_counts(split: ProtocolSplit, user: int) -> dict[str, dict[str, float]]:
    """Per clicked_<column> field: value -> occurrences among the user's label-1 history items, in the
    order of last occurrence (oldest first, as the API reads it)."""
    out: dict[str, dict[str, float]] = {}
    lo, hi = split.history.offsets[user], split.history.offsets[user + 1]
    columns = split.item_columns or {"tags": split.item_tags}
    for item, y in zip(split.history.codes[lo:hi], split.history_values[lo:hi], strict=True):
        if y != 1:
            continue
        for col, ragged in columns.items():
            vals = ragged.row(int(item))
            d = out.setdefault(f"clicked_{col}", {})
            for v in vals:
                d[v] = d.pop(v, 0.0) + 1.0  # re-inserting moves v to the end: the order of last occurrences
    return out
