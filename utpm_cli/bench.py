"""Typer commands `utpm bench serve`, `speed`, `tune`, `loop`, `reliability`, `commits` and `report` (registered in
`utpm_cli/main.py`). The load commands write JSON artifacts; only `report` writes the docs."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from utpm_cli.errors import fail, output_file, output_folder, positive_ints, refuse_unread, require_bundle

# `--model` of the commands that build the benchmark bundle themselves (`loadtest.bundle.MODELS`)
BenchModel = Annotated[
    str, typer.Option(help="The benchmark bundle's model: utpm-hist (the default model) or utpm (the paper's).")
]


def _command_line() -> str:
    """This command as typed, for the report."""
    return "utpm " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def progress_lines(t0: float) -> Callable[[str], None]:
    """Progress lines on stderr, with the seconds since `t0`."""
    return lambda message: typer.echo(f"  [{time.perf_counter() - t0:5.0f}s] {message}", err=True)


def _write(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


def _measure(
    run: Callable[..., dict[str, Any]], cfg: Any, json_out: Path, render: Callable[[Any], str]
) -> tuple[dict[str, Any], float]:
    """Run a benchmark with progress lines on stderr, write its JSON, print its report -> (report, seconds)."""
    from index.errors import TagIndexError
    from model_export.errors import BundleError

    t0 = time.perf_counter()
    try:
        report = run(cfg, progress=progress_lines(t0))
    except (RuntimeError, OSError, ValueError, BundleError, TagIndexError) as e:
        fail(str(e))
    _write(report, json_out)
    typer.echo(render(report))
    return report, time.perf_counter() - t0


def _settings(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--set takes KEY=VALUE (a service setting, e.g. batch_max_wait_ms=2), got {pair!r}")
        out[key.strip().lower()] = value.strip()
    from loadtest.serve import check_settings

    try:
        check_settings(out)
    except ValueError as e:
        fail(f"--set: {e}")
    return out


def bench_serve_cmd(
    ctx: typer.Context,
    tags: Annotated[int, typer.Option(help="Synthetic tags of the benchmark bundle (built once, then reused).")] = (
        1_000_000
    ),
    model: BenchModel = "utpm-hist",
    json_out: Annotated[
        Path, typer.Option("--json", callback=output_file, help="Write the report as JSON here.")
    ] = Path("artifacts/bench/serve.json"),
    users: Annotated[str, typer.Option("--users", help="Concurrency levels of the POST runs.")] = "1,16,64",
    compare_users: Annotated[int, typer.Option(min=1, help="Users of the GET, mix, ceiling and peer runs.")] = 16,
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds per load run.")] = 30.0,
    k: Annotated[int, typer.Option(min=1, max=1000, help="Tags per profile requested.")] = 50,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes of the service.")] = 1,
    open_rate: Annotated[
        float | None,
        typer.Option(
            "--open-rate",
            "--wrk-rate",
            help="Rate of the open-loop run (default: half the POST req/s at --compare-users).",
        ),
    ] = None,
    settings: Annotated[
        list[str] | None, typer.Option("--set", help="Service setting KEY=VALUE (a Settings field), repeatable.")
    ] = None,
    bundle: Annotated[Path | None, typer.Option(help="Serve this indexed bundle instead of the benchmark's.")] = None,
    run: Annotated[
        Path | None, typer.Option(help="Training run the naive peer serves (default: the bundle's).")
    ] = None,
    payloads: Annotated[Path | None, typer.Option(help="JSON-lines request bodies (default: held-out users).")] = None,
    peers: Annotated[bool, typer.Option(help="Also measure the ceiling and the naive peer.")] = True,
    roofline: Annotated[
        bool, typer.Option(help="Also measure the engine's roofline and the raw ASGI ceiling (utpm bench roofline).")
    ] = True,
    profile: Annotated[bool, typer.Option(help="Also profile the event loop with cProfile.")] = True,
    root: Annotated[Path, typer.Option(help="Where the benchmark bundle and the run's logs go.")] = Path(
        "artifacts/bench"
    ),
) -> None:
    """The service under load (locust + wrk) beside an empty FastAPI ceiling and a naive peer: a JSON report."""
    from loadtest.report import render_serve
    from loadtest.serve import BenchConfig, run_bench

    _check_recipe(tags, model)
    if bundle is not None:
        refuse_unread(ctx, ("tags", "model"), "they describe the benchmark bundle, which --bundle replaces")
    if not peers:
        refuse_unread(ctx, ("run",), "the run the naive peer serves, which --no-peers leaves out")
    cfg = BenchConfig(
        tags=tags,
        model=model,
        root=root,
        bundle=bundle,
        run=run,
        payloads=payloads,
        levels=positive_ints(users, "--users"),
        compare_users=compare_users,
        duration_s=duration,
        k=k,
        open_rate=open_rate,
        peers=peers,
        roofline=roofline,
        profile=profile,
        workers=workers,
        service_settings=_settings(settings or []),
        command=_command_line(),
    )
    report, seconds = _measure(run_bench, cfg, json_out, render_serve)
    s = report["summary"]
    met = sum(1 for t in s["targets"].values() if t["met"])
    typer.echo(
        f"benchmarked the service in {seconds:.0f}s: {met}/{len(s['targets'])} targets met, "
        f"{s['failed_requests']} failed requests; wrote {json_out} (`utpm bench report` puts it in the docs)"
    )


def bench_roofline_cmd(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="An indexed bundle (e.g. artifacts/bench/tags1000000/bundle).")],
    payloads: Annotated[
        Path | None, typer.Option(help="JSON-lines request bodies (default: drawn from the bundle's vocabularies).")
    ] = None,
    batch: Annotated[str, typer.Option(help="Batch sizes of the engine runs.")] = "1,2,4,8,16,32,64",
    seconds: Annotated[float, typer.Option(help="Seconds per engine run (batch size x thread count).")] = 3.0,
    k: Annotated[int, typer.Option(help="Tags per profile requested.")] = 50,
    asgi: Annotated[bool, typer.Option(help="Also measure the raw ASGI ceiling under wrk.")] = True,
    connections: Annotated[int, typer.Option(help="wrk connections for the raw ASGI ceiling.")] = 16,
    duration: Annotated[float, typer.Option(help="Seconds per wrk run.")] = 10.0,
    json_out: Annotated[
        Path, typer.Option("--json", callback=output_file, help="Write the report as JSON here.")
    ] = Path("artifacts/bench/roofline.json"),
    settings: Annotated[
        list[str] | None, typer.Option("--set", help="Service setting KEY=VALUE (a Settings field), repeatable.")
    ] = None,
) -> None:
    """The engine alone (encode + model + index + render, no HTTP) per batch size, and a raw ASGI ceiling: JSON."""
    from loadtest.report import render_roofline
    from loadtest.roofline import RooflineConfig, run_roofline

    require_bundle(bundle)
    if not asgi:
        refuse_unread(ctx, ("connections", "duration"), "settings of the raw ASGI ceiling, which --no-asgi leaves out")
    sizes = positive_ints(batch, "--batch")
    if seconds <= 0 or duration <= 0 or connections < 1:
        fail("--seconds and --duration must be positive and --connections at least 1")
    cfg = RooflineConfig(
        bundle=bundle,
        payloads=payloads,
        k=k,
        batch_sizes=sizes,
        seconds=seconds,
        asgi=asgi,
        connections=connections,
        duration_s=duration,
        command=_command_line(),
        settings=_settings(settings or []),
    )
    _, seconds = _measure(run_roofline, cfg, json_out, render_roofline)
    typer.echo(f"measured the roofline in {seconds:.0f}s; wrote {json_out}")


def bench_speed_cmd(
    seconds: Annotated[float, typer.Option(help="Seconds of probing (the CPUs in turn).")] = 30.0,
    json_out: Annotated[
        Path, typer.Option("--json", callback=output_file, help="Write the report as JSON here.")
    ] = Path("artifacts/bench/speed.json"),
) -> None:
    """How fast each core runs a fixed piece of Python, probe after probe (a shared VM's cores change
    speed from second to second; every load run records the same probe): JSON."""
    from loadtest.report import render_speed
    from loadtest.speed import run_speed

    if seconds <= 0:
        fail(f"--seconds must be positive, got {seconds}")
    report = run_speed(seconds) | {"command": _command_line()}
    _write(report, json_out)
    typer.echo(render_speed(report))
    typer.echo(f"probed the cores {report['all']['samples']} times in {seconds:g}s; wrote {json_out}")


def bench_tune_cmd(
    ctx: typer.Context,
    variant: Annotated[
        list[str],
        typer.Option(
            "--variant",
            help='Service settings of one variant, "KEY=VALUE[,KEY=VALUE...]" (UTPM_KEY; workers=N for uvicorn '
            'workers; "" for the defaults); repeat for each variant.',
        ),
    ],
    tags: Annotated[int, typer.Option(help="Synthetic tags of the benchmark bundle (built once, then reused).")] = (
        1_000_000
    ),
    model: BenchModel = "utpm-hist",
    bundle: Annotated[Path | None, typer.Option(help="Serve this indexed bundle instead of the benchmark's.")] = None,
    payloads: Annotated[
        Path | None, typer.Option(help="JSON-lines request bodies (default: the benchmark's, or drawn for --bundle).")
    ] = None,
    connections: Annotated[int, typer.Option(help="wrk connections (closed loop).")] = 16,
    duration: Annotated[float, typer.Option(help="Seconds per run.")] = 10.0,
    rounds: Annotated[int, typer.Option(help="Times each variant runs, in alternation with the others.")] = 2,
    json_out: Annotated[
        Path, typer.Option("--json", callback=output_file, help="Write the report as JSON here.")
    ] = Path("artifacts/bench/tune.json"),
    root: Annotated[Path, typer.Option(help="Where the benchmark bundle and the logs go.")] = Path("artifacts/bench"),
) -> None:
    """Service settings side by side: POST /profile under wrk, variants alternated (A B A B)."""
    from loadtest.report import render_tune
    from loadtest.tune import TuneConfig, parse_variant, run_tune

    _check_recipe(tags, model)
    if bundle is not None:
        refuse_unread(ctx, ("tags", "model"), "they describe the benchmark bundle, which --bundle replaces")
    if connections < 1 or duration <= 0 or rounds < 1:
        fail("--connections and --rounds must be at least 1 and --duration positive")
    try:
        variants = [parse_variant(v) for v in variant]
    except ValueError as e:
        fail(str(e))
    cfg = TuneConfig(
        variants=variants,
        tags=tags,
        model=model,
        root=root,
        bundle=bundle,
        payloads=payloads,
        connections=connections,
        duration_s=duration,
        rounds=rounds,
        command=_command_line(),
    )
    report, seconds = _measure(run_tune, cfg, json_out, render_tune)
    best = max(report["summary"].items(), key=lambda kv: kv[1]["median_rps"])
    typer.echo(
        f"tuned {len(variants)} variant(s) x {rounds} round(s) in {seconds:.0f}s; highest median "
        f"req/s: {best[0]} ({best[1]['median_rps']:,.0f}); wrote {json_out}"
    )


def bench_payloads_cmd(
    data: Annotated[Path, typer.Argument(help="A data set in the generic format (e.g. artifacts/demo/data).")],
    out: Annotated[Path, typer.Argument(callback=output_file, help="The JSON-lines file to write.")],
    seed: Annotated[int, typer.Option(help="Seed of the protocol split (the bundle's training seed).")] = 0,
    test_fraction: Annotated[float, typer.Option(min=0.01, max=1.0, help="Share of test users in the split.")] = 0.2,
    items: Annotated[bool, typer.Option(help="Send each user's clicked items as clicked_items.")] = True,
    counts: Annotated[
        bool, typer.Option(help="Send each multi-valued field as {value: count} (else its distinct values).")
    ] = True,
    max_items: Annotated[
        int | None,
        typer.Option(min=1, help="The most recent distinct clicked items sent (default: as many as the model reads)."),
    ] = None,
    tag_items: Annotated[
        bool,
        typer.Option(help='Send a tag clicked on one item more than once as {"count": c, "items": d} (with counts).'),
    ] = True,
) -> None:
    """Request bodies of a data set's held-out test users, for --payloads of the serving benchmarks."""
    from loadtest.bundle import write_payloads
    from utpm.data.errors import DataError

    try:
        if not counts and not tag_items:
            fail("--no-tag-items: the distinct items go with the counts, which --no-counts leaves out")
        n = write_payloads(data, seed, test_fraction, out, items, max_items, counts, tag_items)
    except (DataError, OSError) as e:
        fail(str(e))
    sent = (("clicked_items", items), ("counts", counts), ("tags' distinct items", tag_items or not counts))
    left_out = [what for what, on in sent if not on]
    without = f" (without {' and '.join(left_out)})" if left_out else ""
    typer.echo(f"wrote {n:,} request bodies{without} to {out}")


