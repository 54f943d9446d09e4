"""The default model's tuned linear start (`utpm.training.start`) and its use in `train_history`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.datasets import synthetic_dataset
from utpm.data.protocol import split_protocol
from utpm.evaluation.metrics import precision_at_k
from utpm.features.history import PHI_NAMES, HistoryBatch, HistoryEncoder
from utpm.features.vocab import Vocabulary
from utpm.models.history import HistoryOptions, build_history_model
from utpm.models.presets import get_preset
from utpm.ranking import top_k
from utpm.training.history import (
    HistoryTrainConfig,
    UserSequences,
    build_history_vocabularies,
    encode_users,
    fit_tag_stats,
    history_preset,
    prepare_history,
    rank_history,
    train_history,
)
from utpm.training.start import StartProblem, tune_start

TINY_HIST = history_preset(get_preset("tiny"), dim=8, max_values=6)
TRANSITION = PHI_NAMES.index("transition")


def _planted_problem(seed: int = 0, users: int = 60) -> tuple[StartProblem, Vocabulary]:
    """Users whose label tag is the candidate with the highest transition score, while the blend's
    counts point elsewhere: a start that weighs the transition feature wins."""
    rng = np.random.default_rng(seed)
    tags = Vocabulary.build([f"t{j:02d}" for j in range(30)])
    n_tags, m = len(tags), 8
    hist_ids = np.zeros((users, m), np.int64)
    feats = np.zeros((users, m, len(PHI_NAMES)), np.float32)
    clicked = []
    for b in range(users):
        cand = rng.choice(np.arange(2, n_tags), m, replace=False)
        hist_ids[b] = cand
        feats[b, :, 0] = np.log1p(rng.integers(1, 5, m))
        feats[b, :, 1] = feats[b, :, 0]
        feats[b, :, TRANSITION] = rng.random(m)
        clicked.append({tags.token(int(cand[np.argmax(feats[b, :, TRANSITION])]))})
    batch = HistoryBatch([], [], [], hist_ids, feats, np.ones((users, m), np.float32))
    bias = np.log1p(rng.integers(0, 20, n_tags)).astype(np.float32)
    return StartProblem.build(batch, bias, clicked, tags), tags


def test_tuned_start_never_scores_below_its_start_is_deterministic_and_finds_the_useful_feature() -> None:
    problem, _ = _planted_problem()
    start = {"log1p_count": 1.0, "log1p_distinct_items": 1.0}
    tuned = tune_start(problem, start)
    again = tune_start(problem, start)
    assert tuned == again  # deterministic
    assert tuned.score >= tuned.start_score
    w0 = np.zeros(len(PHI_NAMES))
    w0[:2] = 1.0
    assert problem.score(1.0, w0, (1, 2, 3)) == pytest.approx(tuned.start_score)
    assert problem.score(tuned.w_bias, tuned.vector(), (1, 2, 3)) == pytest.approx(tuned.score)
    assert tuned.weights["transition"] > 0 and tuned.score > tuned.start_score + 0.2
    assert tuned.users == 60


def test_ties_go_to_the_smaller_weight() -> None:
    problem, _ = _planted_problem()
    # a feature that is 0 everywhere changes nothing: it stays at 0 whatever the grid
    tuned = tune_start(problem, {"log1p_count": 1.0}, features=("in_most_recent_H",), tune_bias=False)
    assert tuned.weights["in_most_recent_H"] == 0.0 and tuned.score == tuned.start_score


def test_top_over_own_tags_and_the_best_others_ranks_as_scoring_every_tag() -> None:
    """`top` scores each user's own tags (candidates, changed b_t) and the k best others only; with
    ties in b_t and in the scores, changes of b_t on candidates and elsewhere, padding, and every sign
    of w_bias, it returns what scoring every tag returns (values exact in float32, so no rounding)."""
    rng = np.random.default_rng(3)
    users, m, k = 50, 6, 3
    tags = Vocabulary.build([f"t{j:02d}" for j in range(38)])
    n_tags = len(tags)
    hist_ids = np.zeros((users, m), np.int64)
    mask = np.zeros((users, m), np.float32)
    deltas = []
    for b in range(users):
        n = int(rng.integers(0, m + 1))
        hist_ids[b, :n] = rng.choice(np.arange(2, n_tags), n, replace=False)
        mask[b, :n] = 1.0
        changed = rng.choice(np.arange(2, n_tags), 3, replace=False)
        deltas.append((changed, rng.choice([-1.0, 0.5, 2.0], 3).astype(np.float32)))
    feats = rng.integers(0, 3, (users, m, len(PHI_NAMES))).astype(np.float32)
    bias = rng.integers(0, 4, n_tags).astype(np.float32)
    clicked = [{tags.token(int(rng.integers(2, n_tags)))} for _ in range(users)]
    batch = HistoryBatch([], [], [], hist_ids, feats, mask)
    problem = StartProblem.build(batch, bias, clicked, tags, deltas)
    for w_bias in (2.0, 1.0, 0.0, -1.0):
        for _ in range(3):
            w = rng.choice([-1.0, 0.0, 0.5, 2.0], len(PHI_NAMES))
            every = np.tile(bias, (users, 1))
            for b, (ids, vals) in enumerate(deltas):
                every[b, ids] += vals
            every *= np.float32(w_bias)
            h = (feats @ w.astype(np.float32)) * mask
            np.add.at(every, (np.repeat(np.arange(users), m), hist_ids.ravel()), h.ravel())
            every[:, : Vocabulary.OOV + 1] = -np.inf
            assert torch.equal(problem.top(w_bias, w, k), torch.from_numpy(top_k(every, k)))


def test_the_problem_scores_what_the_model_computes_at_that_start() -> None:
    """StartProblem's Prec@K equals the model's own ranking (rank_history) started at the same weights."""
    data = synthetic_dataset(n_users=24, events=20)
    split = split_protocol(data, seed=0)
    rows = split.indices(test=False)
    seqs = UserSequences(split, TINY_HIST.N)
    enc, tags = build_history_vocabularies(split, seqs, rows, TINY_HIST.H, 1)
    options = HistoryOptions()
    henc = HistoryEncoder(enc, tags, 10, fit_tag_stats(seqs, rows, tags, options), 5)
    batch = encode_users(seqs, henc, rows)
    clicked = [split.clicked_tags(int(i), TINY_HIST.N) for i in rows]
    bias = np.log1p(np.arange(len(tags), dtype=np.float32))
    problem = StartProblem.build(batch, bias, clicked, tags)
    model = build_history_model(henc.specs, len(tags), TINY_HIST, options, seed=0)
    rng = np.random.default_rng(1)
    for _ in range(3):
        w_bias = float(rng.choice([0.5, 1.0, 2.0]))
        weights = {n: float(rng.choice([-1.0, 0.0, 0.5, 2.0])) for n in PHI_NAMES}
        model.start_at(torch.from_numpy(w_bias * bias), weights)
        ranked = rank_history(model, batch, tags, 3)
        expected = {k: precision_at_k(ranked, clicked, k).value for k in (1, 2, 3)}
        got = problem.precision(w_bias, np.asarray([weights[n] for n in PHI_NAMES]), (1, 2, 3))
        assert got == pytest.approx(expected, abs=1e-6)


def test_train_history_keeps_the_tuned_start_only_if_it_does_as_well_as_the_blend_on_validation(tmp_path) -> None:
    data = synthetic_dataset(n_users=40, events=24)
    split = split_protocol(data, seed=0)
    config = HistoryTrainConfig(preset=TINY_HIST, epochs=1, augment_cuts=(0.5,))
    first = train_history(split, config, out=tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["start"] == first.start
    second = train_history(split, config)
    st = first.start
    assert st == {**second.start, "seconds": st["seconds"]}  # deterministic (but for the time taken)
    assert st["kind"] in ("tuned", "blend") and st["tuning_examples"] > 0
    assert first.curve[0]["val_score"] == pytest.approx(max(st["val_score"], st["val_score_blend"]))
    assert first.curve[0]["val_score"] >= st["val_score_blend"]
    blend = train_history(split, HistoryTrainConfig(preset=TINY_HIST, epochs=1, augment_cuts=(0.5,), start="blend"))
    assert blend.start["kind"] == "blend" and set(blend.start["weights"]) == {"log1p_count", "log1p_distinct_items"}
    assert blend.curve[0]["val_score"] == pytest.approx(st["val_score_blend"])
    with pytest.raises(ValueError, match="unknown start"):
        HistoryTrainConfig(preset=TINY_HIST, start="nope")


def test_bench_start_scores_every_starting_point_on_validation_users_and_the_oracle_knows_the_truth(
    tmp_path,
) -> None:
    from utpm.evaluation.start_check import (
        CANDIDATES,
        STARTING_POINTS,
        candidate_gap,
        check_start,
        summarise,
        train_gaps,
    )

    data = synthetic_dataset(n_users=30, events=24)
    out = tmp_path / "data"
    out.mkdir()
    items = data.items.assign(tags=data.items["tags"].map("|".join), categories=data.items["categories"].map("|".join))
    items.to_csv(out / "items.csv", index=False)
    data.events.to_csv(out / "events.csv", index=False)
    # a "truth" that is each user's own label tags: the oracle can only gain
    from utpm.data.loading import load_dataset
    from utpm.evaluation.experiment import make_split

    split = make_split(load_dataset(out), 0, 3)
    truth = {str(split.user_ids[i]): split.clicked_tags(i, TINY_HIST.N) for i in range(split.n_users)}
    rows = check_start(out, "tiny", 3, [0], truth)
    assert len(rows) == 1 and rows[0]["val_users"] > 0 and rows[0]["item_neighbours"] == 200
    names = set(STARTING_POINTS)  # the oracle too: this data has a truth
    assert {"half-credit", "half-items", "oracle"} <= names
    for name in names:
        assert all(0.0 <= rows[0][name][k] <= 1.0 for k in (1, 2, 3))
    assert rows[0]["oracle"][1] >= rows[0]["blend"][1]
    assert set(summarise(rows)) == names
    assert all(w in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0) for w in rows[0]["train_blend_weights"])
    assert rows[0]["train_count"]["popularity"] in ("events", "users")
    for cand in CANDIDATES:
        weights = rows[0][f"{cand}_weights"]
        assert len(weights) == 2 and all(set(w) == {"a", "c", "e"} for w in weights)
        # the paired gap is over the users the candidate was scored on, its mean the candidate's - half-blend's
        gap = candidate_gap(rows, cand)
        for k in (1, 2, 3):
            assert len(rows[0][f"{cand}_gaps"][k]) == rows[0]["val_users"]
            assert gap[k]["low"] <= gap[k]["mean"] <= gap[k]["high"]
            assert gap[k]["mean"] == pytest.approx(rows[0][f"half-{cand}"][k] - rows[0]["half-blend"][k], abs=1e-6)
    # the choices made on the training users, paired with the half-blend over the same users
    for name, by_k in train_gaps(rows).items():
        for k in (1, 2, 3):
            assert len(rows[0]["train_gaps"][name][k]) == rows[0]["val_users"]
            assert by_k[k]["mean"] == pytest.approx(rows[0][name][k] - rows[0]["half-blend"][k], abs=1e-6)


def test_credit_moves_a_clicked_items_click_to_the_tag_the_user_keeps_clicking() -> None:
    from utpm.evaluation.start_check import credit_items

    # "a" is on every clicked item, "b", "c", "d" each ride along once; "e" is alone on its item
    items = [{"a", "b"}, {"a", "c"}, {"a", "d"}, {"e"}]
    assert credit_items(items, sweeps=0) == {"a": 3, "b": 1, "c": 1, "d": 1, "e": 1}
    credit = credit_items(items)
    assert credit["a"] > 2.95 and all(credit[t] < 0.02 for t in "bcd")
    assert credit["a"] == pytest.approx(2.988, abs=5e-4) and credit["b"] == pytest.approx(0.004, abs=5e-4)  # docs
    assert credit["e"] == pytest.approx(1.0)  # nothing to share with
    assert sum(credit.values()) == pytest.approx(len(items))  # every click is credited once
    assert credit_items([{"x", "y"}]) == {"x": 0.5, "y": 0.5}  # no evidence either way: an even split


def test_the_candidate_blend_without_its_candidate_ranks_as_the_models_blend_start() -> None:
    """`half-credit` and `half-items` are comparable to `half-blend`: with e = 0 the yardstick's ranking code gives the
    same Prec@k as the model's arithmetic (StartProblem) on the same users and weights."""
    from utpm.evaluation.start_check import KS, _CandidateBlend, _grid_blend, credited_counts
    from utpm.evaluation.yardsticks import history_counts, tag_order

    split = split_protocol(synthetic_dataset(n_users=40, events=30), seed=0)
    config = HistoryTrainConfig(preset=TINY_HIST, seed=0, early_stop_ks=KS, eval_ks=KS)
    st = prepare_history(split, config)
    n = TINY_HIST.N
    rows = [int(i) for i in st.val_rows if split.clicked_tags(int(i), n)]
    clicked = {i: split.clicked_tags(i, n) for i in rows}
    order = tag_order(split, st.train_rows, n)
    blend = _CandidateBlend(split, st.train_rows, st.blend.popularity, n, rows, clicked, order)
    _, (a, c, e) = blend.choose(rows)
    scores = blend.per_user(rows, (a, c, e))
    # either candidate's scan chooses the same blend, and at e = 0 ranks as it
    assert blend.choose(rows, "items")[1] == (a, c, e)
    assert blend.per_user(rows, (a, c, 0.0), "items") == scores
    assert e == 0.0 and (a, c) == tuple(st.blend[:2])  # the same grid and ties as `tune_blend`
    batch = encode_users(st.seqs, st.henc, np.asarray(rows))
    problem = StartProblem.build(batch, st.bias, list(clicked.values()), st.tags)
    w = np.zeros(len(PHI_NAMES))
    w[:2] = (a, c)
    means = {k: float(np.mean(v)) for k, v in scores.items()}
    assert means == pytest.approx(problem.precision(1.0, w, KS), abs=1e-6)
    # user by user too: the yardstick's Prec@k of each user equals the model arithmetic's
    assert all(problem.per_user(1.0, w, KS)[k].tolist() == pytest.approx(scores[k], abs=1e-6) for k in KS)
    # `train-blend`'s grid search in the model's arithmetic picks what `tune_blend` picks on the same users
    assert tuple(_grid_blend(problem)[1][:2]) == (a, c)
    # and the credit is a history tag's: the same tags as its counts
    assert all(credited_counts(split, i, n).keys() == history_counts(split, i, n).keys() for i in rows)


