"""`utpm simulate` end to end: the held-out MovieLens events replayed against a live two-arm service."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.simulate import arms_seed, arms_tags_per_item, arms_test_share, load_held_out, markdown, simulate
from tests.serving import LiveServer, settings_for


def test_simulator_replays_held_out_events_into_qc_and_dctr_per_arm(
    bundles: dict[str, Path], movielens_dir: Path
) -> None:
    settings = settings_for(bundles["a"], None, ab_challenger_bundle=bundles["b"], ab_challenger_share=0.5)
    with LiveServer(settings) as url:
        result = simulate(url, movielens_dir, seed=0, k=10)
        # a replay under another seed: some of its test users are the arms' training users
        other = simulate(url, movielens_dir, seed=1, k=10, prefix="sim1:")
    held_out, _ = load_held_out(movielens_dir, 0, 3)
    assert result["item_tags"] == 3  # both arms' training N (the tiny preset's), from GET /experiment
    assert result["test_users"] == len(held_out) > 50
    arms = result["arms"]
    assert arms["champion"]["users"] + arms["challenger"]["users"] == len(held_out)
    assert min(a["users"] for a in arms.values()) > 10  # the 0.5 split gave both arms users
    events = sum(len(range(0, len(items), 500)) for _, _, items in held_out)
    assert result["feedback_events"] == {"counted": events, "no_profile": 0}
    for arm in ("champion", "challenger"):
        ab = result["ab"]["arms"][arm]["totals"]
        assert 0 < ab["users"] <= arms[arm]["users"] and 0 <= ab["dctr"] <= 1 and ab["qc"] > 0
        paired = result["paired"][arm]
        assert 0 <= paired["dctr"] <= 1 and 0 < paired["prec@1"] <= 1
    assert result["ab"]["difference"]["qc"]["ci95"] is not None
    assert "| champion |" in markdown(result)
    # GET /experiment names each arm's training split: the challenger (bundle b) was trained under seed 1,
    # so some of this seed-0 replay's test users are its training users, and the replay says so
    assert result["not_held_out"] == {"challenger": ["seed 1 then, 0 now"]}
    assert "note: the challenger was trained on another split than this replay's (seed 1 then, 0 now)" in (
        markdown(result)
    )
    assert other["not_held_out"] == {"champion": ["seed 0 then, 1 now"]}


def test_the_items_tags_of_a_replay_are_the_arms_training_n_unless_given() -> None:
    """The replay took each item's first 3 tags whatever N the arms were trained with (5 for the
    synthetic preset); it now takes the arms' N and asks for --item-tags when they differ."""

    def experiment(champion: int | None, challenger: int | None) -> dict[str, dict[str, int | None]]:
        return {"champion": {"tags_per_item": champion}, "challenger": {"tags_per_item": challenger}}

    assert arms_tags_per_item(experiment(5, 5)) == 5
    with pytest.raises(ValueError, match="the arms' tags per item \\(N\\) are champion 3, challenger 5: pass"):
        arms_tags_per_item(experiment(3, 5))
    with pytest.raises(ValueError, match="champion not recorded, challenger 3: pass --item-tags"):
        arms_tags_per_item(experiment(None, 3))


def test_a_replay_splits_as_the_arms_were_split() -> None:
    """The replay re-split the data at 0.2 whatever share of test users the arms' runs held out."""

    def experiment(champion: float | None, challenger: float | None) -> dict[str, dict[str, object]]:
        def arm(share: float | None) -> dict[str, object]:
            return {"trained_on": None if share is None else {"test_fraction": share}}

        return {"champion": arm(champion), "challenger": arm(challenger)}

    assert arms_test_share(experiment(0.3, 0.3)) == 0.3
    # and under the arms' seed (it was 0 unless --seed was given)
    seeded = {arm: {"trained_on": {"seed": 1}} for arm in ("champion", "challenger")}
    assert arms_seed(seeded) == 1 and arms_seed(experiment(None, None)) == 0
    with pytest.raises(
        ValueError, match="trained under other splits \\(seed: champion 1, challenger 0\\): pass --seed"
    ):
        arms_seed({**seeded, "challenger": {"trained_on": {"seed": 0}}})
    assert arms_test_share(experiment(0.3, 0.2)) == arms_test_share(experiment(None, None)) == 0.2
    with pytest.raises(ValueError, match="no user held out \\(--test-share 0\\): no held-out user to replay"):
        arms_test_share(experiment(0.0, 0.0))
