"""The benchmark's bundle: synthetic data with about a million tags, the default model utpm-hist (or
the paper's UTPM, `Recipe.for_tags(n, model="utpm")`, `python -m loadtest.bundle --model utpm`) at the
industrial preset.

Built once by `pipeline.build_bundle` under `artifacts/bench/tags<N>-utpm-hist/` (the paper model's
under `artifacts/bench/tags<N>/`) and reused while
`bench_bundle.json` there records the same recipe; `payloads.jsonl` beside it holds the raw features
of held-out test users (realistic request bodies). Why the recipe trains on a budget from frozen,
structured tag vectors, and why the paper model's index is tuned on structured queries (the default
model's on its held-out users): docs/pipeline.md, "The benchmark bundle". The serving cost (ONNX
graph, index, payloads) is that of a real 1M-tag industrial model; the ranking quality is not
(docs/performance.md, "What the benchmark bundle's lists are worth").
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from utpm.data.protocol import REQUEST_SHAPE

PAPER_MODEL = "utpm"
DEFAULT_MODEL = "utpm-hist"  # the project's default model: what the benchmarks build unless told otherwise
# raised, per model, whenever a change to that model changes what its bundle holds (the default
# model's 5: item neighbours; 6: its own batch size), so that a cached benchmark bundle of an older
# model is rebuilt, not served as if it were the current one, and the other model's bundle is kept
RECIPE_VERSIONS = {DEFAULT_MODEL: 6, PAPER_MODEL: 5}
MODELS = (DEFAULT_MODEL, PAPER_MODEL)
DEFAULT_ROOT = Path("artifacts/bench")
# Fewer tags than this and the synthetic generator's planted interests and item tags crowd each other out
MIN_TAGS = 1000
PAYLOAD_USERS = 2000
Say = Callable[[str], None]


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the benchmark bundle; a cached bundle is reused only for the same recipe."""

    tags: int = 1_000_000
    users: int = 200_000
    events_per_user: int = 100
    preset: str = "industrial"
    model: str = "utpm"
    train_users: int = 8192
    # validation users the default model's start is tuned on and its epoch judged on (0: none, the
    # start is popularity alone and the trained epoch is kept): docs/performance.md, "What the
    # benchmark bundle's lists are worth"
    val_users: int = 0
    batch_size: int = 1024
    negatives_per_positive: int = 2
    test_fraction: float = 0.01
    parity_users: int = 512
    index: str = "auto"
    seed: int = 0
    version: int = RECIPE_VERSIONS[PAPER_MODEL]  # the model's (for_tags sets it)
    # the tower's cross layer: the paper model's is cf; utpm-hist's (`HistoryOptions.cross`) defaults to none
    cross: str = "cf"

    @classmethod
    def for_tags(cls, tags: int, model: str = DEFAULT_MODEL, cross: str | None = None) -> Recipe:
        """0.2 users per tag (at least 2,000): with fewer, many tags never occur in a label item.
        `model`: the default model utpm-hist, or the paper's utpm (same data, its own directory);
        `cross`: utpm-hist's cross layer (its default when None)."""
        if tags < MIN_TAGS:
            raise ValueError(f"--tags must be at least {MIN_TAGS}, got {tags}")
        if model not in MODELS:
            raise ValueError(f"unknown benchmark model {model!r}; valid: {', '.join(MODELS)}")
        if model == PAPER_MODEL:
            if cross not in (None, "cf"):
                raise ValueError(f"the cross layer is an option of utpm-hist; the paper's {PAPER_MODEL} keeps cf")
            cross = "cf"
        from utpm.models.history import HistoryOptions
        from utpm.models.user_model import check_cross
        from utpm.training.history import HistoryTrainConfig

        cross = cross or HistoryOptions.cross
        check_cross(cross)  # before the data and the training it would fail after
        # utpm-hist trains with its own batch size: its sampled loss scores every history tag of the
        # batch's users for each of them, so a step's memory grows with the batch squared (docs/pipeline.md)
        batch_size = cls.batch_size if model == PAPER_MODEL else HistoryTrainConfig.batch_size
        users = max(2_000, tags // 5)
        return cls(tags, users, model=model, batch_size=batch_size, cross=cross, version=RECIPE_VERSIONS[model])

    def directory(self, root: Path) -> Path:
        """root/tags<N> for the paper model (the directory earlier benchmarks used), root/tags<N>-utpm-hist
        for the default model (-cross-<kind> added for another cross layer); all read root/tags<N>/data."""
        if self.model == PAPER_MODEL:
            return root / f"tags{self.tags}"
        from utpm.models.history import HistoryOptions

        suffix = f"-cross-{self.cross}" if self.cross != HistoryOptions.cross else ""
        return root / f"tags{self.tags}-{self.model}{suffix}"

    def same_as(self, stored: dict[str, Any] | None) -> bool:
        """Whether a bundle built from the `stored` recipe is this one's; a field added since takes its default."""
        if stored is None:
            return False
        # a recipe stored before `cross` was a field had the cf layer, the dataclass default
        defaults = {f.name: f.default for f in fields(self)}
        return {**defaults, **stored} == asdict(self)

    def train_config(self, tag_vectors: Path) -> Any:
        """The training budget: one epoch over `train_users` sampled users, tag vectors frozen at
        structured ones, `val_users` validation users (by default none: epochs of a 1M-tag evaluation
        would cost more than training)."""
        from utpm.models.presets import get_preset

        preset = get_preset(self.preset)
        training_users = round(self.users * (1 - self.test_fraction))
        budget: dict[str, Any] = {
            "seed": self.seed,
            "epochs": 1,
            "batch_size": self.batch_size,
            "val_fraction": min(1.0, self.val_users / training_users) if self.val_users else 0.0,
            "augment_cuts": (),
            "eval_ks": (),
            "max_train_users": self.train_users,
            "tag_vectors": str(tag_vectors),
            "freeze_tag_vectors": True,
        }
        if self.model == PAPER_MODEL:
            from utpm.training.trainer import TrainConfig

            return TrainConfig(
                model=self.model,
                loss="joint",
                preset=preset,
                negatives_per_positive=self.negatives_per_positive,
                **budget,
            )
        from utpm.models.history import HistoryOptions
        from utpm.training.history import HistoryTrainConfig, history_preset

        # the sampled softmax (logQ-corrected) over the batch's tags plus `sampled_negatives` drawn ones:
        # a full softmax over 1M tags per batch is out of budget; U = the paper preset's, so the same
        # structured tag vectors start (and freeze) the output table
        return HistoryTrainConfig(
            loss="sampled",
            preset=history_preset(preset, dim=preset.U, max_values=preset.H),
            sampled_negatives=2000,
            max_examples_per_epoch=self.train_users,
            history=HistoryOptions(cross=self.cross),  # type: ignore[arg-type]
            **budget,
        )


@dataclass
class BenchBundle:
    root: Path
    bundle: Path
    run: Path
    payloads: Path
    info: dict[str, Any] = field(default_factory=dict)


def prepare_bench_bundle(
    recipe: Recipe, root: Path = DEFAULT_ROOT, progress: Say | None = None, reexport: bool = False
) -> BenchBundle:
    """Reuse or build the bundle of `recipe` under `root/tags<N>` with the one pipeline. `reexport`:
    keep the data and the trained run of the same recipe, redo the export and the index (after a
    change to the export or to the model's graph, so that a benchmark serves what the code exports)."""
    from pipeline import DataSource, build_bundle, prepare_data
    from utpm.data.tag_geometry import tag_vectors_path
    from utpm.models.presets import get_preset

    say = progress or (lambda _msg: None)
    base = recipe.directory(root)
    data_dir = root / f"tags{recipe.tags}" / "data"  # shared by the paper and the default model's bundles
    meta_path = base / "bench_bundle.json"
    out = BenchBundle(base, base / "bundle", base / "run", base / "payloads.jsonl")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    same = recipe.same_as(meta.get("recipe"))
    if same and not reexport and (out.bundle / "index_infos.json").is_file():
        say(f"reusing the benchmark bundle in {out.bundle} (built {meta.get('built_at', '?')})")
        # bodies of another request shape (utpm.data.protocol.REQUEST_SHAPE) are rewritten, the bundle kept
        if meta.get("payloads_version") != REQUEST_SHAPE or not out.payloads.is_file():
            _write_bench_payloads(data_dir, recipe, out.payloads, say)
            meta["payloads_version"] = REQUEST_SHAPE
            meta_path.write_text(json.dumps(meta, indent=2))
        out.info = meta
        return out
    if reexport and not same:  # build_bundle checks that the run is there
        raise FileNotFoundError(f"no trained run of this recipe in {out.run} to re-export; build it first")
    preset = get_preset(recipe.preset)
    synthetic = {"n_tags": recipe.tags, "n_users": recipe.users, "events_per_user": recipe.events_per_user}
    source = DataSource("synthetic", synthetic={**synthetic, "seed": recipe.seed}, tag_vector_dim=preset.U)
    config = recipe.train_config(tag_vectors_path(data_dir, preset.U))
    if base / "data" != data_dir:  # the default model's bundle: the paper bundle's data, made once
        say(f"data: {data_dir}")
        prepare_data(source, data_dir, progress=say)
        source = DataSource("generic", data_dir)
    # the paper model's budgeted tower has not left the prior: its index is tuned on structured queries;
    # the default model's [o_t, b_t] index on its held-out users (the pipeline's default), docs/serving.md
    queries = (
        functools.partial(structured_queries_for, data_dir=data_dir, seed=recipe.seed)
        if recipe.model == PAPER_MODEL
        else None
    )
    built = build_bundle(
        base,
        source,
        config,
        index_kind=recipe.index,
        index_queries=queries,
        parity_users=recipe.parity_users,
        test_fraction=recipe.test_fraction,
        isolate=True,
        progress=say,
        first_stage="export" if reexport else "prepare",
    )
    if not (reexport and out.payloads.is_file() and meta.get("payloads_version") == REQUEST_SHAPE):
        _write_bench_payloads(built.data, recipe, out.payloads, say)  # the same data as before when re-exported
    now = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    info = {
        "recipe": asdict(recipe),
        "stages": {**meta.get("stages", {}), **built.stages},
        "built_at": now,
        "payloads_version": REQUEST_SHAPE,
    }
    if reexport:
        info["built_at"], info["reexported_at"] = meta.get("built_at", "?"), now
    meta_path.write_text(json.dumps(info, indent=2))
    out.info = info
    return out


def structured_queries_for(bundle: Path, data_dir: Path, seed: int, n: int = 1000) -> np.ndarray:
    """(n, U) queries shaped like a converged model's users over the bundle's own tag vectors.

    The budgeted tower has not left the popularity prior (its users are nearly one vector), so
    tuning nprobe on them would measure under-training; `index.structured.structured_queries`
    models users who like 1-3 categories and 3-8 tags in them, as `utpm bench index` does.
    """
    from index.structured import StructuredTags, structured_queries
    from model_export.bundle import load_bundle
    from utpm.data.tag_geometry import tag_categories

    b = load_bundle(bundle, verify_hashes=False)
    x = np.ascontiguousarray(b.embeddings, dtype=np.float32)
    _, cats = tag_categories(data_dir, b.tags.tokens[2:])
    order = np.argsort(cats, kind="stable")  # structured_queries wants each category's tags contiguous
    size = np.bincount(cats)
    grouped = StructuredTags(
        vectors=x[2:][order],
        category=cats[order],
        category_start=np.r_[0, np.cumsum(size)[:-1]],
        category_size=size,
        category_weights=size / size.sum(),  # the generator sizes categories by their popularity
    )
    return structured_queries(grouped, n, np.random.default_rng([seed, 11]))


def _write_bench_payloads(data_dir: Path, recipe: Recipe, path: Path, say: Say) -> None:
    say(f"writing {PAYLOAD_USERS} request bodies of held-out users to {path}")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(write_payloads, data_dir, recipe.seed, recipe.test_fraction, path).result()


def write_payloads(
    data_dir: Path,
    seed: int,
    test_fraction: float,
    path: Path,
    items: bool = True,
    max_items: int | None = None,
    counts: bool = True,
    tag_items: bool = True,
) -> int:
    """Request bodies from held-out test users' requests as `ProtocolSplit.request` builds them (with
    their clicked items unless `items` is False: the most recent `max_items`, by default as many as
    the model reads; each multi-valued field as {value: count} unless `counts` is False, a tag's
    distinct items with its count unless `tag_items` is False), one JSON object per line; returns
    how many."""
    from utpm.data.loading import load_dataset
    from utpm.data.protocol import split_protocol
    from utpm.features.history import ITEM_FIELD
    from utpm.features.item_neighbours import RECENT_ITEMS

    n_items = RECENT_ITEMS if max_items is None else max_items
    split = split_protocol(load_dataset(data_dir), seed=seed, test_fraction=test_fraction, max_items=n_items)
    rows = split.indices(test=True)[:PAYLOAD_USERS]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in rows:
            features = split.request(int(i), counts, tag_items)
            if not items:
                features.pop(ITEM_FIELD, None)
            f.write(json.dumps({"features": features}) + "\n")
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    """Build (or reuse) a benchmark bundle: `python -m loadtest.bundle --tags 1000000 --model utpm-hist`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m loadtest.bundle", description=main.__doc__)
    parser.add_argument("--tags", type=int, default=1_000_000)
    parser.add_argument("--model", choices=MODELS, default=DEFAULT_MODEL)
    parser.add_argument("--cross", default=None, help="utpm-hist's cross layer: none (default) or e.g. cf")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument(
        "--reexport", action="store_true", help="keep the data and the trained run; redo the export and the index"
    )
    args = parser.parse_args(argv)
    try:
        recipe = Recipe.for_tags(args.tags, args.model, args.cross)
    except ValueError as e:
        parser.error(str(e))
    try:
        args.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"cannot create --root {args.root}: {e.strerror}")
    built = prepare_bench_bundle(recipe, args.root, print, args.reexport)
    print(json.dumps({"bundle": str(built.bundle), "payloads": str(built.payloads), **built.info}, indent=2))


if __name__ == "__main__":
    main()
