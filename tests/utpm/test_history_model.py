"""The default model utpm-hist: count-aware features, history path, shared vocabulary, losses, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.datasets import synthetic_dataset
from tests.utpm.features.reference_history import reference_transition
from utpm.data.protocol import split_protocol, train_val_rows
from utpm.features.history import (
    ITEM_FIELD,
    PHI_NAMES,
    UNCLICKED_FIELD,
    FieldStats,
    HistoryEncoder,
    TagStats,
    parse_field,
    recency_weights,
    stats_from_sequence,
)
from utpm.models.history import HistoryModel, HistoryOptions, build_history_model
from utpm.models.presets import get_preset
from utpm.training.history import (
    DEFAULT_HISTORY_LOSS,
    HistoryTrainConfig,
    UserSequences,
    build_history_vocabularies,
    encode_users,
    fit_item_tags,
    fit_tag_stats,
    history_preset,
    rank_history,
    short_request,
    train_history,
)
from utpm.training.run import load_run

TINY_HIST = history_preset(get_preset("tiny"), dim=8, max_values=6)


def _encoder(split, rows, max_history_tags: int = 10) -> tuple[HistoryEncoder, UserSequences]:
    seqs = UserSequences(split, TINY_HIST.N)
    enc, tags = build_history_vocabularies(split, seqs, rows, TINY_HIST.H, 1)
    return HistoryEncoder(enc, tags, max_history_tags), seqs


def test_sequence_stats_count_distinct_items_and_weigh_recent_occurrences_more() -> None:
    st = stats_from_sequence(["a", "b", "a", "c", "a"], items=[1, 2, 1, 3, 4])
    assert st.values == ["b", "c", "a"]  # order of last occurrence, most recent last
    assert st.count == [1.0, 1.0, 3.0] and st.distinct == [1.0, 1.0, 2.0]
    assert st.recency[1] > st.recency[0]  # c is more recent than b


def test_sequence_stats_equal_a_plain_loop_over_the_occurrences() -> None:
    """The C-level counting (dict order, bincount) against the obvious loop: the same order and the
    same float sums, bit for bit, with and without repeats."""
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50, 300, 2000):
        seq = [f"v{x}" for x in rng.integers(0, max(1, n // 3), n)]
        weights = recency_weights(n)
        acc: dict[str, list[float]] = {}
        for v, w in zip(seq, weights, strict=True):
            c = acc.pop(v, [0.0, 0.0])
            acc[v] = [c[0] + 1.0, c[1] + w]
        st = stats_from_sequence(seq)
        assert st.values == list(acc) and st.count == [c for c, _ in acc.values()] == st.distinct
        assert st.recency == [r for _, r in acc.values()]  # exact: the same additions in the same order


def test_request_fields_accept_repeats_and_value_count_objects() -> None:
    assert parse_field("f", ["x", "y", "x"]).count == [1.0, 2.0]
    st = parse_field("f", {"x": 3, "y": 0, "z": 1e30})
    assert st.values == ["x", "z"] and st.count[1] == 1e6  # zero dropped, huge clamped
    assert parse_field("f", "x").values == ["x"] and len(parse_field("f", None)) == 0


@pytest.mark.parametrize(
    "bad", [{"x": -1}, {"x": "3"}, {"x": float("nan")}, {"x": float("inf")}, {"x": True}, [1, 2], 5]
)
def test_bad_counts_and_values_are_clear_value_errors(bad: object) -> None:
    with pytest.raises(ValueError, match="field 'f'"):
        parse_field("f", bad)


def test_fields_keep_the_most_frequent_values_ties_by_recency_and_phi_is_per_history_tag() -> None:
    data = synthetic_dataset(n_users=8, events=20, only_positive=True)
    split = split_protocol(data, seed=0)
    henc, _ = _encoder(split, split.indices(test=False))
    known = [t for t in henc.tags.tokens[2:5]]
    user = {"clicked_tags": stats_from_sequence([known[0], known[1], known[1], known[2], "never-seen"])}
    b = henc.encode([user])
    tag_field = [s.name for s in henc.specs].index("clicked_tags")
    ids = b.ids[tag_field][0]
    assert henc.tags.token(int(ids[0])) == known[1] and b.counts[tag_field][0, 0] == 2.0
    # ties by recency: the unknown value (the OOV bucket) is the most recent, then known[2], then known[0]
    assert [henc.tags.token(int(i)) for i in ids[1:4]] == ["<oov>", known[2], known[0]]
    assert b.unknown[0] == {"clicked_tags": ["never-seen"]}
    assert b.hist_mask[0].sum() == 3 and b.hist_feats.shape[-1] == len(PHI_NAMES)
    j = list(b.hist_ids[0]).index(henc.tags.lookup[known[1]])
    assert b.hist_feats[0, j, 0] == pytest.approx(math.log1p(2.0))


def test_unknown_values_only_and_empty_users_encode_to_empty_histories() -> None:
    data = synthetic_dataset(n_users=8, events=20, only_positive=True)
    split = split_protocol(data, seed=0)
    henc, _ = _encoder(split, split.indices(test=False))
    b = henc.encode([{}, {"clicked_tags": FieldStats(["zz"], [1.0], [1.0], [1.0])}])
    assert b.hist_mask.sum() == 0 and all(m.sum() <= 1 for m in b.masks)
    with pytest.raises(KeyError, match="unknown field"):
        henc.parse({"nope": ["a"]})


def test_options_saved_before_the_cross_layer_was_one_read_as_the_papers_layer() -> None:
    assert HistoryOptions().cross == "none"
    assert HistoryOptions.from_dict({"counts": True}).cross == "cf"
    assert HistoryOptions.from_dict(HistoryOptions().to_dict()) == HistoryOptions()


@pytest.mark.parametrize(
    "options",
    [
        HistoryOptions(),
        HistoryOptions(counts=False),
        HistoryOptions(history=False),
        HistoryOptions(tie=True),
        HistoryOptions(tower=False),
        HistoryOptions(cross="cf"),
    ],
)
def test_every_ablation_scores_all_tags_and_ignores_padded_history_slots(options: HistoryOptions) -> None:
    data = synthetic_dataset(n_users=8, events=20)
    split = split_protocol(data, seed=0)
    henc, seqs = _encoder(split, split.indices(test=False))
    model = build_history_model(henc.specs, len(henc.tags), TINY_HIST, options, seed=0).eval()
    b = encode_users(seqs, henc, np.arange(4))
    t = [torch.from_numpy(x) for x in (b.hist_ids, b.hist_feats, b.hist_mask)]
    args = (
        [torch.from_numpy(x) for x in b.ids],
        [torch.from_numpy(x) for x in b.masks],
        [torch.from_numpy(x) for x in b.counts],
    )
    s = model.scores(*args, *t)
    assert s.shape == (4, len(henc.tags)) and torch.isfinite(s).all()
    junk = t[1].clone()
    junk[t[2] == 0] = 99.0  # padded history slots hold garbage
    assert torch.allclose(model.scores(*args, t[0], junk, t[2]), s)
    cand = torch.arange(2, len(henc.tags))
    u = model.user_vector(*args)[0]
    assert torch.allclose(model.candidate_scores(u, cand, *t), s[:, 2:], atol=1e-5)


@pytest.mark.parametrize("loss", ["softmax", "sampled", "joint", "bce"])
def test_all_positive_log_trains_with_each_loss_and_the_run_reads_back(loss: str, tmp_path: Path) -> None:
    data = synthetic_dataset(n_users=16, events=20, only_positive=True)
    split = split_protocol(data, seed=0)
    config = HistoryTrainConfig(preset=TINY_HIST, epochs=2, loss=loss, sampled_negatives=5, augment_cuts=(0.5,))
    result = train_history(split, config, out=tmp_path / "run")
    assert all(np.isfinite(p["loss"]) for p in result.curve[1:]) and result.curve[0]["epoch"] == 0 and result.test
    run = load_run(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"] == "utpm-hist"
    seqs = UserSequences(split, TINY_HIST.N)
    assert result.history_encoder is not None
    batch = encode_users(seqs, result.history_encoder, split.indices(test=True))
    assert isinstance(run.model, HistoryModel) and isinstance(result.model, HistoryModel)
    assert rank_history(run.model, batch, run.tags, 3) == rank_history(result.model, batch, result.tags, 3)


def test_history_fields_count_every_tag_of_an_item_while_c_and_the_vocabulary_take_its_first_n() -> None:
    from utpm.evaluation.yardsticks import history_counts

    data = synthetic_dataset(n_users=12, events=30)
    n = TINY_HIST.N
    assert all(len(ts) == n for ts in data.items["tags"])
    # two more tags on every item, beyond its first N: a request built from the user's events carries them
    data.items["tags"] = [[*ts, f"late{k % 2}", "late-everywhere"] for k, ts in enumerate(data.items["tags"])]
    split = split_protocol(data, seed=0)
    every, first = UserSequences(split, n, all_item_tags=True), UserSequences(split, n)
    late = {"late0", "late1", "late-everywhere"}
    user = next(i for i in range(split.n_users) if "clicked_tags" in first.stats(i))
    counted, cut = every.stats(user)["clicked_tags"], first.stats(user)["clicked_tags"]
    assert "late-everywhere" in counted.values and not late & set(cut.values)
    # the first N tags keep their counts; the late one is on every clicked item
    assert {v: c for v, c in zip(counted.values, counted.count, strict=True) if v not in late} == dict(
        zip(cut.values, cut.count, strict=True)
    )
    assert counted.count[counted.values.index("late-everywhere")] == max(counted.count)
    assert late & set(every.stats(user)[UNCLICKED_FIELD].values)
    for i in range(split.n_users):
        assert every.label_tags(i) == first.label_tags(i) and not late & every.label_tags(i)
    rows = split.indices(test=False)
    assert build_history_vocabularies(split, every, rows, TINY_HIST.H, 1)[1].tokens == (
        build_history_vocabularies(split, first, rows, TINY_HIST.H, 1)[1].tokens
    )
    # the blend start counts the history as the features do; the yardsticks keep the first N
    assert "late-everywhere" in history_counts(split, user, None) and not late & history_counts(split, user, n).keys()
    # the default, and a run saved before the option, count the first N
    assert not HistoryOptions().all_item_tags and not HistoryOptions.from_dict({}).all_item_tags
    assert HistoryOptions.from_dict({"all_item_tags": True}).all_item_tags


def test_users_ranked_block_by_block_get_the_rankings_of_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    import utpm.training.history as training

    split = split_protocol(synthetic_dataset(n_users=60, events=20, seed=2), seed=0)
    config = HistoryTrainConfig(preset=TINY_HIST, epochs=1, augment_cuts=())
    result = train_history(split, config)
    assert result.history_encoder is not None and isinstance(result.model, HistoryModel)
    seqs, rows = UserSequences(split, TINY_HIST.N), np.arange(split.n_users)
    whole = rank_history(result.model, encode_users(seqs, result.history_encoder, rows), result.tags, 5)
    # chunks of 16 users (the least): four of them
    monkeypatch.setattr(training, "RANK_CHUNK_SCORES", 1)
    assert training.rank_chunk(len(result.tags)) == 16 and split.n_users > 48
    assert training.rank_users(result.model, seqs, result.history_encoder, rows, 5) == whole
    # kept for many passes: one ranking chunk per batch, cut to its widest user's slots
    chunks = list(training.encode_ranking_chunks(seqs, result.history_encoder, rows))
    assert [c.size for c in chunks] == [16, 16, 16, 12]
    assert all(c.hist_ids.shape[1] < result.history_encoder.width for c in chunks)
    assert all(c.hist_mask[:, -1].any() for c in chunks)  # nothing a user had was cut
    assert training.rank_chunks(result.model, chunks, result.tags, 5) == whole
    # users sent as their requests (`--served-requests`): chunk by chunk, the rankings of one batch of them
    henc, requests = result.history_encoder, [split.request(i) for i in range(split.n_users)]
    sent_whole = rank_history(result.model, henc.encode([henc.parse(r) for r in requests]), result.tags, 5)
    assert training.rank_requests(result.model, henc, requests, 5) == sent_whole


def test_a_short_training_request_is_what_the_service_parses_from_the_same_list() -> None:
    split = split_protocol(synthetic_dataset(n_users=12, events=30), seed=0)
    seqs = UserSequences(split, TINY_HIST.N)
    for i in range(split.n_users):
        stats = seqs.stats(i)
        short = short_request(stats, 3)
        assert UNCLICKED_FIELD not in short and UNCLICKED_FIELD in stats
        for name, st in stats.items():
            if name.startswith("clicked_"):
                assert short[name] == parse_field(name, st.values[-3:]) and len(short[name]) == min(3, len(st))
    with pytest.raises(ValueError, match="short_requests"):
        HistoryTrainConfig(preset=TINY_HIST, short_requests=1.5)


def test_training_with_short_requests_changes_what_the_residual_learns_from_and_how_epochs_are_chosen(
    tmp_path: Path,
) -> None:
    split = split_protocol(synthetic_dataset(n_users=40, events=40, seed=1), seed=0)
    runs = {}
    for share in (0.0, 1.0):
        config = HistoryTrainConfig(
            preset=TINY_HIST, epochs=2, augment_cuts=(0.5,), short_requests=share, start="blend"
        )
        runs[share] = train_history(split, config, out=tmp_path / f"run{share}")
    assert json.loads((tmp_path / "run1.0" / "config.json").read_text())["short_requests"] == 1.0
    # the same examples in the same order and the residual starting at zero: once it has learnt (epoch 2),
    # only the short requests' features can make the losses differ
    assert runs[0.0].curve[2]["loss"] != runs[1.0].curve[2]["loss"]
    # the stopping score: the validation users' mean Prec@1-3, averaged with their short requests' when
    # trained on them (the same start, epoch 0, scores lower sent as 10 values once each)
    full = [runs[0.0].curve[0][f"val_prec@{k}"] for k in (1, 2, 3)]
    assert runs[0.0].curve[0]["val_score"] == pytest.approx(np.mean(full))
    assert runs[1.0].curve[0]["val_score"] < np.mean(full)


def test_yardsticks_use_the_trainers_training_rows() -> None:
    data = synthetic_dataset(n_users=20, events=20)
    split = split_protocol(data, seed=3)
    tr, va = train_val_rows(split, 0.2, 3)
    perm = np.random.default_rng(3).permutation(split.indices(test=False))
    assert set(va) == set(perm[: round(len(perm) * 0.2)]) and not set(tr) & set(va)
    assert not (set(tr) | set(va)) & set(split.indices(test=True))


def _write(data, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    items = data.items.assign(tags=data.items["tags"].map("|".join), categories=data.items["categories"].map("|".join))
    items.to_csv(out / "items.csv", index=False)
    data.events.to_csv(out / "events.csv", index=False)
    return out


def test_k_fold_tests_every_user_once_per_repetition() -> None:
    from utpm.evaluation.experiment import make_split

    data = synthetic_dataset(n_users=15, events=10)
    seen: list[str] = []
    for fold in range(3):
        split = make_split(data, 3 + fold, folds=3)  # repetition 1
        seen += [str(u) for u in split.user_ids[split.is_test]]
    assert sorted(seen) == sorted(str(u) for u in make_split(data, 0, folds=3).user_ids)


def test_experiment_reports_three_yardsticks_intervals_and_personalisation(tmp_path: Path) -> None:
    from utpm.evaluation.experiment import run_experiment

    path = _write(synthetic_dataset(n_users=20, events=12, only_positive=True), tmp_path / "data")
    result = run_experiment(
        path, ["utpm-hist"], ["default"], 1, (1, 2), "tiny", epochs=1, workers=1, folds=2, repeats=1,
        variants=[(("dim", 8), ("max_values", 5), ("history", False))],
    )  # fmt: skip
    rows = result.intervals((1, 2), n_boot=200)
    assert {r["model"] for r in rows if r["yardstick"]} == {"mostpop", "histfreq", "blend"}
    model_rows = [r for r in rows if not r["yardstick"]]
    assert {r.get("variant", "") for r in model_rows} == {"", "dim=8,max_values=5,history=False"}
    assert {r["loss"] for r in model_rows} == {DEFAULT_HISTORY_LOSS}  # a variant changes only what it names
    for r in rows:
        assert {"model", "loss", "k", "mean", "std", "n_seeds", "yardstick", "ci95"} <= set(r)
        assert r["n_seeds"] == 2 and r["ci95"][0] <= r["mean"] <= r["ci95"][1]
    assert all(set(r["vs"]) == {"mostpop", "histfreq", "blend"} for r in model_rows)
    personal = result.personalisation()
    assert all(0.0 <= p["jaccard"] <= 1.0 and p["distinct_tags"] >= 1 for p in personal)
    # every trained run records its validation users' Prec@K, which the report shows per variant
    trained = [r for r in result.runs if not r["yardstick"]]
    assert all(0.0 <= r[f"val_prec@{k}"] <= 1.0 for r in trained for k in (1, 2))
    val = result.summary((1, 2), "val_prec")
    assert {r.get("variant", "") for r in val} == {"", "dim=8,max_values=5,history=False"}
    assert all(r["n_seeds"] == 2 and not r["yardstick"] for r in val)
    from utpm.evaluation.report import _validation

    table = "\n".join(_validation(result, (1, 2)))
    assert "utpm-hist [dim=8,max_values=5,history=False]" in table and "validation users" in table
    # and each variant paired with the default run of the same fold
    pairs = result.variant_differences((1, 2))
    assert list(pairs) == ["dim=8,max_values=5,history=False"]
    assert all(d["runs"] == 2 for d in pairs["dim=8,max_values=5,history=False"].values())
    assert table.count("of 2)") == 2  # one cell per K in the report's paired table
    # the blend's popularity count, chosen per run, is in each blend row and summed up in the report
    counts = [r["blend_popularity"] for r in result.runs if r["model"] == "blend"]
    assert len(counts) == 2 and set(counts) <= {"events", "users"}
    from utpm.evaluation.report import render

    text = render(result, (1, 2), None, None, None, "utpm experiment")
    assert f"counted users in {counts.count('users')} of 2 runs" in text
    # each default-model run records the early stopping's epoch before the epoch gate; the report counts both
    assert all(r["best_epoch_ungated"] >= r["best_epoch"] >= 0 for r in trained)
    kept = sum(r["best_epoch"] > 0 for r in trained)
    chose = sum(r["best_epoch_ungated"] > 0 for r in trained)
    assert f"kept a trained epoch in {kept} of 4 runs; the early stopping had chosen one in {chose}" in text


def test_with_planted_interests_the_experiment_adds_the_planted_references(tmp_path: Path) -> None:
    """truth.csv (synthetic data) adds `planted-first` and `planted-seen-first`, reference rows: flagged
    as no model, `planted-first` ranked with the planted interests first (so its recovery@1 is 1), both
    left out of the "highest mean" line and shown in the gaps."""
    from utpm.evaluation.experiment import ExperimentResult, yardstick_runs
    from utpm.evaluation.report import _best, _gaps

    data = synthetic_dataset(n_users=20, events=12)
    path = _write(data, tmp_path / "data")
    tags = sorted({t for ts in data.items["tags"] for t in ts})
    users = sorted(data.events["user_id"].unique())
    (path / "truth.csv").write_text("user_id,tag\n" + "".join(f"{u},{tags[-1]}\n" for u in users))
    runs = yardstick_runs(str(path), [0, 1], (1, 2), max_tags=3, folds=2)
    planted = [r for r in runs if r["model"] == "planted-first"]
    assert len(planted) == 2 and all(r["yardstick"] and r["recovery@1"] == 1.0 for r in planted)
    assert {r["model"] for r in runs} == {"mostpop", "histfreq", "blend", "planted-first", "planted-seen-first"}
    result = ExperimentResult(dataset=str(path), protocol={}, runs=runs)
    assert all(r["yardstick"] for r in result.summary((1, 2)))
    assert "planted" not in _best(result, (1, 2), "prec")
    # a model row that is the blend: its gap to the reference is the blend's headroom
    result.runs += [{**r, "model": "m", "loss": "x", "yardstick": False} for r in runs if r["model"] == "blend"]
    rows = [r for r in result.intervals((1, 2), n_boot=50) if not r["yardstick"]]
    assert all(set(r["vs"]) == {"mostpop", "histfreq", "blend", "planted-first", "planted-seen-first"} for r in rows)
    assert all(r["vs"]["blend"]["gap"] == 0.0 for r in rows)
    gaps = "\n".join(_gaps(result, (1, 2), "prec"))
    assert "| m | x | planted-first |" in gaps and "| m | x | planted-seen-first |" in gaps


def test_personalisation_of_identical_and_disjoint_lists() -> None:
    from utpm.evaluation.personalisation import personalisation

    same = personalisation([["a", "b"]] * 4, k=2)
    assert same["jaccard"] == 1.0 and same["top1_share"] == 1.0 and same["distinct_tags"] == 2
    apart = personalisation([["a", "b"], ["c", "d"]], k=2)
    assert apart["jaccard"] == 0.0 and apart["top1_share"] == 0.5


def test_amazon_adapter_writes_an_all_positive_data_set(tmp_path: Path) -> None:
    from utpm.data.amazon import prepare_amazon
    from utpm.data.errors import DataError
    from utpm.data.loading import load_dataset

    src = tmp_path / "src"
    src.mkdir()
    (src / "Beauty.txt").write_text("1 1 2 3\n2 2 3 4 1\n")
    (src / "Beauty_item2attributes.json").write_text(json.dumps({"1": [5, 6], "2": [6], "3": [7], "4": []}))
    report = prepare_amazon(src, tmp_path / "out")
    data = load_dataset(tmp_path / "out")
    assert report.events == 7 and (data.events["label"] == 1).all() and report.tags == 3
    assert data.items.set_index("item_id").loc["1", "tags"] == ["a5", "a6"]
    assert list(data.events[data.events.user_id == "2"].sort_values("timestamp").item_id) == ["2", "3", "4", "1"]
    (src / "Beauty.txt").write_text("7\n")
    with pytest.raises(DataError, match="at least one item"):
        prepare_amazon(src, tmp_path / "out2")


def test_served_requests_rank_each_runs_test_users_from_their_requests_and_pair_them_with_its_evaluation(
    tmp_path: Path,
) -> None:
    """--served-requests: per utpm-hist run a row `utpm-hist (served)` over the same test users,
    ranked from `ProtocolSplit.request` as the service parses it, with its paired gap to the run's
    own evaluation next to the yardsticks' (in the JSON's rows and the report's gaps table)."""
    from utpm.evaluation.experiment import SERVED_MODEL, make_split, run_experiment
    from utpm.evaluation.report import render

    data = synthetic_dataset(n_users=20, events=12, only_positive=True)
    path = _write(data, tmp_path / "data")
    result = run_experiment(
        path, ["utpm-hist"], ["default"], 1, (1, 2), "tiny", epochs=1, workers=1, folds=2, served=True
    )
    served = sorted((r for r in result.runs if r["model"] == SERVED_MODEL), key=lambda r: r["seed"])
    evaluated = sorted((r for r in result.runs if r["model"] == "utpm-hist"), key=lambda r: r["seed"])
    assert [r["seed"] for r in served] == [r["seed"] for r in evaluated] == [0, 1]
    for s, e in zip(served, evaluated, strict=True):
        assert s["per_user"]["users"] == e["per_user"]["users"] and s["loss"] == e["loss"]
        split = make_split(data, s["seed"], folds=2)
        assert len(s["per_user"]["users"]) == sum(bool(split.clicked_tags(int(i), 3)) for i in split.indices(test=True))
    rows = [r for r in result.intervals((1, 2), n_boot=100) if r["model"] == SERVED_MODEL]
    assert len(rows) == 2 and all(set(r["vs"]) == {"mostpop", "histfreq", "blend", "evaluated"} for r in rows)
    text = render(result, (1, 2), None, None, None, "utpm experiment")
    assert "| utpm-hist (served) | bce | evaluated |" in text and "| utpm-hist | bce | evaluated |" not in text
    # without the option, no served rows and nothing paired with `evaluated`
    plain = run_experiment(path, ["utpm-hist"], ["default"], 1, (1,), "tiny", epochs=1, workers=1, folds=2)
    assert SERVED_MODEL not in {r["model"] for r in plain.runs}