def bench_loop_cmd(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="An indexed bundle (e.g. artifacts/demo/bundle).")],
    requests: Annotated[int, typer.Option(help="GET hits per timed round.")] = 20_000,
    concurrency: Annotated[int, typer.Option(min=1, help="Coroutines sending at once.")] = 16,
    rounds: Annotated[int, typer.Option(help="Timed rounds (the median is reported).")] = 3,
    json_out: Annotated[
        Path | None, typer.Option("--json", callback=output_file, help="Also write the report as JSON here.")
    ] = None,
    post_only: Annotated[
        bool, typer.Option(help="Only the POST A/B (route, batching): --requests POSTs per round per arm.")
    ] = False,
    payloads: Annotated[Path | None, typer.Option(help="JSON-lines request bodies for the POSTs.")] = None,
) -> None:
    """Event-loop CPU per GET /profile hit and per POST, in process (no HTTP): variants A/B, the ceiling; JSON."""
    from loadtest.loop import run_loop_bench, run_post_ab

    require_bundle(bundle)
    if not post_only:
        refuse_unread(ctx, ("payloads",), "bodies of the POST A/B, which only --post-only runs")
    if requests < concurrency or rounds < 1:
        fail("--requests must be at least --concurrency, and --rounds at least 1")
    t0 = time.perf_counter()
    try:
        if post_only:
            report = run_post_ab(bundle, requests, concurrency, rounds, payloads)
        else:
            report = run_loop_bench(bundle, requests, concurrency, rounds)
    except (RuntimeError, OSError, ValueError) as e:
        fail(str(e))
    report["command"] = _command_line()
    typer.echo(json.dumps(report, indent=2))
    if json_out is not None:
        _write(report, json_out)
    if post_only:
        wrote = f"; wrote {json_out}" if json_out else " (stdout only)"
        typer.echo(f"measured the POST A/B in {time.perf_counter() - t0:.0f}s{wrote}")
        return
    ceiling = report["ceiling (empty FastAPI endpoint)"]["loop_us_per_request"]
    redis = report["service, Redis (near cache off)"]["loop_us_per_request"]
    typer.echo(
        f"measured the loop per GET hit in {time.perf_counter() - t0:.0f}s: service via Redis {redis:g} us, "
        f"ceiling {ceiling:g} us" + (f"; wrote {json_out}" if json_out else " (stdout only)")
    )