def test_the_start_counts_popularity_as_the_blend_chose_on_validation_users() -> None:
    """b_t = log1p(popularity) counts what the tuned blend chose: with one crawler among the training
    users, users rather than label items, so b_t ranks the tag most users click above the crawler's."""
    from tests.utpm.test_evaluation import _heavy_user_data
    from utpm.training.history import prepare_history

    split = split_protocol(_heavy_user_data(), seed=0, test_fraction=0.0)
    st = prepare_history(split, HistoryTrainConfig(preset=TINY_HIST, epochs=1))
    assert "bot" in {str(split.user_ids[i]) for i in st.train_rows}
    assert st.blend.popularity == "users"
    bias = {t: float(st.bias[st.tags.lookup[t]]) for t in ("common", "botty")}
    assert bias["common"] > bias["botty"] > 0
    assert bias["botty"] == pytest.approx(np.log1p(1.0))  # one user, however many events
    # `bench start`'s train-count rebuilds the tables for either count: for the chosen one, the setup's own
    from utpm.training.history import popularity_tables

    pop, own_pop = popularity_tables(split, st.train_rows, st.tags, TINY_HIST.N, "users")
    assert np.array_equal(pop, st.pop) and own_pop.keys() == st.own_pop.keys()
    assert all(np.array_equal(own_pop[i][0], st.own_pop[i][0]) for i in own_pop)
    assert all(np.array_equal(own_pop[i][1], st.own_pop[i][1]) for i in own_pop)
    by_events, _ = popularity_tables(split, st.train_rows, st.tags, TINY_HIST.N, "events")
    assert by_events[st.tags.lookup["botty"]] > by_events[st.tags.lookup["common"]]  # the crawler's count


