"""The load tests themselves: response checks, payloads, percentiles, the docs' generated blocks, and
few-second smoke runs of `utpm bench serve`, `tune`, `loop` and `reliability`.

The smoke runs are the benchmarks' own code paths (real redis-server, uvicorn subprocesses, locust,
wrk, the ceiling and the naive peer) on the tiny bundle, for a second or so per run: they assert
that no request failed and that the reports are well formed, never a speed.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from loadtest.checks import profile_problem
from loadtest.measure import histogram_percentiles, percentiles
from loadtest.payloads import PayloadSource
from loadtest.report import BLOCK, regenerate, render
from loadtest.serve import BenchConfig, run_bench


def _body(**kw: Any) -> dict[str, Any]:
    body = {
        "user_id": "u1",
        "model_version": "abc",
        "tags": [{"tag": "a", "score": 0.9}, {"tag": "b", "score": 0.5}, {"tag": "c", "score": 0.5}],
        "unknown": {},
        "all_unknown": False,
        "cached": False,
    }
    return {**body, **kw}


def test_a_right_answer_passes() -> None:
    assert profile_problem(_body(), user_id="u1", k=3, cached=False) is None
    assert profile_problem(_body(cached=True), user_id="u1", k=3, cached=True) is None


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (_body(user_id="u2"), "user_id"),
        (_body(model_version=""), "model_version"),
        (_body(cached=True), "cached"),
        (_body(tags=[{"tag": "a", "score": 0.9}]), "1 tags, expected 3"),
        (_body(tags=[{"tag": "a", "score": 0.1}, {"tag": "b", "score": 0.5}, {"tag": "c", "score": 0.2}]), "sorted"),
        (_body(tags=[{"tag": "a", "score": 0.9}, {"tag": "a", "score": 0.5}, {"tag": "c", "score": 0.2}]), "twice"),
        (_body(tags=[{"tag": "a"}, {"tag": "b", "score": 0.5}, {"tag": "c", "score": 0.2}]), "malformed"),
        ([], "not an object"),
    ],
)
def test_a_wrong_answer_is_a_failure(body: Any, needle: str) -> None:
    problem = profile_problem(body, user_id="u1", k=3, cached=False)
    assert problem is not None and needle in problem


def test_payloads_follow_the_bundle_vocabularies(tiny_bundle: Path, tmp_path: Path) -> None:
    fields = {f["name"]: f for f in json.loads((tiny_bundle / "encoder" / "fields.json").read_text())}
    vocab = {
        name: set(json.loads((tiny_bundle / "encoder" / f"vocab_{name}.json").read_text())["tokens"][2:])
        for name in fields
    }
    source = PayloadSource.from_bundle(tiny_bundle)
    rng = random.Random(0)
    for _ in range(50):
        features = source.features(rng)
        assert set(features) <= set(fields)
        for name, values in features.items():
            values = [values] if isinstance(values, str) else values
            assert 1 <= len(values) <= fields[name]["max_len"]
            assert set(values) <= vocab[name]
    lines = tmp_path / "bodies.jsonl"
    lines.write_text('{"features": {"clicked_tags": ["x"]}}\n\n{"features": {"clicked_tags": ["y"]}}\n')
    replayed = PayloadSource.from_jsonl(lines)
    assert {replayed.features(rng)["clicked_tags"][0] for _ in range(40)} == {"x", "y"}
    lines.write_text('{"user_id": "no features"}\n')
    with pytest.raises(ValueError, match="features"):
        PayloadSource.from_jsonl(lines)
    # before: json's or the codec's message alone, naming neither the file nor the line
    lines.write_text('{"features": {}}\nnot json\n')
    with pytest.raises(ValueError, match=r"bodies\.jsonl:2: not JSON"):
        PayloadSource.from_jsonl(lines)
    lines.write_bytes(b"\xff\xfe\n")
    with pytest.raises(ValueError, match=r"bodies\.jsonl:1: not UTF-8 text"):
        PayloadSource.from_jsonl(lines)


def test_one_percentile_definition_for_samples_and_histograms() -> None:
    assert percentiles(range(1, 101)) == {"p50_ms": 50.5, "p90_ms": 90.1, "p95_ms": 95.05, "p99_ms": 99.01}
    assert histogram_percentiles({"1": 2, "3": 2}) == percentiles([1, 1, 3, 3])
    assert percentiles([])["p99_ms"] is None


def test_report_regenerates_only_blocks_whose_artifact_exists(tmp_path: Path) -> None:
    result = {"kind": "reliability", "scenario": "reload", "started_at": "2026-01-01T00:00:00+00:00",
              "machine": {"cpu": "cpu", "cores": 2}, "command": "utpm bench reliability reload", "wall_s": 1.0,
              "reloads": 3}  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps(result))
    doc = tmp_path / "doc.md"
    old = "<!-- report: b.json -->\nquoted run\n<!-- /report -->"
    doc.write_text(f"# Doc\n\nmethod\n\n<!-- report: a.json -->\nstale\n<!-- /report -->\n\n{old}\n")
    assert regenerate(doc, tmp_path) == [("a.json", "regenerated"), ("b.json", "kept (artifact missing)")]
    text = doc.read_text()
    assert "stale" not in text and '"reloads": 3' in text and "utpm bench reliability reload" in text
    assert old in text and text.startswith("# Doc\n\nmethod\n")
    assert regenerate(doc, tmp_path) and doc.read_text() == text  # idempotent


def test_a_soak_renders_its_lists_on_one_line_with_the_rss_of_each_minute() -> None:
    """An hour's soak has sixty numbers a list: each list on one line, and the RSS samples (every 10 s)
    as the MB in each whole minute from the first on."""
    soak = {"kind": "reliability", "scenario": "soak", "started_at": "2026-01-01T00:00:00+00:00",
            "machine": {"cpu": "cpu", "cores": 2}, "command": "utpm bench reliability soak", "wall_s": 1.0,
            "rss_mb": [[50.2, 240.0], [60.3, 241.5], [110.0, 241.7], [120.6, 242.0], [180.4, 242.5]],
            "post_p50_ms_by_minute": [4.1, 3.9, 4.0], "cpu_probe_ms_by_minute": [0.6, None, -1e-05],
            "post": {"by_status": {"200": 3}}}  # fmt: skip
    markdown = render(json.loads(json.dumps(soak)))
    assert '"post_p50_ms_by_minute": [4.1, 3.9, 4.0],' in markdown
    assert '"cpu_probe_ms_by_minute": [0.6, null, -1e-05],' in markdown
    assert '"rss_mb_by_minute": [241.5, 242.0, 242.5]' in markdown
    assert '"200": 3' in markdown and "[50.2" not in markdown  # objects as before; raw samples left out
    shown = json.loads(markdown.split("```json\n")[1].split("\n```")[0])
    assert shown["post_p50_ms_by_minute"] == soak["post_p50_ms_by_minute"]  # still the JSON it was


def test_no_artifact_is_rendered_into_two_blocks_of_the_docs() -> None:
    """`utpm bench report` renders every block whose artifact exists: a record kept in
    performance-history.md that named the same JSON as a quoted run would be overwritten by the
    next run of that command (it happened once, 2026-12-07). Each artifact path has one block."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    seen: dict[str, str] = {}
    for doc in sorted(docs.glob("*.md")):
        for m in BLOCK.finditer(doc.read_text()):
            for path in m["path"].split(","):
                assert path not in seen, f"{path} is rendered in {seen[path]} and in {doc.name}"
                seen[path] = doc.name
    assert len(seen) > 20  # the docs' blocks were found