def bench_reliability_cmd(
    scenario: Annotated[
        str, typer.Argument(help="redis-outage, overload, reload, soak, bad-bodies or bad-bodies-anonymous.")
    ],
    bundle: Annotated[Path, typer.Option(help="An indexed bundle (make demo builds one).")] = Path(
        "artifacts/demo/bundle"
    ),
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json", callback=output_file, help="Write the result here (default: artifacts/reliability/SCENARIO.json)."
        ),
    ] = None,
    rate: Annotated[
        float, typer.Option(min=0, help="Requests/s (0: the scenario's default; overload: 3x sustainable).")
    ] = 0.0,
    duration: Annotated[float, typer.Option(min=0, help="Seconds (0: the scenario's default; soak: 600).")] = 0.0,
) -> None:
    """Fault, overload, hot-reload and soak scenarios against a live service (docs/reliability.md): JSON."""
    from loadtest.reliability import SCENARIOS, run_scenario

    if scenario not in SCENARIOS:
        fail(f"unknown scenario {scenario!r}; valid: {', '.join(SCENARIOS)}")
    kw = {k: v for k, v in (("rate", rate), ("duration_s", duration)) if v}
    try:
        result = run_scenario(scenario, bundle, progress_lines(time.perf_counter()), _command_line(), **kw)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        fail(str(e))
    path = json_out or Path("artifacts/reliability") / f"{scenario}.json"
    _write(result, path)
    typer.echo(json.dumps({k: v for k, v in result.items() if k not in ("machine", "rss_mb")}, indent=1))
    post = result.get("post", {})
    typer.echo(f"{scenario}: {post.get('requests', 0)} POSTs {post.get('by_status', {})}; wrote {path}")