def test_the_paper_experiment_still_runs_with_seeds_and_renders(tmp_path: Path) -> None:
    from utpm.evaluation.experiment import run_experiment
    from utpm.evaluation.report import render

    path = _write(synthetic_dataset(n_users=20, events=12), tmp_path / "data")
    seen: list[tuple[int, int, str]] = []
    result = run_experiment(
        path, ["af2-cf"], ["joint"], 2, (1, 2), "tiny", epochs=1, workers=1,
        progress=lambda done, total, label: seen.append((done, total, label)),
    )  # fmt: skip
    # every job reports its start and each epoch from its worker process, then its end
    for seed in (0, 1):
        mine = [label for _, _, label in seen if label.startswith(f"af2-cf/joint/seed{seed}:")]
        assert mine[0].endswith(": started") and mine[-1].endswith(": done")
        assert any(": epoch 1/1, validation score " in label for label in mine)
    assert seen[-1][:2] == (2, 2)
    rows = result.intervals((1, 2), n_boot=100)
    assert {r["model"] for r in rows} == {"af2-cf", "mostpop", "histfreq", "blend"}
    assert all(r["n_seeds"] == 2 for r in rows)
    text = render(result, (1, 2), None, None, None, "utpm experiment")
    assert "Table 3: cross features (joint loss)" in text and "| af2-cf | joint | blend |" in text