def test_a_block_of_several_serve_reports_is_a_side_by_side_table(tmp_path: Path) -> None:
    def serve(model: str, post: float, minute: int, workers: int = 1) -> dict[str, Any]:
        return {"kind": "serve", "started_at": f"2026-01-01T04:{minute:02d}:00+00:00",
                "bundle": {"model": model, "path": f"b/{model}"}, "config": {"workers": workers},
                "summary": {"compare_users": 16, "ratios": {"post_vs_roofline": post / 1000}},
                "runs": {"utpm/post/16": {"rps": post, "p99_ms": 60.0}, "utpm/wrk/16": {"rps": post + 50}},
                "roofline": {"best": {"users_per_s": 1000.0, "cpu_ms_per_user": 1.84}}}  # fmt: skip

    (tmp_path / "p.json").write_text(json.dumps(serve("utpm", 367.6, 31)))
    (tmp_path / "d.json").write_text(json.dumps(serve("utpm-hist", 316.8, 36, workers=2)))
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- report: p.json,d.json -->\nby hand\n<!-- /report -->\n")
    assert regenerate(doc, tmp_path) == [("p.json,d.json", "regenerated")]
    rows = [line for line in doc.read_text().splitlines() if line.startswith("| 04:")]
    assert rows == [
        "| 04:31 | utpm (b/utpm) | 367.6 | 60.0 | 417.6 | 1,000.0 | 1.84 | 0.368 | - | - |",
        "| 04:36 | utpm-hist (b/utpm-hist), 2 workers | 316.8 | 60.0 | 366.8 | 1,000.0 | 1.84 | 0.317 | - | - |",
    ]
    (tmp_path / "d.json").unlink()  # one artifact missing: the quoted table stays
    text = doc.read_text()
    assert regenerate(doc, tmp_path) == [("p.json,d.json", "kept (artifact missing)")] and doc.read_text() == text


