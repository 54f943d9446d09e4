"""ONNX export and the bundle: round trip, parity checks that catch a broken graph, loader validation,
session builder, variants, benchmark and CLI. Uses the session fixtures `tiny_run` / `tiny_bundle`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import typer
from typer.testing import CliRunner

from model_export.bundle import load_bundle
from model_export.errors import BundleError, ExportError, ParityError
from model_export.inputs import TowerOutputs, onnx_feed
from model_export.manifest import MANIFEST_FILE, METRIC, content_version
from model_export.parity import parity_cases, same_sets, synthetic_users, top_k_ids
from model_export.session import CPU, CUDA, SessionConfig, build_session, check_signature, select_providers
from tests.bundles import perturb_onnx


def _test_users(movielens_dir: Path, n: int) -> list[dict[str, list[str]]]:
    from utpm.data.loading import load_dataset
    from utpm.data.protocol import split_protocol

    split = split_protocol(load_dataset(movielens_dir))
    return [split.features(int(i)) for i in split.indices(test=True)[:n]]


def test_round_trip_gives_the_pytorch_profile(tiny_run: Path, tiny_bundle: Path, movielens_dir: Path) -> None:
    from utpm.training.run import load_run
    from utpm.training.trainer import rank_tags

    run = load_run(tiny_run)
    bundle = load_bundle(tiny_bundle)
    session = build_session(bundle.onnx_path)
    users = _test_users(movielens_dir, 40)
    batch = bundle.encoder.encode(users)
    out = TowerOutputs.from_list(
        session.run(None, onnx_feed(batch, bundle.manifest.field_names)), bundle.encoder.field_names
    )
    onnx_top = [
        [bundle.tags.token(int(t)) for t in row] for row in top_k_ids(out.user_embedding, bundle.embeddings, 10)
    ]
    names = run.encoder.field_names
    torch_top = rank_tags(run.model, [batch.ids[n] for n in names], [batch.mask[n] for n in names], run.tags, 10)
    assert onnx_top == torch_top
    # explanation outputs: per-field weights (B, heads, H_f), rows sum to 1 over real values or 0 when empty
    for name, w in out.field_attention.items():
        assert w.shape == (len(users), bundle.manifest.heads, bundle.encoder.spec(name).max_len)
        sums = w.sum(axis=-1)
        present = batch.mask[name].sum(axis=1) > 0
        np.testing.assert_allclose(sums[present], 1.0, atol=1e-5)
        np.testing.assert_allclose(sums[~present], 0.0, atol=1e-7)
    assert out.merge_attention.shape == (len(users), bundle.manifest.heads, len(names))


def test_the_cross_layers_pairs_are_gathered_as_rows(tiny_bundle: Path) -> None:
    """CF's two gathers take rows of x transposed (B contiguous values per pair), not columns of x (one
    value per pair and user): ONNX Runtime's Gather is far slower on the latter (docs/performance.md)."""
    import onnx

    graph = onnx.load(str(load_bundle(tiny_bundle).onnx_path), load_external_data=False).graph
    made_by = {out: node for node in graph.node for out in node.output}
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.name.startswith("/cross/")]
    assert len(gathers) == 2
    used_by = {inp: node for node in graph.node for inp in node.input}
    for node in gathers:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        assert axis == 0 and made_by[node.input[0]].op_type == "Transpose"
        assert used_by[node.output[0]].op_type == "Mul"  # the products in the gathered layout, no transpose between