def _fitted_encoder() -> tuple[HistoryEncoder, UserSequences, np.ndarray]:
    data = synthetic_dataset(n_users=24, events=30)
    split = split_protocol(data, seed=0)
    rows = split.indices(test=False)
    henc, seqs = _encoder(split, rows)
    options = HistoryOptions(neighbours=3, item_neighbours=5)
    stats = fit_tag_stats(seqs, rows, henc.tags, options)
    items = fit_item_tags(seqs, rows, henc.tags, options)
    return HistoryEncoder(henc.encoder, henc.tags, 10, stats, 5, items, item_candidates=4), seqs, rows


def test_tag_stats_keep_the_top_m_positive_lifts_and_the_repeat_propensity() -> None:
    # ids 2..5; users with 2 in their history go on to 3, never to 4; 5 repeats itself
    hist = [np.array([2]), np.array([2]), np.array([2, 5]), np.array([5]), np.array([4])]
    labels = [np.array([3]), np.array([3, 5]), np.array([3, 5]), np.array([5]), np.array([4])]
    st = TagStats.fit(hist, labels, n_tags=6, neighbours=1, shrinkage=1.0)
    row = slice(st.indptr[2], st.indptr[3])
    assert st.indices[row].tolist() == [3] and st.lift[row][0] > 0  # top 1 only, 2 -> 3
    assert st.repeat[5] > 0 > st.repeat[2] and st.repeat[3] == 0.0  # 3 never in a history
    assert st.popular[0] in (3, 5) and set(st.popular.tolist()) == {3, 4, 5}
    ids, score = reference_transition(st, np.array([2, 5]), np.array([0.5, 0.5]))
    assert 3 in ids.tolist() and 2 not in ids.tolist() and score[ids.tolist().index(3)] > 0


