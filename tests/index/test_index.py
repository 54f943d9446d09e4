"""The FAISS tag index: recall, the auto choice, building into a bundle, refusing a foreign index,
the block list, concurrent searches, the benchmark's JSON and the CLI."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from index import (
    IndexMismatchError,
    TagIndex,
    TagIndexError,
    build_index,
    choose_kind,
    ivf_nlist,
    plan_index,
    recall_at_k,
)
from index.factory import search_param_candidates
from index.infos import INDEX_FILE, INFOS_FILE
from model_export.bundle import load_bundle
from model_export.parity import top_k_ids


def test_recall_on_a_hand_made_case() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[4, 3, 9, 9], [5, 6, 7, 8]])
    assert recall_at_k(exact, approx, 4) == pytest.approx((2 + 4) / 8)  # order inside the top k is irrelevant
    assert recall_at_k(exact, approx, 2) == pytest.approx((0 + 2) / 4)  # top-2: {1,2} vs {4,3}; {5,6} vs {5,6}
    assert recall_at_k(np.array([[1, 2]]), np.array([[-1, -1]]), 2) == 0.0  # missing results never count
    with pytest.raises(ValueError):
        recall_at_k(exact, approx[:1], 2)
    with pytest.raises(ValueError):
        recall_at_k(exact, approx, 5)


def test_auto_choice_is_a_pure_function_of_size() -> None:
    assert choose_kind(1_000) == "flat"
    assert choose_kind(100_000) == "flat"
    assert choose_kind(100_001) == "ivf"
    assert choose_kind(10_000_000, gpus=1) == "flat"
    assert [ivf_nlist(n) for n in (1_000, 20_000, 100_000, 1_000_000)] == [16, 512, 1024, 4096]
    assert ivf_nlist(10) == 1  # k-means needs ~39 points per list
    assert plan_index("auto", 884).factory == "Flat"
    assert plan_index("auto", 1_000_000).factory == "IVF4096,Flat"
    assert plan_index("hnsw", 10).factory == "HNSW32"
    assert search_param_candidates(plan_index("ivf", 1_000_000), 1_000_000, 50)[-1] == 4096
    with pytest.raises(ValueError, match="unknown index kind"):
        plan_index("lsh", 10)


def test_flat_index_is_exact_and_written_into_the_bundle(bundle_copy: Path) -> None:
    infos = build_index(bundle_copy)
    assert infos.kind == "flat" and infos.factory == "Flat" and infos.params == {}
    assert infos.recall == {"recall@10": 1.0, "recall@50": 1.0}
    assert infos.metric == "inner_product" and infos.dim == 4 and infos.memory_bytes > 0
    saved = json.loads((bundle_copy / INFOS_FILE).read_text())
    assert saved["bundle_version"] == load_bundle(bundle_copy).version
    assert saved["queries"]["sources"]["heldout_users"] > 0
    index = TagIndex.load(bundle_copy)
    bundle = load_bundle(bundle_copy)
    u = np.asarray(bundle.heldout_users)[:20]
    scores, ids = index.search(u, 50)
    assert ids.tolist() == top_k_ids(u, bundle.embeddings, 50).tolist()
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_ann_search_parameter_is_tuned_for_recall(bundle_copy: Path, kind: str) -> None:
    infos = build_index(bundle_copy, kind, target_recall=0.95)
    assert infos.kind == kind and infos.target_met
    param = "nprobe" if kind == "ivf" else "efSearch"
    assert set(infos.params) == {param}
    assert infos.tuning[-1][param] == infos.params[param] and infos.tuning[-1]["recall@50"] >= 0.95
    assert infos.recall["recall@50"] >= 0.9  # measured on the other half of the queries
    index = TagIndex.load(bundle_copy)
    assert index.infos is not None and index.infos.factory == infos.factory


def _toy_index(n: int = 40, dim: int = 4) -> tuple[TagIndex, np.ndarray]:
    rng = np.random.default_rng(0)
    t = rng.standard_normal((n, dim)).astype(np.float32)
    t[0] = t[1] = 10 * np.ones(dim, np.float32)  # padding / OOV rows that would win every query
    return TagIndex.exact(t), t


def test_block_list_is_honoured() -> None:
    index, t = _toy_index()
    q = np.ones((3, 4), np.float32)
    _, ids = index.search(q, 5)
    assert not np.isin(ids, [0, 1]).any()
    blocked = ids[0, :3].tolist()
    _, ids2 = index.search(q, 5, exclude=blocked)
    assert not np.isin(ids2, [*blocked, 0, 1]).any()
    assert ids2[0].tolist() == [i for i in top_k_ids(q[:1], t, 8)[0] if i not in blocked][:5]
    _, per_row = index.search(q, 5, exclude=[[ids[0, 0]], [], [ids[2, 1], ids[2, 2]]])
    assert ids[0, 0] not in per_row[0] and per_row[1].tolist() == ids[1].tolist()
    assert not np.isin(per_row[2], ids[2, 1:3]).any()
    # the same lists as a (B, H) array, padded with ids a search never returns (-1, 0, past the end), and
    # with a repeat; at k 36 every row still fills from the 36 to 38 tags left to it
    padded = np.array([[ids[0, 0], -1, 0, 99], [-1, -1, 1, 40], [ids[2, 1], ids[2, 2], ids[2, 2], -1]])
    assert (index.search(q, 5, exclude=padded)[1] == per_row).all()
    full = index.search(q, 36, exclude=np.array([[2, 2], [-1, -1], [2, 3]]))[1]
    assert (full >= 2).all() and 2 not in full[0] and not np.isin(full[2], [2, 3]).any()
    with pytest.raises(ValueError, match="per-query exclusions"):
        index.search(q, 5, exclude=padded[:2])
    scores, ids3 = index.search(q, 40, exclude=range(2, 10))  # fewer admissible tags than k
    assert (ids3[:, :30] >= 10).all() and (ids3[:, 30:] == -1).all() and np.isinf(scores[:, 30:]).all()
    with pytest.raises(ValueError, match="per-query exclusions"):
        index.search(q, 5, exclude=[[1], [2]])
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        index.search(np.ones((2, 3), np.float32), 5)


def test_concurrent_searches_agree_with_sequential() -> None:
    index, _ = _toy_index(2000, 16)
    q = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    expected = index.search(q, 10, exclude=[5, 6])[1]
    results: list[np.ndarray] = []

    def worker() -> None:
        for _ in range(20):
            results.append(index.search(q, 10, exclude=[5, 6])[1])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(results) == 80 and all((r == expected).all() for r in results)


def test_an_index_of_another_bundle_is_refused(bundle_copy: Path, tiny_run: Path, tmp_path: Path) -> None:
    from model_export.onnx_export import export_bundle

    build_index(bundle_copy)
    other = tmp_path / "other"
    export_bundle(tiny_run, other, synthetic_inputs=True, parity_users=64)  # other held-out users: other version
    assert load_bundle(other).version != load_bundle(bundle_copy).version
    with pytest.raises(TagIndexError, match=r"no index_infos\.json"):
        TagIndex.load(other)
    for name in (INDEX_FILE, INFOS_FILE):
        shutil.copy2(bundle_copy / name, other / name)
    with pytest.raises(IndexMismatchError, match="was built for bundle"):
        TagIndex.load(other)


def test_wrong_dimension_or_metric_is_refused(bundle_copy: Path) -> None:
    build_index(bundle_copy)
    bundle = load_bundle(bundle_copy)
    x = np.ascontiguousarray(bundle.embeddings)
    original = (bundle_copy / INDEX_FILE).read_bytes()

    l2 = faiss.IndexFlatL2(x.shape[1])
    l2.add(x)
    faiss.write_index(l2, str(bundle_copy / INDEX_FILE))
    with pytest.raises(IndexMismatchError, match="inner product"):
        TagIndex.load(bundle_copy)

    wide = faiss.IndexFlatIP(x.shape[1] + 1)
    wide.add(np.hstack([x, np.zeros((len(x), 1), np.float32)]))
    faiss.write_index(wide, str(bundle_copy / INDEX_FILE))
    with pytest.raises(IndexMismatchError, match="dimension 5"):
        TagIndex.load(bundle_copy)

    (bundle_copy / INDEX_FILE).write_bytes(original)
    infos = json.loads((bundle_copy / INFOS_FILE).read_text())
    for key, value, message in (("metric", "l2", "metric is 'l2'"), ("dim", 8, "dimension 8")):
        (bundle_copy / INFOS_FILE).write_text(json.dumps({**infos, key: value}))
        with pytest.raises(IndexMismatchError, match=message):
            TagIndex.load(bundle_copy)
    with pytest.raises(IndexMismatchError, match="not inner product"):
        TagIndex(l2)


def test_bench_index_json_shape_quick() -> None:
    from index.bench import bench_index

    report = bench_index(20_000, 32, 100, tuning_queries=100)
    for key in ("tags", "dim", "exact_qps", "ann_qps", "speedup", "recall@10", "recall@50", "build_s", "index_mb"):
        assert key in report, key
    assert report["tags"] == 20_000 and report["ann_factory"] == "IVF512,Flat"
    peer = report["peers"]["hnswlib"]
    for key in ("qps", "recall@10", "recall@50", "build_s", "index_mb", "params"):
        assert key in peer, key
    assert isinstance(report["faiss_ahead_at_equal_recall"], bool)
    json.dumps(report)


def _cli() -> typer.Typer:
    from utpm_cli.index import bench_index_cmd, index_build_cmd

    app = typer.Typer()
    index_app = typer.Typer()
    index_app.command("build")(index_build_cmd)
    bench = typer.Typer()
    bench.command("index")(bench_index_cmd)
    app.add_typer(index_app, name="index")
    app.add_typer(bench, name="bench")
    return app


def test_cli_index_build_and_errors(bundle_copy: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    app = _cli()
    res = runner.invoke(app, ["index", "build", str(bundle_copy), "--kind", "ivf"])
    assert res.exit_code == 0, res.output
    assert "wrote IVF16,Flat" in res.output and "index_infos.json" in res.output
    res = runner.invoke(app, ["index", "build", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "error:" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["index", "build", str(bundle_copy), "--kind", "lsh"])
    assert res.exit_code == 2 and "unknown --kind" in res.output
    res = runner.invoke(app, ["bench", "index", "--tags", "10", "--json"])
    assert res.exit_code == 2 and "error:" in res.output


def test_gpu_probe_reports_a_child_that_aborts_and_passes_one_that_ends() -> None:
    """A faiss GPU build without kernels for the device aborts its process; the probe survives it."""
    from index.gpu import probe

    assert probe("import faiss") is None
    why = probe("import os, sys\nprint('no kernel image is available', file=sys.stderr)\nos.abort()")
    assert why is not None and "no kernel image" in why and "exit status" in why


def test_faiss_cpu_reports_no_usable_gpu_and_indexes_stay_on_the_cpu() -> None:
    import faiss

    from index.gpu import gpu_count, to_device

    assert gpu_count() == 0
    index, on_gpu = to_device(faiss.IndexFlatIP(4))
    assert on_gpu is False and isinstance(index, faiss.IndexFlatIP)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_an_approximate_index_of_the_default_model_reports_its_two_stage_recall(
    hist_bundle: Path, tmp_path: Path, kind: str
) -> None:
    """[o_t, b_t] in the index; the served search (ANN + history tags scored exactly) is measured
    against exact final scores, and with the ANN's exact scores its returned scores are exact."""
    from index.build import two_stage_search
    from model_export.scorer import exact_top_k, scores_at

    dst = tmp_path / "bundle"
    shutil.copytree(hist_bundle, dst)
    infos = build_index(dst, kind=kind)
    b = load_bundle(dst)
    assert infos.dim == b.dim + 1 and infos.two_stage is not None
    assert 0.5 <= infos.two_stage["recall@10"] <= 1.0 and 0.5 <= infos.two_stage["recall@50"] <= 1.0
    index = TagIndex.load(b)
    with np.load(dst / "heldout_history.npz") as f:
        hist_ids, hist_g = f["hist_ids"][:20], f["hist_g"][:20]
    u = np.asarray(b.heldout_users[:20])  # type: ignore[index]
    found = two_stage_search(b, index, u, hist_ids, hist_g, 10)
    ids, scores = found.ids, found.scores
    exact = scores_at(u, b.embeddings, np.asarray(b.tag_bias), hist_ids, hist_g, ids)
    np.testing.assert_allclose(scores, exact, rtol=1e-5, atol=1e-4)
    _, best = exact_top_k(u, b.embeddings, np.asarray(b.tag_bias), hist_ids, hist_g, 10)
    assert (scores <= best[:, :1] + 1e-4).all()  # nothing scores above the exact best
    assert 0.0 <= infos.two_stage["index_searched_share"] <= 1.0


def test_cli_index_build_reports_the_two_stage_recall_of_a_default_model_bundle(
    hist_bundle: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "bundle"
    shutil.copytree(hist_bundle, dst)
    res = CliRunner().invoke(_cli(), ["index", "build", str(dst), "--kind", "flat"])
    assert res.exit_code == 0, res.output
    assert "two-stage search vs exact final scores" in res.output and "recall@50 1.000" in res.output
    assert res.output.strip().splitlines()[-1].endswith(f"to {dst}/index.faiss and {dst}/index_infos.json")