def bench_commits_cmd(
    before: Annotated[str, typer.Argument(help="The git ref measured first in each round.")],
    after: Annotated[
        str, typer.Argument(help="The git ref measured second; WORKTREE for the uncommitted working tree.")
    ],
    command: Annotated[list[str], typer.Argument(help="After --: the `utpm ...` command, writing to {json}.")],
    rounds: Annotated[int, typer.Option(help="Times each commit runs, in alternation with the other.")] = 2,
    out: Annotated[Path, typer.Option(callback=output_folder, help="Each run's JSON report and log go here.")] = Path(
        "artifacts/bench/commits"
    ),
    json_out: Annotated[
        Path, typer.Option("--json", callback=output_file, help="Write the comparison as JSON here.")
    ] = Path("artifacts/bench/commits.json"),
) -> None:
    """One benchmark command at two commits, alternated in one run (for a change no setting switches)."""
    from loadtest.commits import CommitsConfig, run_commits
    from loadtest.report import render_commits

    cfg = CommitsConfig(
        before=before, after=after, command=tuple(command), out=out, rounds=rounds, command_line=_command_line()
    )
    report, seconds = _measure(run_commits, cfg, json_out, render_commits)
    c = report["commits"]
    typer.echo(
        f"compared {c['before']} and {c['after']} over {rounds} round(s) in {seconds:.0f}s; "
        f"wrote {json_out} and the runs' reports under {out}"
    )