def test_transition_features_are_the_same_from_a_list_and_from_value_counts() -> None:
    henc, _, _ = _fitted_encoder()
    assert henc.stats is not None
    known = henc.tags.tokens[2:6]
    as_list = henc.encode([{"clicked_tags": parse_field("clicked_tags", [known[0], known[1], known[0], known[2]])}])
    as_dict = henc.encode([{"clicked_tags": parse_field("clicked_tags", {known[1]: 1, known[0]: 2, known[2]: 1})}])
    k = PHI_NAMES.index("transition")
    for b in (as_list, as_dict):
        assert b.hist_ids.shape[1] == henc.width
    order = [np.argsort(b.hist_ids[0][b.hist_mask[0] > 0]) for b in (as_list, as_dict)]
    ids = [b.hist_ids[0][b.hist_mask[0] > 0][o] for b, o in zip((as_list, as_dict), order, strict=True)]
    assert ids[0].tolist() == ids[1].tolist() and len(ids[0]) > 3  # history plus proposed tags
    for name in ("transition", "repeat_propensity", "log_label_rate", "log1p_history_length", "log1p_count"):
        j = PHI_NAMES.index(name)
        a, b = (x.hist_feats[0][x.hist_mask[0] > 0][o, j] for x, o in zip((as_list, as_dict), order, strict=True))
        assert np.allclose(a, b), name
    assert np.abs(as_list.hist_feats[0, :, k]).sum() > 0