def test_a_block_of_several_roofline_reports_is_a_side_by_side_table(tmp_path: Path) -> None:
    def roofline(bundle: str, model_ms: float, minute: int) -> dict[str, Any]:
        rows = [
            {"batch": b, "threads": t, "users_per_s": 100.0 * b * t, "per_user": {"model_ms": model_ms / b}}
            for b in (8, 16)
            for t in (1, 2)
        ]
        return {"kind": "roofline", "started_at": f"2026-01-01T05:{minute:02d}:00+00:00", "bundle": bundle,
                "engine": {"rows": rows, "best": {"users_per_s": 3200.0, "cpu_ms_per_user": 0.625}}}  # fmt: skip

    (tmp_path / "a.json").write_text(json.dumps(roofline("before/bundle", 16.0, 1)))
    (tmp_path / "b.json").write_text(json.dumps(roofline("after/bundle", 8.0, 3)))
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- report: a.json,b.json -->\nby hand\n<!-- /report -->\n")
    assert regenerate(doc, tmp_path) == [("a.json,b.json", "regenerated")]
    rows = [line for line in doc.read_text().splitlines() if line.startswith("| 05:")]
    assert rows == [
        "| 05:01 | before/bundle | 2.000 | 1,600.0 | 1.000 | 3,200.0 | 3,200.0 | 0.625 |",
        "| 05:03 | after/bundle | 1.000 | 1,600.0 | 0.500 | 3,200.0 | 3,200.0 | 0.625 |",
    ]
    (tmp_path / "b.json").write_text(json.dumps({"kind": "serve"}))  # a mix of kinds is refused
    with pytest.raises(ValueError, match="serve \\(or only roofline\\) reports"):
        regenerate(doc, tmp_path)