def bench_report_cmd(
    docs: Annotated[list[Path] | None, typer.Argument(help="Docs to regenerate.")] = None,
) -> None:
    """Regenerate the measured blocks of docs/performance.md, performance-history.md, reliability.md and
    serving.md from their JSON."""
    from loadtest.report import BLOCK, rerender

    defaults = ["performance.md", "performance-history.md", "reliability.md", "serving.md"]
    paths = docs or [Path("docs") / name for name in defaults]
    for doc in paths:  # every doc checked before any is rewritten
        if not doc.is_file():
            fail(f"{doc}: no such file" + ("" if docs else " (run from the repository root, or name the docs)"))
        if not BLOCK.search(doc.read_text()):
            fail(f"{doc} has no measured blocks (<!-- report: ARTIFACT.json --> ... <!-- /report -->)")
    done, texts = [], {}
    for doc in paths:  # every doc rendered before any is written: a bad artifact leaves them all as they were
        try:
            texts[doc], blocks = rerender(doc)
        except ValueError as e:  # an artifact that is not a report's JSON, or a mix of kinds in one block
            fail(f"{doc}: {e}")
        done += [(doc, artifact, what) for artifact, what in blocks]
    for doc, text in texts.items():
        if text != doc.read_text():  # an unchanged doc keeps its timestamp (make, editors)
            doc.write_text(text)
    for doc, artifact, what in done:
        typer.echo(f"{doc}: {artifact}: {what}")
    kept = sum(what != "regenerated" for *_, what in done)
    typer.echo(f"regenerated {len(done) - kept} block(s) in {len(paths)} doc(s), kept {kept} (artifact missing)")


def _check_recipe(tags: int, model: str) -> None:
    """The benchmark bundle's --tags and --model, refused before any work as `Recipe.for_tags` would
    refuse them later (it is not called here: its cross-layer check imports torch)."""
    from loadtest.bundle import MIN_TAGS, MODELS

    if tags < MIN_TAGS:
        fail(f"--tags must be at least {MIN_TAGS}, got {tags}")
    if model not in MODELS:
        fail(f"unknown benchmark model {model!r}; valid: {', '.join(MODELS)}")