def test_history_encoder_arrays_round_trip_and_encode_the_same() -> None:
    henc, seqs, rows = _fitted_encoder()
    arrays = henc.to_arrays()
    assert arrays and all(isinstance(v, np.ndarray) for v in arrays.values())
    back = HistoryEncoder.from_arrays(henc.encoder, henc.tags, henc.max_history_tags, arrays)
    a, b = encode_users(seqs, henc, rows[:6]), encode_users(seqs, back, rows[:6])
    assert np.array_equal(a.hist_ids, b.hist_ids) and np.array_equal(a.hist_feats, b.hist_feats)
    assert back.items is not None and back.item_candidates == 4 and back.width == henc.width == 10 + 5 + 4
    assert np.abs(a.hist_feats[:, :, PHI_NAMES.index("item_neighbour_score")]).sum() > 0  # the items are read
    plain = HistoryEncoder.from_arrays(henc.encoder, henc.tags, 10, {})
    assert plain.stats is None and plain.to_arrays() == {} and plain.width == 10


def test_augmented_label_windows_have_the_protocols_proportions() -> None:
    data = synthetic_dataset(n_users=8, events=40)
    split = split_protocol(data, seed=0)
    seqs = UserSequences(split, TINY_HIST.N, label_ratio=0.25)
    i = 0
    n = len(seqs.items[i])
    assert seqs.label_end(i, int(seqs.n_hist[i])) == n  # the protocol's cut: the rest of the log
    assert seqs.label_end(i, 8) == 10 and seqs.label_end(i, 1) == 2
    assert UserSequences(split, TINY_HIST.N).label_end(i, 8) == n