def test_bench_report_names_an_artifact_that_is_no_report_and_writes_no_doc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSON of another shape (another command's --json, a hand-edited file) was a KeyError or
    TypeError traceback from inside a renderer, after the docs before it had been rewritten."""
    from typer.testing import CliRunner

    from utpm_cli.main import app

    monkeypatch.chdir(tmp_path)
    good = {"kind": "reliability", "scenario": "reload", "started_at": "2026-01-01T00:00:00+00:00",
            "machine": {"cpu": "cpu", "cores": 2}, "command": "c", "wall_s": 1.0}  # fmt: skip
    Path("a.json").write_text(json.dumps(good))
    first, second = Path("first.md"), Path("second.md")
    first.write_text("<!-- report: a.json -->\nstale\n<!-- /report -->\n")
    second.write_text("<!-- report: b.json -->\nquoted\n<!-- /report -->\n")
    for bad, expected in (
        ({"kind": "serve"}, "b.json: not a complete serve report (KeyError: 'bundle')"),
        ([1], "b.json: not a benchmark report (kind None; known: serve,"),
        ({"kind": "speed-probe"}, "b.json: not a benchmark report (kind 'speed-probe'"),
    ):
        Path("b.json").write_text(json.dumps(bad))
        result = CliRunner().invoke(app, ["bench", "report", "first.md", "second.md"])
        assert result.exit_code == 2 and expected in result.output, result.output
        assert "stale" in first.read_text()  # the first doc, fine on its own, is not half of an update
    Path("b.json").unlink()
    result = CliRunner().invoke(app, ["bench", "report", "first.md", "second.md"])
    assert result.exit_code == 0 and "stale" not in first.read_text(), result.output


@pytest.fixture(scope="module")
def smoke_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from index.build import build_index

    out = tmp_path_factory.mktemp("loadtest") / "bundle"
    shutil.copytree(tiny_bundle, out)
    build_index(out, kind="flat")
    return out


def test_smoke_load_run(smoke_bundle: Path, tiny_run: Path, tmp_path: Path) -> None:
    """Every scenario and every server, about a second each: nothing fails, the report is complete."""
    cfg = BenchConfig(
        bundle=smoke_bundle,
        run=tiny_run,
        levels=(2,),
        compare_users=2,
        duration_s=1.0,
        warmup_s=0.0,
        k=5,
        read_users=3,
        open_rate=20,
        profile=True,
        profile_s=1.0,
        roofline_s=0.2,
        out_dir=tmp_path / "out",
        command="pytest smoke",
    )
    report = run_bench(cfg)
    runs = report["runs"]
    assert set(runs) == {
        "utpm/post/2",
        "utpm/get/2",
        "utpm/mix/2",
        "utpm/open",
        "utpm/wrk/2",
        "utpm/wrk-get/2",
        "utpm-near-cache-off/get/2",
        "raw-asgi/wrk/2",
        "raw-asgi/wrk-get/2",
        "utpm-profiled/post/2",
        "ceiling/post/2",
        "ceiling/get/2",
        "naive/post/2",
    }
    for key, r in runs.items():
        assert r["failures"] == 0, (key, r)
        assert r["requests"] > 0, key
        assert r["rps"] > 0 and r["p50_ms"] is not None and r["p99_ms"] >= r["p50_ms"], (key, r)
        assert r["loadgen_cores"] >= 0 and r["service_cores"] >= 0
        assert r["cpu_probe"]["samples"] >= 1 and r["cpu_probe"]["median_ms"] > 0, key  # how fast the cores ran
    metrics = runs["utpm/post/2"]["service_metrics"]
    assert set(metrics["stages"]) == {"parse", "queue", "model", "index", "cache"}
    assert metrics["batches"]["count"] > 0 and metrics["batches"]["mean_size"] >= 1
    hits = runs["utpm/get/2"]["service_metrics"]["cache_hits"]
    assert hits["count"] > 0 and hits["near_cache_share"] > 0.5  # each user re-reads what it profiled
    redis_only = runs["utpm-near-cache-off/get/2"]["service_metrics"]
    assert redis_only["cache_hits"]["near_cache_share"] == 0 and redis_only["redis_reads_per_round_trip"] >= 1
    summary = report["summary"]
    assert summary["failed_requests"] == 0
    assert summary["ratios"]["get_near_cache_off_vs_ceiling"] is not None
    assert set(summary["targets"]) == {
        "post_vs_ceiling",
        "post_vs_naive",
        "post_p99_ms",
        "get_vs_ceiling",
        "post_vs_roofline",
        "post_vs_raw_asgi",
        "get_vs_raw_asgi",
    }
    assert all(t["value"] is not None for t in summary["targets"].values())
    assert summary["ratios"]["post_vs_roofline_at_formed_batch"] is not None
    assert report["roofline"]["best"]["users_per_s"] > 0
    wrk_hits = runs["utpm/wrk-get/2"]["service_metrics"]["cache_hits"]
    assert wrk_hits["count"] >= runs["utpm/wrk-get/2"]["requests"]  # every wrk GET was a hit
    assert runs["utpm/open"]["target_rate"] == 20 and runs["utpm/open"]["by_status"] == {
        "200": runs["utpm/open"]["requests"]
    }
    assert report["profile"]["by_group_share_of_busy"]
    markdown = render(json.loads(json.dumps(report)))  # as `utpm bench report` reads it back
    assert "| utpm/post/2 | 2 |" in markdown and "pytest smoke" in markdown and "open loop @ 20/s" in markdown
    assert "Engine roofline of the same run" in markdown


def test_roofline_measures_the_engine_per_batch_size_and_the_raw_asgi_ceiling(
    smoke_bundle: Path, tmp_path: Path
) -> None:
    from loadtest.roofline import RooflineConfig, roofline_at, run_roofline

    cfg = RooflineConfig(
        smoke_bundle, k=5, batch_sizes=(1, 4), seconds=0.2, ab_rounds=2, duration_s=1.0, out_dir=tmp_path, read_users=3
    )
    report = run_roofline(cfg)
    engine = report["engine"]
    workers = engine["thread_settings"]["batch_workers"]
    assert {(r["batch"], r["threads"]) for r in engine["rows"]} == {(b, t) for b in (1, 4) for t in {1, workers}}
    for r in engine["rows"]:
        assert r["users"] > 0 and r["users_per_s"] > 0 and r["cpu_ms_per_user"] > 0, r
        assert all(v >= 0 for v in r["per_user"].values()) and r["per_user"]["model_ms"] > 0
        assert r["cpu_probe"]["samples"] >= 1, r
    assert engine["best"]["users_per_s"] == max(r["users_per_s"] for r in engine["rows"] if r["threads"] == workers)
    assert len(engine["faiss_openmp_ab"]["arms"]) == 2
    assert all(len(a["rounds"]) == 2 for a in engine["faiss_openmp_ab"]["arms"].values())
    rows = {r["batch"]: r["users_per_s"] for r in engine["rows"] if r["threads"] == workers}
    assert roofline_at(engine, 2.5) == pytest.approx((rows[1] + rows[4]) / 2)
    for route in ("post", "get"):
        x = report["raw_asgi"][route]
        assert x["failures"] == 0 and x["requests"] > 0 and x["rps"] > 0, (route, x)
    markdown = render(json.loads(json.dumps(report)))
    assert "| 4 | " + str(workers) + " |" in markdown and "Raw ASGI ceiling" in markdown
    first_row = markdown.split("| CPU probe ms |")[1].splitlines()[2]  # after the header's end and |---|
    assert re.search(r"\| \d+\.\d\d \(\d+\.\d\d-\d+\.\d\d\) \|$", first_row), first_row  # each row's probe


def test_tune_alternates_variants_and_reports_medians(smoke_bundle: Path, tmp_path: Path) -> None:
    from loadtest.tune import TuneConfig, parse_variant, run_tune

    variants = [parse_variant(""), parse_variant("batch_max_users=2,workers=2")]
    report = run_tune(
        TuneConfig(
            variants=variants, bundle=smoke_bundle, connections=2, duration_s=1.0, rounds=2, k=5, out_dir=tmp_path
        )
    )
    assert [r["variant"] for r in report["runs"]] == ["defaults", "batch_max_users=2,workers=2"] * 2
    for r in report["runs"]:
        assert r["failures"] == 0 and r["requests"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0, r
        # the scrapes cover every worker: the service counted the run's requests, whichever process took them
        served = r["service_metrics"]["server_latency"]["POST /profile 2xx"]["count"]
        assert abs(served - r["requests"]) <= 2, (served, r["requests"], r["workers"])
        assert "gc_pauses" in r["service_metrics"]
    assert set(report["summary"]) == {"defaults", "batch_max_users=2,workers=2"}
    assert "| variant | median req/s |" in render(report)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_variant("batch_max_size")


def test_a_variant_the_service_would_refuse_is_refused_naming_the_setting() -> None:
    """Before: `batch_max_users=abc` started a server that never became ready ("create_app not ready"),
    `workers=abc` was int()'s message and `workers=0` ran."""
    from loadtest.tune import parse_variant

    for text, problem in (
        ("batch_max_users=abc", "variant 'batch_max_users=abc': invalid settings: UTPM_BATCH_MAX_USERS"),
        ("batch_max_wait_ms=inf", "UTPM_BATCH_MAX_WAIT_MS: Input should be less than or equal to 1000"),
        ("workers=0", "workers must be a whole number of at least 1, got '0'"),
        ("workers=abc", "workers must be a whole number of at least 1, got 'abc'"),
        ("nonsense=1", "not a service setting: nonsense"),
    ):
        with pytest.raises(ValueError) as e:
            parse_variant(text)
        assert problem in str(e.value), text


def test_loop_bench_measures_every_variant(smoke_bundle: Path) -> None:
    from loadtest.loop import run_loop_bench

    report = run_loop_bench(smoke_bundle, requests=64, concurrency=4, rounds=1, users=4)
    variants = [k for k in report if k.startswith(("service", "ceiling"))]
    assert len(variants) == 6
    for name in variants:
        assert report[name]["loop_us_per_request"] > 0 and report[name]["requests_per_s"] > 0, name


def test_reliability_scenario_injects_its_fault_under_open_loop_load(smoke_bundle: Path) -> None:
    """The redis-outage scenario at a low rate for 15 s: POST never fails, GET is 503 while Redis is down,
    and the cache answers again within the circuit breaker's longest backoff after the restart. The load
    runs on for a third of the run after the restart (5 s), longer than that backoff plus 0.5 s."""
    from loadtest.reliability import run_scenario
    from service.breaker import BREAKER_BACKOFF_MAX_S

    duration_s = 15
    assert duration_s / 3 > BREAKER_BACKOFF_MAX_S + 0.5  # else a recovery at the bound falls after the run
    r = run_scenario("redis-outage", smoke_bundle, lambda _m: None, rate=20, duration_s=duration_s)
    assert r["events_s"]["killed"] < r["events_s"]["restarted"]
    assert r["post"]["by_status"] == {"200": r["post"]["requests"]} and r["post"]["requests"] > 40
    assert r["post"]["wrong_answers"] == 0 and r["get"]["wrong_answers"] == 0
    assert "503" in r["get_during_outage"]["by_status"] and r["recovery_s"] <= BREAKER_BACKOFF_MAX_S + 0.5
    assert r["post"]["p99_ms"] >= r["post"]["p50_ms"] > 0


@pytest.mark.parametrize("scenario", ["bad-bodies", "bad-bodies-anonymous"])
def test_bad_bodies_scenario_sends_every_shape_beside_the_load_and_renders_two_tables(
    smoke_bundle: Path, scenario: str
) -> None:
    """bad-bodies at a low rate for 9 s: the attacker's 3 s send every hostile shape (paced at 4/s), each
    gets a 422 (anonymous, against a service with a write key that the load sends: a 401, but where
    reads are open, the lookup's 422), and nobody else's request fails; its report block is the two tables."""
    from loadtest.hostile import hostile_bodies
    from loadtest.reliability import run_scenario

    r = run_scenario(scenario, smoke_bundle, lambda _m: None, rate=20, duration_s=9, bad_rate=4)
    shapes = r["bad_bodies"]
    assert list(shapes) == [b.name for b in hostile_bodies()] and all(s["sent"] >= 1 for s in shapes.values())
    for b in hostile_bodies():
        keyed = scenario == "bad-bodies-anonymous" and b.path != "/profiles/lookup"
        assert shapes[b.name]["statuses"] == [401 if keyed else 422], (b.name, shapes[b.name])
    for window in ("post_before", "post_during", "post_after", "get_during"):
        assert set(r[window]["by_status"]) == {"200"}, (window, r[window])
    assert r["alive_after"] is True
    markdown = render(json.loads(json.dumps(r)))
    assert "| bad body | route |" in markdown and "| POST | during |" in markdown and "```json" not in markdown


def test_the_roofline_subprocess_loads_the_engine_with_the_services_settings(
    smoke_bundle: Path, tmp_path: Path
) -> None:
    """`utpm bench serve --set device=cpu` once measured the roofline with the default settings (ONNX
    Runtime on the GPU) beside a service on the CPU: the subprocess takes the same settings."""
    from loadtest.roofline import RooflineConfig, engine_in_subprocess

    cfg = RooflineConfig(smoke_bundle, k=5, batch_sizes=(1,), seconds=0.1, asgi=False, settings={"batch_workers": "3"})
    engine = engine_in_subprocess(cfg, tmp_path / "roofline.json", tmp_path / "roofline.log")
    assert engine["thread_settings"]["batch_workers"] == 3
    assert {r["threads"] for r in engine["rows"]} == {1, 3}


def test_the_roofline_of_a_linear_bundle_alternates_its_two_paths(hist_bundle: Path, tmp_path: Path) -> None:
    """A bundle marked linear (the default model at its start): the roofline's A/B runs the engine's
    linear path and the same bundle loaded with `linear_scorer=false` (the ONNX graph and the index) in
    turn. The linear engine loads no index, so there is no FAISS A/B."""
    from loadtest.roofline import GRAPH_ARM, LINEAR_ARM, RooflineConfig, run_roofline

    cfg = RooflineConfig(hist_bundle, k=5, batch_sizes=(4,), seconds=0.1, ab_rounds=2, asgi=False, out_dir=tmp_path)
    report = run_roofline(cfg)
    assert report["engine"]["index_device"] == "none" and "faiss_openmp_ab" not in report["engine"]
    assert report["engine"]["rss_mib"] > 0
    arms = report["engine"]["linear_ab"]["arms"]
    assert list(arms) == [LINEAR_ARM, GRAPH_ARM] and all(len(a["rounds"]) == 2 for a in arms.values())
    assert all(a["median_users_per_s"] > 0 and a["median_encode_ms_per_user"] > 0 for a in arms.values())
    markdown = render(json.loads(json.dumps(report)))
    assert "A/B of the linear bundle's two paths" in markdown and LINEAR_ARM in markdown
    assert "no index (linear scorer)" in markdown and "FAISS OpenMP" not in markdown
