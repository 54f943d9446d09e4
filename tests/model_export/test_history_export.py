"""The default model's bundle: the whole scorer in ONNX, gated on final scores and top-k against PyTorch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model_export.bundle import load_bundle
from model_export.history_export import onnx_history_runner, torch_history_runner
from model_export.parity import check_history_parity, history_parity_cases
from model_export.session import SessionConfig, build_session, verify_reference
from pipeline import BuiltBundle
from tests.bundles import perturb_onnx
from utpm.data.loading import load_dataset
from utpm.data.protocol import split_protocol
from utpm.features.history import PHI_NAMES
from utpm.training.history import batch_tensors
from utpm.training.run import load_run


def test_the_pipeline_trains_and_exports_the_default_model(hist_built: BuiltBundle) -> None:
    manifest = json.loads((hist_built.bundle / "manifest.json").read_text())
    assert manifest["model"]["name"] == "utpm-hist"
    scorer = manifest["scorer"]
    assert "hist_feats" in scorer["inputs"] and "history_scores" in scorer["outputs"]
    assert any(n.endswith("_counts") for n in scorer["inputs"])  # counts enter the tower
    parity = manifest["parity"]
    assert parity["passed"] and parity["top_k_agreement"] >= 0.99
    assert parity["max_abs_diff_score"] <= parity["score_atol"]
    assert {"heldout", "counts", "all_oov", "all_empty"} <= set(parity["cases"])
    b = load_bundle(hist_built.bundle)
    assert b.has_history and b.tag_bias is not None and b.index_dim == b.dim + 1


@pytest.mark.parametrize("path", ["linear", "graph"])
def test_served_scores_equal_pytorch_final_scores(hist_built: BuiltBundle, movielens_dir: Path, path: str) -> None:
    """The engine returns PyTorch's own top-10 and scores, by either path of a bundle at its linear
    start: b_t + w . phi without the tower, and ONNX + flat index + history tags."""
    from service.config import Settings
    from service.engine import ProfileEngine

    run = load_run(hist_built.run)
    settings = Settings.model_validate({"bundle": str(hist_built.bundle), "linear_scorer": path == "linear"})
    engine = ProfileEngine.load(hist_built.bundle, settings)
    # the fixture's one epoch did not pass the epoch gate: the bundle is marked linear
    assert load_bundle(hist_built.bundle).linear_phi_weights is not None
    assert (engine.linear is not None, engine.index is None) == ((True, True) if path == "linear" else (False, False))
    henc = engine.history
    assert henc is not None
    split = split_protocol(load_dataset(movielens_dir), seed=0)
    users = [split.features(int(i)) for i in split.indices(test=True)[:40]]
    batch = henc.encode([henc.parse(u) for u in users])
    with torch.no_grad():
        s = run.model.scores(*batch_tensors(batch))
        s[:, :2] = -torch.inf
    computed = engine.compute([engine.encode(u, 10, False) for u in users])
    for row, prof in enumerate(computed):
        ref = s[row].numpy()
        kth = np.sort(ref)[-10]
        # every served tag is a true top-10 tag (ties at the cut allowed) and its score is PyTorch's
        assert (ref[prof.tag_ids] >= kth - 1e-4).all(), row
        np.testing.assert_allclose(prof.scores, ref[prof.tag_ids], atol=1e-3)


def test_a_linear_bundle_explains_the_list_it_serves(hist_built: BuiltBundle, movielens_dir: Path) -> None:
    """Explain requests of a linear bundle run the model for the attention weights only: the same tags and
    scores as without explain, split into b_t (the model part) and g (the history part)."""
    from service.config import Settings
    from service.engine import ProfileEngine

    engine = ProfileEngine.load(hist_built.bundle, Settings.model_validate({"bundle": str(hist_built.bundle)}))
    assert engine.linear is not None and engine.index is None and engine.scorer == "linear"
    assert engine.two_stage is not None and not hasattr(engine.two_stage, "table")  # the tag table is not read
    split = split_protocol(load_dataset(movielens_dir), seed=0)
    users = [split.features(int(i)) for i in split.indices(test=True)[:16]]
    plain = engine.compute([engine.encode(u, 10, False) for u in users])
    explained = engine.compute([engine.encode(u, 10, u is not users[3]) for u in users])  # a mixed batch
    bias = np.asarray(engine.bundle.tag_bias, np.float32)
    for row, (p, e) in enumerate(zip(plain, explained, strict=True)):
        np.testing.assert_array_equal(e.tag_ids, p.tag_ids)
        np.testing.assert_array_equal(e.scores, p.scores)
        if row == 3:
            assert e.attention is None and e.model_part is None
            continue
        assert e.attention is not None and set(engine.field_names) <= set(e.attention)
        assert e.model_part is not None and e.history_part is not None
        np.testing.assert_allclose(e.model_part, bias[e.tag_ids], atol=1e-6)
        np.testing.assert_allclose(e.model_part + e.history_part, e.scores, atol=1e-6)
        assert (e.history_part != 0).any(), row  # the user's own tags carry g
    with pytest.raises(ValueError, match="without an index"):
        u, no_tags = np.zeros((1, engine.bundle.dim), np.float32), np.zeros((1, 1), np.int64)
        engine.two_stage.search(u, no_tags, np.zeros((1, 1)), 5)


def test_the_gate_refuses_a_scorer_that_differs(hist_built: BuiltBundle, tmp_path: Path) -> None:
    run = load_run(hist_built.run)
    b = load_bundle(hist_built.bundle)
    henc = b.history_encoder()
    users = [{"clicked_tags": ["sci-fi", "atmospheric"], "clicked_categories": ["Drama"]}] * 4
    cases = history_parity_cases(henc, users, np.random.default_rng(0))
    bad = tmp_path / "bad.onnx"
    perturb_onnx(b.onnx_path, bad)
    session = build_session(bad, SessionConfig(prefer_gpu=False, warmup=False))
    table, bias = np.asarray(b.embeddings), np.asarray(b.tag_bias)
    report = check_history_parity(
        cases, torch_history_runner(run.model, 50), onnx_history_runner(session, b.encoder.field_names), table, bias
    )
    assert not report.passed and report.failure() is not None
    good = build_session(b.onnx_path, SessionConfig(prefer_gpu=False, warmup=False))
    ok = check_history_parity(
        cases, torch_history_runner(run.model, 50), onnx_history_runner(good, b.encoder.field_names), table, bias
    )
    assert ok.passed, ok.failure()


def test_the_load_time_reference_check_covers_the_history_path(hist_built: BuiltBundle, tmp_path: Path) -> None:
    b = load_bundle(hist_built.bundle)
    assert verify_reference(build_session(b.onnx_path), b) is not None
    copy = tmp_path / "bundle"
    shutil.copytree(hist_built.bundle, copy)
    perturb_onnx(b.onnx_path, copy / "model.onnx")
    from model_export.errors import BundleError

    damaged = load_bundle(copy, verify_hashes=False)
    with pytest.raises(BundleError, match="does not reproduce"):
        verify_reference(build_session(damaged.onnx_path), damaged)


def test_the_bundle_holds_the_item_neighbours_and_its_parity_users_send_clicked_items(hist_built: BuiltBundle) -> None:
    henc = load_bundle(hist_built.bundle).history_encoder()
    assert henc.items is not None and len(henc.items.items) > 100 and henc.n_phi == len(PHI_NAMES)
    reference = np.load(hist_built.bundle / "parity_reference.npz")  # the held-out users as the gate fed them
    j = PHI_NAMES.index("item_neighbour_score")
    assert np.abs(reference["feed__hist_feats"][..., j]).sum() > 0  # their scores read the items


def test_a_bundle_with_fewer_phi_features_reads_the_first_ones_and_another_list_is_refused(
    hist_built: BuiltBundle, tmp_path: Path
) -> None:
    from model_export.errors import BundleError

    copy = tmp_path / "bundle"
    shutil.copytree(hist_built.bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for names, ok in ((PHI_NAMES[:-1], True), (("log1p_count", "transition"), False)):
        manifest["scorer"]["phi_names"] = list(names)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        b = load_bundle(copy, verify_hashes=False)
        if ok:
            henc = b.history_encoder()
            assert henc.n_phi == len(PHI_NAMES) - 1
            assert henc.encode([henc.parse({"clicked_tags": ["sci-fi"]})]).hist_feats.shape[2] == len(PHI_NAMES) - 1
        else:
            with pytest.raises(BundleError, match="re-export"):
                b.history_encoder()


def test_the_index_reports_the_two_stage_recall(hist_built: BuiltBundle) -> None:
    infos = json.loads((hist_built.bundle / "index_infos.json").read_text())
    assert infos["dim"] == load_bundle(hist_built.bundle).dim + 1  # [o_t, b_t]
    two = infos["two_stage"]
    assert two["users"] > 0 and two["history_tags_mean"] > 0
    assert two["recall@10"] == 1.0 and two["recall@50"] == 1.0  # exact (flat) candidates: nothing lost
    assert hist_built.stages["index"]["two_stage"] == two


def test_explain_parts_match_pytorch(hist_built: BuiltBundle) -> None:
    """The service's model/history split of each returned score is PyTorch's (`explain.score_parts`)."""
    from service.config import Settings
    from service.engine import ProfileEngine
    from utpm.models.explain import score_parts

    run = load_run(hist_built.run)
    engine = ProfileEngine.load(hist_built.bundle, Settings.model_validate({"bundle": str(hist_built.bundle)}))
    henc = engine.history
    assert henc is not None
    users: list[dict[str, Any]] = [
        {"clicked_tags": {"sci-fi": 5, "dystopia": 2, "atmospheric": 1}, "clicked_categories": ["Sci-Fi"]},
        {"clicked_tags": ["disney", "pixar", "disney", "animation"]},
    ]
    b = henc.encode([henc.parse(u) for u in users])
    ref = score_parts(run.model, *batch_tensors(b), k=5)
    np.testing.assert_allclose((ref.model + ref.history).numpy(), ref.scores.numpy(), atol=1e-5)
    assert (ref.history.numpy() != 0).any()  # the users' own tags carry a history part
    for row, prof in enumerate(engine.compute([engine.encode(u, 5, True) for u in users])):
        assert prof.model_part is not None and prof.history_part is not None
        parts = zip(ref.model[row].tolist(), ref.history[row].tolist(), strict=True)
        want = dict(zip(ref.tag_ids[row].tolist(), parts, strict=True))
        for t, m, h in zip(prof.tag_ids.tolist(), prof.model_part.tolist(), prof.history_part.tolist(), strict=True):
            if t in want:  # ties at the cut may swap a tag in or out
                assert m == pytest.approx(want[t][0], abs=1e-3) and h == pytest.approx(want[t][1], abs=1e-4)


def test_paper_bundles_keep_their_format(tiny_bundle: Path) -> None:
    """A paper-model bundle has no scorer, no bias and its plain u . t index dimension: old bundles load as before."""
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert "scorer" not in manifest and not (tiny_bundle / "tag_bias.npy").exists()
    b = load_bundle(tiny_bundle)
    assert not b.has_history and b.tag_bias is None and b.index_dim == b.dim
    u = np.ones((2, b.dim), np.float32)
    assert b.index_queries(u).shape == (2, b.dim) and b.index_table().shape == (b.manifest.tag_count, b.dim)


def test_a_model_at_its_linear_start_is_marked_linear_and_its_linear_path_gated(hist_built: BuiltBundle) -> None:
    run = load_run(hist_built.run)
    g = run.model.g
    assert g is not None
    manifest = json.loads((hist_built.bundle / "manifest.json").read_text())
    w = manifest["scorer"]["linear_phi_weights"]
    np.testing.assert_array_equal(np.asarray(w, np.float32), g.linear.weight.detach().numpy().ravel())
    assert {"heldout (linear)", "counts (linear)", "all_oov (linear)"} <= set(manifest["parity"]["cases"])
    np.testing.assert_array_equal(load_bundle(hist_built.bundle).linear_phi_weights, np.asarray(w, np.float32))


def test_the_linear_mark_needs_a_zero_tag_table_and_a_zero_history_mlp() -> None:
    from model_export.scorer import linear_phi_weights

    zero, w = np.zeros((5, 3), np.float32), np.asarray([[0.5, -0.25]], np.float32)
    assert linear_phi_weights(zero, np.zeros(4, np.float32), w) == [0.5, -0.25]
    assert linear_phi_weights(zero, None, None) == []  # no history path: b_t alone
    assert linear_phi_weights(zero, np.asarray([0, 1e-9], np.float32), w) is None
    some = zero.copy()
    some[3, 1] = 1e-9
    assert linear_phi_weights(some, np.zeros(4, np.float32), w) is None


def test_a_model_that_left_its_start_is_exported_without_the_mark(hist_built: BuiltBundle, tmp_path: Path) -> None:
    """A tag table that is not zero (a trained epoch kept), or --no-linear-scorer: the graph serves it."""
    from model_export.onnx_export import export_bundle

    run_dir = tmp_path / "run"
    shutil.copytree(hist_built.run, run_dir)
    state = torch.load(run_dir / "model.pt", weights_only=True)
    key = next(k for k in state if k.endswith("tag_embedding.weight"))
    state[key] = torch.randn(state[key].shape, generator=torch.Generator().manual_seed(0)) * 0.01
    torch.save(state, run_dir / "model.pt")
    moved = export_bundle(run_dir, tmp_path / "moved", parity_users=32)
    assert moved.scorer is not None and "linear_phi_weights" not in moved.scorer
    assert not any(c.endswith("(linear)") for c in moved.parity["cases"])
    off = export_bundle(hist_built.run, tmp_path / "off", parity_users=32, linear_scorer=False)
    assert off.scorer is not None and "linear_phi_weights" not in off.scorer
    assert load_bundle(tmp_path / "off").linear_phi_weights is None


def test_linear_weights_that_do_not_reproduce_the_history_path_are_refused(
    hist_built: BuiltBundle, tmp_path: Path
) -> None:
    """At export (the parity gate's linear cases) and at load (the stored reference's g)."""
    from model_export.errors import BundleError
    from model_export.session import verify_linear_reference

    run = load_run(hist_built.run)
    b = load_bundle(hist_built.bundle)
    assert verify_linear_reference(b) is not None
    w = b.linear_phi_weights
    assert w is not None
    off = w + np.float32(0.5)
    cases = history_parity_cases(
        b.history_encoder(), [{"clicked_tags": ["sci-fi", "sci-fi", "drama"]}] * 4, np.random.default_rng(0)
    )
    session = build_session(b.onnx_path, SessionConfig(prefer_gpu=False, warmup=False))
    table, bias = np.asarray(b.embeddings), np.asarray(b.tag_bias)
    runners = (torch_history_runner(run.model, 50), onnx_history_runner(session, b.encoder.field_names))
    assert check_history_parity(cases, *runners, table, bias, linear=w).passed
    report = check_history_parity(cases, *runners, table, bias, linear=off)
    assert not report.passed and "(linear)" in str(report.failure())
    copy = tmp_path / "bundle"
    shutil.copytree(hist_built.bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["scorer"]["linear_phi_weights"] = off.tolist()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="marked linear"):
        verify_linear_reference(load_bundle(copy, verify_hashes=False))