def test_movielens_all_positive_variant_keeps_every_rating_as_a_click(tmp_path: Path) -> None:
    from utpm.data.movielens import prepare_movielens

    src = Path(__file__).resolve().parents[2] / "data" / "movielens-small"
    paper = prepare_movielens(src, tmp_path / "paper")
    allpos = prepare_movielens(src, tmp_path / "allpos", all_positive=True)
    assert allpos.negatives == 0 and allpos.dropped_ratings == 0
    assert allpos.positives == paper.positives + paper.negatives + paper.dropped_ratings


def test_bootstrap_intervals_do_not_depend_on_the_order_the_runs_finished_in() -> None:
    """`utpm experiment` collects runs as their jobs finish; the seeded bootstrap must resample the
    same users whatever that order (it did not: a rerun moved an interval in its third decimal)."""
    from utpm.evaluation.experiment import ExperimentResult

    rng = np.random.default_rng(0)
    runs = []
    for seed in range(4):
        users = [f"u{j}" for j in rng.permutation(30)[:20].tolist()]
        for model, loss in (("m", "x"), ("mostpop", "-")):
            values = rng.integers(0, 2, len(users)).astype(float).tolist()
            per_user = {"users": users, "prec@1": values}
            runs.append({"model": model, "loss": loss, "seed": seed, "yardstick": model == "mostpop", "prec@1": 0.5})
            runs[-1]["per_user"] = per_user
    first = ExperimentResult(dataset="d", protocol={}, runs=runs).intervals((1,), n_boot=200)
    again = ExperimentResult(dataset="d", protocol={}, runs=runs[::-1]).intervals((1,), n_boot=200)
    key = {(r["model"], r["k"]): r for r in again}
    for row in first:
        other = key[(row["model"], row["k"])]
        assert row["ci95"] == other["ci95"] and row.get("vs") == other.get("vs")
    assert any(r.get("vs") for r in first)