def test_with_start_items_after_a_request_without_items_gets_the_start_of_a_model_without_them() -> None:
    """`start_items="after"`: every weight but the item score's is tuned on the examples without
    their items, so those weights are the ones a model without item neighbours tunes; "joint" tunes
    them with the items."""
    from dataclasses import replace

    from utpm.training.history import ITEM_FEATURE, tune_linear_start

    split = split_protocol(synthetic_dataset(n_users=60, events=30), seed=0)
    config = HistoryTrainConfig(preset=TINY_HIST, seed=0, history=HistoryOptions(item_neighbours=5))
    after = tune_linear_start(prepare_history(split, config), config)
    plain = replace(config, history=HistoryOptions(item_neighbours=0))
    without = tune_linear_start(prepare_history(split, plain), plain)
    others = {n: w for n, w in after.weights.items() if n != ITEM_FEATURE}
    assert others == {n: w for n, w in without.weights.items() if n != ITEM_FEATURE}
    assert after.w_bias == without.w_bias and without.weights[ITEM_FEATURE] == 0.0
    assert after.start_score == without.start_score  # the blend's, which the items do not move
    joint = replace(config, start_items="joint")
    assert tune_linear_start(prepare_history(split, joint), joint).start_score == after.start_score
    with pytest.raises(ValueError, match="start_items"):
        HistoryTrainConfig(preset=TINY_HIST, start_items="sometimes")