def test_manifest_describes_the_bundle(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    m = bundle.manifest
    raw = json.loads((tiny_bundle / MANIFEST_FILE).read_text())
    assert raw["metric"] == METRIC == "inner_product"
    assert raw["onnx"]["opset"] >= 17
    assert raw["model"]["name"] == "utpm" and raw["model"]["preset_name"] == "tiny"
    assert raw["dims"] == {"user": 4, "heads": 2, "fields": 3}
    assert [f["name"] for f in raw["fields"]] == bundle.encoder.field_names
    assert all((tiny_bundle / f["vocab_file"]).is_file() for f in raw["fields"])
    assert raw["tags"]["count"] == len(bundle.tags) == bundle.embeddings.shape[0]
    assert bundle.embeddings.dtype == np.float32 and bundle.embeddings.shape[1] == 4
    assert m.bundle_version == content_version(m.files)
    parity = raw["parity"]
    assert parity["passed"] and parity["max_abs_diff_u"] <= 1e-4 and parity["top_k_agreement"] >= 0.99
    assert parity["inputs"].startswith("test users of")
    assert set(parity["cases"]) >= {"batch_1", "batch_256", "empty_field", "all_empty", "all_oov", "longer_than_max"}
    assert parity["cases"]["batch_256"]["users"] == 256 and parity["cases"]["batch_1"]["users"] == 1
    assert bundle.heldout_users is not None and bundle.heldout_users.shape == (raw["heldout_users"]["count"], 4)
    session = build_session(bundle.onnx_path)
    check_signature(session, m)
    assert [i.shape[0] for i in session.get_inputs()] == ["batch"] * len(m.input_names)
    assert [i.name for i in session.get_inputs()] == [
        n for f in bundle.encoder.field_names for n in (f"{f}_ids", f"{f}_mask")
    ]
    assert [o.name for o in session.get_outputs()] == [
        "user_embedding",
        *(f"attn_{f}" for f in bundle.encoder.field_names),
        "attn_merge",
    ]


def test_parity_cases_cover_the_edge_cases(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    enc = bundle.encoder
    rng = np.random.default_rng(0)
    cases = {c.name: c.batch for c in parity_cases(enc, synthetic_users(enc, 10, rng), rng)}
    assert cases["batch_1"].size == 1 and cases["batch_256"].size == 256
    assert all(cases["all_empty"].mask[f].sum() == 0 for f in enc.field_names)
    for f in enc.field_names:
        oov = cases["all_oov"]
        assert (oov.ids[f][oov.mask[f] > 0] == 1).all() and oov.mask[f].sum() > 0
        assert (cases["longer_than_max"].mask[f] == 1).all()  # truncated to exactly max_len
    empty = cases["empty_field"]
    assert all(any(empty.mask[f][i].sum() == 0 for f in enc.field_names) for i in range(empty.size))


def test_a_perturbed_graph_fails_the_parity_check(tiny_run: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    from model_export.onnx_export import verify_parity
    from utpm.training.run import load_run

    run = load_run(tiny_run)
    bundle = load_bundle(tiny_bundle)
    broken = tmp_path / "broken.onnx"
    perturb_onnx(bundle.onnx_path, broken)
    rng = np.random.default_rng(0)
    cases = parity_cases(bundle.encoder, synthetic_users(bundle.encoder, 32, rng), rng)
    verify_parity(run.model, bundle.onnx_path, cases, np.asarray(bundle.embeddings))  # the real one passes
    with pytest.raises(ParityError, match=r"max \|u_torch - u_onnx\| = .* \(limit 0\.0001"):
        verify_parity(run.model, broken, cases, np.asarray(bundle.embeddings))


def test_export_writes_nothing_when_parity_fails(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model_export.onnx_export as onnx_export

    real_export = onnx_export.export_onnx

    def broken_export(model, path, opset=17):
        real_export(model, path, opset)
        perturb_onnx(path, path)

    monkeypatch.setattr(onnx_export, "export_onnx", broken_export)
    out = tmp_path / "bundle"
    with pytest.raises(ParityError):
        onnx_export.export_bundle(tiny_run, out, synthetic_inputs=True, parity_users=32)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its temporary directory


def test_export_is_reproducible_and_refuses_to_overwrite(tiny_run: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    from model_export.onnx_export import export_bundle

    again = export_bundle(tiny_run, tmp_path / "again")
    assert again.bundle_version == load_bundle(tiny_bundle).version  # a content hash: same run, same version
    with pytest.raises(ExportError, match="exists"):
        export_bundle(tiny_run, tmp_path / "again")
    with pytest.raises(ExportError, match="not a run directory"):
        export_bundle(tmp_path / "nope", tmp_path / "x")
    # --overwrite replaces a bundle, and only a bundle: before, a folder typed as --out was deleted
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(ExportError, match=r"is not a bundle \(no manifest\.json\): --overwrite only replaces a bundle"):
        export_bundle(tiny_run, precious, overwrite=True)
    assert (precious / "thesis.txt").read_text() == "years of work"
    assert export_bundle(tiny_run, tmp_path / "again", overwrite=True).bundle_version == again.bundle_version


def test_synthetic_inputs_and_variants(tiny_run: Path, tmp_path: Path) -> None:
    from model_export.onnx_export import export_bundle

    m = export_bundle(tiny_run, tmp_path / "b", synthetic_inputs=True, variants=("fp16", "int8"), parity_users=64)
    assert m.parity["inputs"].startswith("synthetic")
    bundle = load_bundle(tmp_path / "b")
    for v in ("fp16", "int8"):
        info = m.variants[v]
        assert 0.0 <= info["top50_agreement"] <= 1.0 and info["max_abs_diff_u"] >= 0.0
        session = build_session(bundle.variant_path(v))
        check_signature(session, m)
    with pytest.raises(BundleError, match="no 'bf16' variant"):
        bundle.variant_path("bf16")


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def _edit_manifest(path: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    d = json.loads((path / MANIFEST_FILE).read_text())
    edit(d)
    (path / MANIFEST_FILE).write_text(json.dumps(d))


def test_loader_rejects_corrupt_or_inconsistent_bundles(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_bundle(tmp_path)
    b = _copy(tiny_bundle, tmp_path)
    tags = b / "tags.json"
    tags.write_text(tags.read_text().replace("<oov>", "<OOV>", 1))
    with pytest.raises(BundleError, match=r"tags\.json: content hash"):
        load_bundle(b)
    shutil.rmtree(b)

    b = _copy(tiny_bundle, tmp_path)
    _edit_manifest(b, lambda d: d.update(metric="l2"))
    with pytest.raises(BundleError, match="metric is 'l2'"):
        load_bundle(b)
    _edit_manifest(b, lambda d: d.update(metric="inner_product", dims={**d["dims"], "user": 8}))
    with pytest.raises(BundleError, match=r"expected float32 \(\d+, 8\)"):
        load_bundle(b)
    _edit_manifest(b, lambda d: d.update(dims={**d["dims"], "user": 4}, bundle_version="0" * 16))
    with pytest.raises(BundleError, match="does not match its file hashes"):
        load_bundle(b)
    _edit_manifest(b, lambda d: d.pop("files"))
    with pytest.raises(BundleError, match="malformed"):
        load_bundle(b)
    shutil.rmtree(b)

    b = _copy(tiny_bundle, tmp_path)
    (b / "tag_embeddings.npy").unlink()
    with pytest.raises(BundleError, match=r"tag_embeddings\.npy listed in the manifest is missing"):
        load_bundle(b)


def test_session_builder_picks_cpu_here(tiny_bundle: Path) -> None:
    assert select_providers(["AzureExecutionProvider", CPU]) == [CPU]
    assert select_providers([CUDA, CPU]) == [CUDA, CPU]
    assert select_providers([CUDA, CPU], prefer_gpu=False) == [CPU]
    session = build_session(load_bundle(tiny_bundle).onnx_path, SessionConfig(intra_op_threads=1))
    if CUDA not in ort.get_available_providers():
        assert session.get_providers() == [CPU]
    with pytest.raises(ValueError, match="graph_optimization"):
        SessionConfig(graph_optimization="max")
    with pytest.raises(ValueError, match="intra_op_threads"):
        SessionConfig(intra_op_threads=0)


def test_top_k_helpers() -> None:
    t = np.array([[0, 0], [9, 9], [1, 0], [0, 1], [1, 1]], dtype=np.float32)
    ids = top_k_ids(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), t, 2)
    assert ids.tolist() == [[2, 4], [3, 4]] or ids.tolist() == [[4, 2], [3, 4]]  # ties between 2 and 4 in row 0
    assert 1 not in ids and 0 not in ids  # padding and OOV never returned
    assert same_sets(np.array([[1, 2], [3, 4]]), np.array([[2, 1], [3, 5]])).tolist() == [True, False]


def test_bench_model_reports_both_engines(tiny_bundle: Path) -> None:
    from model_export.bench import bench_bundle

    report = bench_bundle(tiny_bundle, batches=(1, 4), iters=5)
    assert [r["batch"] for r in report["results"]] == [1, 4]
    for r in report["results"]:
        assert r["onnxruntime"]["p50_ms"] > 0 and r["pytorch"]["p99_ms"] >= r["pytorch"]["p50_ms"]
        assert r["max_abs_diff_u"] <= 1e-4
    assert report["providers"] and report["trained"] is True


def _cli() -> typer.Typer:
    from utpm_cli.export import bench_model_cmd, export_cmd

    app = typer.Typer()
    app.command("export")(export_cmd)
    bench = typer.Typer()
    bench.command("model")(bench_model_cmd)
    app.add_typer(bench, name="bench")
    return app


def test_cli_export_and_bench(tiny_run: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    app = _cli()
    res = runner.invoke(app, ["export", str(tiny_run), "--out", str(tmp_path / "b"), "--synthetic-inputs"])
    assert res.exit_code == 0, res.output
    assert "wrote bundle" in res.output and str(tmp_path / "b") in res.output
    res = runner.invoke(app, ["export", str(tmp_path / "missing"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "error:" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["bench", "model", str(tiny_bundle), "--iters", "3", "--batch", "2", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["results"][0]["batch"] == 2
    res = runner.invoke(app, ["bench", "model"])
    assert res.exit_code == 2 and "either a BUNDLE or --preset" in res.output
    res = runner.invoke(app, ["bench", "model", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "error:" in res.output


@pytest.mark.parametrize("name", ["youtube", "af1-unshared", "af2-dcn", "af2-autoint", "utpm"])
def test_every_kind_of_tower_exports_with_parity(name: str, tmp_path: Path) -> None:
    """The contract for the zoo: untrained tiny models of each fusion / cross family trace to ONNX
    and reproduce PyTorch on the parity cases."""
    from model_export.onnx_export import export_onnx, verify_parity
    from utpm.features.encoding import FeatureEncoder
    from utpm.features.spec import FieldKind, FieldSpec
    from utpm.features.vocab import Vocabulary
    from utpm.models import build_model, get_preset

    vocab = Vocabulary(["<pad>", "<oov>", *(f"v{i}" for i in range(30))])
    specs = [
        FieldSpec("clicked_tags", FieldKind.MULTI, len(vocab), 5),
        FieldSpec("age", FieldKind.SINGLE, len(vocab), 1),
    ]
    encoder = FeatureEncoder(specs, {s.name: vocab for s in specs})
    model = build_model(name, specs, 120, get_preset("tiny"), seed=0)
    export_onnx(model, tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    cases = parity_cases(encoder, synthetic_users(encoder, 20, rng), rng)
    report = verify_parity(model, tmp_path / "m.onnx", cases, model.tag_embedding.weight.detach().numpy())
    assert report.passed and report.max_abs_diff_u <= 1e-4