def test_a_request_built_from_the_log_carries_the_counts_a_training_example_reads() -> None:
    """At the protocol's cut, each value `ProtocolSplit.request` sends has the count the training
    example's field stats give it (the request keeps the most recent `max_history` values; the
    training example has all of them; both count every tag of an item, as `all_item_tags` trains).
    Sent as lists, every count read was 1."""
    split = split_protocol(synthetic_dataset(n_users=20, events=30), seed=0, max_history=5)
    seqs = UserSequences(split, TINY_HIST.N, all_item_tags=True)
    repeated = 0
    for i in range(split.n_users):
        example, sent = seqs.stats(i), split.request(i)
        for name in ("clicked_tags", UNCLICKED_FIELD):
            if name not in example:
                assert name not in sent
                continue
            trained = dict(zip(example[name].values, example[name].count, strict=True))
            served = parse_field(name, sent[name])
            assert served.values == example[name].values[-5:]
            assert served.count == [trained[v] for v in served.values]
            repeated += any(c > 1 for c in served.count)
    assert repeated > 0  # some counts are above 1


def test_a_training_example_reads_the_clicked_items_its_request_carries() -> None:
    """A training example at the protocol's cut gives every clicked item; of them the item
    neighbours read the most recent `recent_items`, which are what `ProtocolSplit.request` sends."""
    n = 4
    split = split_protocol(synthetic_dataset(n_users=20, events=30), seed=0, max_items=n)
    rows = np.arange(split.n_users)
    henc, seqs = _encoder(split, rows)
    items = fit_item_tags(seqs, rows, henc.tags, HistoryOptions(recent_items=n))
    longer = 0
    for i in range(split.n_users):
        example = seqs.stats(i).get(ITEM_FIELD)
        every = example.values if example else []
        sent = split.request(i).get(ITEM_FIELD, [])
        assert every[-n:] == sent
        longer += len(every) > n
        read, served = (items.tag_scores(items.items.ids(v)) for v in (every, sent))
        assert [x.tolist() for x in read] == [x.tolist() for x in served]
    assert longer > 0  # the cap binds for some users
