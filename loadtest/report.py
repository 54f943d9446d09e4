"""`utpm bench report`: the generated blocks of docs/performance.md, docs/reliability.md and docs/serving.md, rendered
from the JSON artifacts the benchmark commands write. The only code that writes those docs.

A generated block names its artifact (or several `utpm bench serve` ones, comma-separated, for a
side-by-side table with a row each) and is replaced whole:

    <!-- report: artifacts/bench/serve.json -->
    ...
    <!-- /report -->

A block whose artifact is missing on this machine is left as it is (and said so): the docs keep
quoting the run they name until someone re-runs its command and regenerates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from loadtest.commits import figures
from loadtest.gpu_report import render_gpu_check

BLOCK = re.compile(r"<!-- report: (?P<path>\S+) -->\n.*?<!-- /report -->", re.S)
# a JSON list of numbers or nulls as `json.dumps(indent=1)` writes it, one per line
SCALAR_LIST = re.compile(r"\[\n(?:[ ]*(?:-?[0-9][0-9.eE+-]*|null),?\n)+[ ]*\]")
STAGES = ("parse", "queue", "encode", "model", "index", "cache")


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _when(report: Mapping[str, Any]) -> str:
    m = report["machine"]
    when = report["started_at"].replace("T", " ").replace("+00:00", " UTC")
    return f"{when}; {m['cpu']}, {m['cores']} cores, load average {m.get('load_average_1m', '?')} at the start"


def render_serve(r: Mapping[str, Any]) -> str:
    b, cfg, s = r["bundle"], r["config"], r["summary"]
    index = f"`{b['index']['factory']}` {b['index']['params'] or ''}".rstrip()
    lines = [
        f"`{r['command'] or 'utpm bench serve'}` ({_when(r)}). Bundle {b['version']}: {b['model']} "
        f"({b['preset']}), {b['servable_tags']:,} tags x {b['dim']}, index {index}; requests: {r['payloads']}; "
        f"k = {cfg['k']}; {cfg['duration_s']:g} s per run; {cfg['workers']} worker(s); "
        f"settings {cfg['service_settings'] or 'defaults'}.",
        "",
        "| run | users | req/s | p50 ms | p95 ms | p99 ms | failed | load gen cores | server cores | other cores "
        "| CPU probe ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, x in r["runs"].items():
        users = x.get("users") or x.get("connections") or "-"
        if "target_rate" in x:
            users = f"open loop @ {x['target_rate']:g}/s"
        cells = [x.get("rps"), x.get("p50_ms"), x.get("p95_ms"), x.get("p99_ms"), x.get("failures")]
        cores = [_fmt(x.get(c), 2) for c in ("loadgen_cores", "service_cores", "other_cores")]
        cores.append(_probe(x))
        lines.append(f"| {key} | {users} | " + " | ".join(map(_fmt, cells)) + " | " + " | ".join(cores) + " |")
    lines += [
        "",
        f"Targets at {s['compare_users']} users:",
        "",
        "| target | measured | wanted | met |",
        "|---|---:|---:|---|",
    ]
    for name, t in s["targets"].items():
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {name} | {_fmt(t['value'], 3)} | {t['target']} | {met} |")
    off = s["ratios"].get("get_near_cache_off_vs_ceiling")
    lines += [
        "",
        f"GET hits with the near cache off vs the ceiling: {_fmt(off, 3)}. Failed requests: {s['failed_requests']}.",
        "",
    ]
    roof = r.get("roofline")
    if roof:
        ts, best, ra = roof["thread_settings"], roof["best"], s["ratios"]
        lines += [
            f"Engine roofline of the same run (`utpm bench roofline`, {roof['seconds_per_row']:g} s per row, "
            f"{ts['batch_workers']} threads, no HTTP): best {best['users_per_s']:,.1f} users/s at batch "
            f"{best['batch']} ({best['cpu_ms_per_user']:.3f} ms CPU per user). POST at {s['compare_users']} users "
            f"(locust) is {_fmt(ra.get('post_vs_roofline'), 3)} of it, "
            f"{_fmt(ra.get('post_vs_roofline_at_formed_batch'), 3)} of the roofline at the batch size the service "
            f"formed; wrk POST {_fmt(ra.get('wrk_post_vs_roofline'), 3)}.{_speed_note(ra)}",
            "",
            "| batch | users/s (1 thread) | users/s (" + str(ts["batch_workers"]) + " threads) | CPU ms per user "
            "| CPU probe ms |",
            "|---:|---:|---:|---:|---:|",
        ]
        by: dict[int, dict[int, Any]] = {}
        for x in roof["rows"]:
            by.setdefault(x["batch"], {})[x["threads"]] = x
        for b, row in by.items():
            one, par = row.get(1, {}), row.get(ts["batch_workers"], {})
            lines.append(
                f"| {b} | {_fmt(one.get('users_per_s'))} | {_fmt(par.get('users_per_s'))} | "
                f"{_fmt(par.get('cpu_ms_per_user'), 3)} | {_probe(par)} |"
            )
        lines.append("")
    lines += _stage_lines(r["runs"])
    prof = r.get("profile")
    if prof and "by_group_share_of_busy" in prof:
        lines += [
            f"Event-loop thread under cProfile ({prof['busy_seconds']} s busy of {prof['profiled_seconds']} s):",
            "",
        ]
        lines += ["| where | share of busy time |", "|---|---:|"]
        lines += [f"| {g} | {v:.0%} |" for g, v in prof["by_group_share_of_busy"].items() if v >= 0.01]
    return "\n".join(lines).rstrip() + "\n"


def _probe(x: Mapping[str, Any]) -> str:
    """The CPU probe's median (p10-p90) while a run or row ran (`loadtest.speed`); "-" before it existed."""
    p = x.get("cpu_probe") or {}
    if p.get("median_ms") is None:
        return "-"
    return f"{p['median_ms']:.2f} ({p['p10_ms']:.2f}-{p['p90_ms']:.2f})"


def _speed_note(ratios: Mapping[str, Any]) -> str:
    """Says how much faster or slower the cores ran during the POST run than during the roofline's best row."""
    change = ratios.get("cpu_probe_post_over_roofline")
    if change is None:
        return ""
    how = "slower" if change > 1 else "faster"
    return (
        f" The CPU probe took {change:.2f}x as long during the POST run as during the roofline's best row "
        f"(the cores ran {abs(change - 1):.0%} {how}), which the ratio carries."
    )


def _stage_lines(runs: Mapping[str, Any]) -> list[str]:
    rows = [(k, x["service_metrics"]) for k, x in runs.items() if "service_metrics" in x]
    if not rows:
        return []
    out = [
        "Service-side mean ms per request by stage (`utpm_stage_seconds`; model and index are the batch's), "
        "mean batch size, server total (`utpm_request_seconds` of the run's route), near-cache share of hits, "
        "reads per Redis round trip, GC pauses:",
        "",
        "| run | " + " | ".join(STAGES) + " | batch | server total | near cache | reads/trip | GC pauses (ms) |",
        "|---|" + "---:|" * (len(STAGES) + 5),
    ]
    for key, sm in rows:
        route = "GET /profile/{user_id} 2xx" if "get" in key.split("/")[1] else "POST /profile 2xx"
        latency = sm.get("server_latency", {})
        # artifacts from before the method label (2026-12-04) name the route without it
        total = (latency.get(route) or latency.get(route.split(" ", 1)[1], {})).get("mean_ms")
        stages = " | ".join(_fmt(sm.get("stages", {}).get(st, {}).get("mean_ms"), 2) for st in STAGES)
        gc = sm.get("gc_pauses") or {}
        cells = [
            _fmt(sm.get("batches", {}).get("mean_size")),
            _fmt(total, 2),
            _fmt(sm.get("cache_hits", {}).get("near_cache_share"), 2),
            _fmt(sm.get("redis_reads_per_round_trip")),
            f"{gc['count']} ({gc['total_ms']:g})" if gc else "-",
        ]
        out.append(f"| {key} | {stages} | " + " | ".join(cells) + " |")
    return [*out, ""]


def render_tune(r: Mapping[str, Any]) -> str:
    lines = [
        f"`{r['command'] or 'utpm bench tune'}` ({_when(r)}; {r['connections']} wrk connections, closed loop, "
        f"{r['duration_s']:g} s per run, {r['rounds']} rounds in alternation):",
        "",
        "| round | variant | req/s | p50 ms | p90 ms | p99 ms | failed | server cores | wrk cores | GC pauses |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for x in r["runs"]:
        gcp = x["service_metrics"].get("gc_pauses")
        full = (gcp or {}).get("by_generation", {}).get("2", {})
        gc = f"{gcp['count']} ({gcp['total_ms']:g} ms)" if gcp else "n/a"
        if full.get("count"):
            gc += f"; {full['count']} full, {full['mean_ms']:g} ms each"
        cells = [x["rps"], x["p50_ms"], x["p90_ms"], x["p99_ms"], x["failures"], x["service_cores"], x["loadgen_cores"]]
        lines.append(f"| {x['round'] + 1} | {x['variant']} | " + " | ".join(map(_fmt, cells)) + f" | {gc} |")
    lines += ["", "| variant | median req/s | median p50 ms | median p99 ms | failed |", "|---|---:|---:|---:|---:|"]
    for name, s in r["summary"].items():
        cells = [s["median_rps"], s["median_p50_ms"], s["median_p99_ms"], s["failures"]]
        lines.append(f"| {name} | " + " | ".join(map(_fmt, cells)) + " |")
    return "\n".join(lines) + "\n"


def _json_lists_inline(value: Any) -> str:
    """JSON with one key a line, as `json.dumps(indent=1)`, but a list of numbers on one line (an hour's
    soak has sixty a list)."""
    text = json.dumps(value, indent=1)
    return SCALAR_LIST.sub(lambda m: "[" + ", ".join(v.rstrip(",") for v in m.group(0)[1:-1].split()) + "]", text)


def _rss_by_minute(samples: Sequence[Sequence[float]]) -> list[float]:
    """The soak's RSS samples (t s, MB), taken in each tenth second (`int(t) % 10 == 0`, as `soak` takes
    them) -> the MB in each whole minute from the first on."""
    return [mb for t, mb in samples if t >= 60 and int(t) % 60 == 0]


def _render_bad_bodies(r: Mapping[str, Any]) -> str:
    """`bad-bodies` as two tables: what each body got, and what the other clients got around it."""
    lines = [
        f"`{r['command'] or 'utpm bench reliability bad-bodies'}` ({_when(r)}; wall {r['wall_s']} s): "
        f"{r['rate_rps']:g} requests/s for {r['duration_s']:g} s, "
        f"bad bodies at {r['bad_rate_rps']:g}/s from {r['events_s']['started']:g} s to {r['events_s']['stopped']:g} s "
        f"({r['bad_bodies_per_s']:g}/s sent); alive after: {r['alive_after']}."
        + (
            " The service had a write key, which the others sent and the bad bodies' client did not."
            if r.get("anonymous")
            else ""
        ),
        "",
        "| bad body | route | bytes | sent | statuses | answered in, p50 ms | p99 ms |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for name, b in r["bad_bodies"].items():
        ms = b["answer_ms"]
        lines.append(
            f"| {name} | `{b['path']}` | {b['bytes']:,} | {b['sent']} | {', '.join(map(str, b['statuses']))} | "
            f"{_fmt(ms['p50_ms'], 1)} | {_fmt(ms['p99_ms'], 1)} |"
        )
    lines += [
        "",
        "| others' requests | window | requests | statuses | p50 ms | p99 ms |",
        "|---|---|---:|---|---:|---:|",
    ]
    for kind in ("post", "get"):
        for part in ("before", "during", "after"):
            w = r[f"{kind}_{part}"]
            statuses = ", ".join(f"{k}: {v}" for k, v in w["by_status"].items())
            lines.append(
                f"| {kind.upper()} | {part} | {w['requests']} | {statuses} | {_fmt(w['p50_ms'], 2)} | "
                f"{_fmt(w['p99_ms'], 2)} |"
            )
    return "\n".join(lines) + "\n"


def render_reliability(r: Mapping[str, Any]) -> str:
    if r.get("scenario") in ("bad-bodies", "bad-bodies-anonymous"):
        return _render_bad_bodies(r)
    shown = {k: v for k, v in r.items() if k not in ("kind", "machine", "rss_mb", "command", "started_at")}
    if r.get("rss_mb"):
        shown["rss_mb_by_minute"] = _rss_by_minute(r["rss_mb"])
    return (
        f"`{r['command'] or 'utpm bench reliability ' + r['scenario']}` ({_when(r)}; wall {r['wall_s']} s):\n\n"
        f"```json\n{_json_lists_inline(shown)}\n```\n"
    )


def render_ab(r: Mapping[str, Any]) -> str:
    us, spread = r["loop_us_per_get_hit"], r["rounds_us"]
    return "\n".join(
        [
            "| GET /profile/{user} cache hit | event-loop CPU per request, median of rounds (us) | rounds, min - max |",
            "|---|---|---|",
            *(f"| {name} | {v} | {min(spread[name])} - {max(spread[name])} |" for name, v in us.items()),
            "",
            f"`{r.get('command') or 'utpm bench ab'}` ({r['rounds']} rounds of {r['requests_per_round']:,} requests "
            "per variant, alternated; Redis with the near cache, as deployed; load average "
            f"{r['load_average']} from other jobs on the 2 cores during the run).",
            "",
        ]
    )


COMMIT_FIGURES = {
    "post_rps": "POST req/s (locust)",
    "post_p99_ms": "POST p99 ms",
    "wrk_post_rps": "POST req/s (wrk)",
    "wrk_get_rps": "cached GET req/s (wrk)",
    "roofline_users_per_s": "roofline users/s",
    "cpu_ms_per_user": "roofline CPU ms per user",
    "post_vs_roofline": "POST / roofline",
    "post_vs_raw_asgi": "POST / raw ASGI",
    "post_loop_us": "POST loop us per request",
    "post_loop_rps": "POST req/s (in process)",
    "get_loop_us": "cached GET loop us per request",
    "cpu_probe_ms": "CPU probe ms",
}


def render_commits(r: Mapping[str, Any]) -> str:
    shown = [n for n in COMMIT_FIGURES if any(run.get(n) is not None for run in r["runs"])]
    c = r["commits"]
    lines = [
        f"`{r['command'] or 'utpm bench commits'}` ({_when(r)}): `{r['measured']}` at {c['before']} (before) and "
        f"{c['after']} (after), {r['rounds']} round(s) in alternation.",
        "",
        "| round | commit | " + " | ".join(COMMIT_FIGURES[n] for n in shown) + " |",
        "|---:|---|" + "---:|" * len(shown),
    ]
    for run in r["runs"]:
        cells = " | ".join(_fmt(run.get(n), 3 if n.startswith(("post_vs", "cpu")) else 1) for n in shown)
        lines.append(f"| {run['round']} | {run['arm']} ({run['commit']}) | {cells} |")
    for arm in ("before", "after"):
        med = r["medians"][arm]
        cells = " | ".join(_fmt(med.get(n), 3 if n.startswith(("post_vs", "cpu")) else 1) for n in shown)
        lines.append(f"| median | {arm} | {cells} |")
    return "\n".join(lines) + "\n"


def _ab_table(what: str, arms: Mapping[str, Any], stages: Sequence[str]) -> list[str]:
    """An alternated A/B's arms (`loadtest.roofline._alternate`): medians, per-user stage times, rounds."""
    cols = "".join(f" median {st} ms per user |" for st in stages)
    lines = [
        f"| {what} | median users/s | median CPU ms per user |{cols} rounds (users/s) |",
        "|---|---:|---:|" + "---:|" * len(stages) + "---|",
    ]
    for name, a in arms.items():
        rounds = ", ".join(f"{v:,.0f}" for v in a["rounds"])
        cells = "".join(f" {_fmt(a.get(f'median_{st}_ms_per_user'), 3)} |" for st in stages)
        lines.append(
            f"| {name} | {_fmt(a['median_users_per_s'])} | {_fmt(a['median_cpu_ms_per_user'], 3)} |{cells} {rounds} |"
        )
    return [*lines, ""]


def render_roofline(r: Mapping[str, Any]) -> str:
    lines = [
        f"`{r['command'] or 'utpm bench roofline'}` ({_when(r)}, {r.get('load_average_1m_end', '?')} at the end). "
        f"Bundle {r['bundle']}; requests: {r['payloads']}; k = {r['k']}.",
        "",
    ]
    e = r.get("engine")
    if e:
        ts = e["thread_settings"]
        index = "no index (linear scorer)" if e["index_device"] == "none" else f"index on the {e['index_device']}"
        loaded = f"loaded in {e['load_s']:g} s, {e['rss_mib']:,} MiB resident; " if "rss_mib" in e else ""
        lines += [
            f"Engine ({e['model']}, {e['tags']:,} tags; {loaded}model on {e['execution_provider']}, {index}; "
            f"ONNX Runtime {ts['ort_intra_threads']} intra-op thread, FAISS "
            f"{ts['faiss_threads']} OpenMP thread per batch thread, BLAS {ts.get('blas_threads', '?')} thread; "
            f"{e['seconds_per_row']:g} s per row): "
            "encode + model + index + render per user, no HTTP.",
            "",
            "| batch | threads | users/s | CPU ms per user | cores used "
            "| encode ms | model ms | index ms | render ms | CPU probe ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for x in e["rows"]:
            pu = x["per_user"]
            cells = [x["users_per_s"], x["cpu_ms_per_user"], x["cores_used"]]
            stages = [pu["encode_ms"], pu["model_ms"], pu["index_ms"], pu["render_ms"]]
            lines.append(
                f"| {x['batch']} | {x['threads']} | {_fmt(cells[0])} | {_fmt(cells[1], 3)} | {_fmt(cells[2], 2)} | "
                + " | ".join(_fmt(v, 3) for v in stages)
                + f" | {_probe(x)} |"
            )
        best = e["best"]
        lines += [
            "",
            f"Best: {best['users_per_s']:,.1f} users/s at batch {best['batch']} on {ts['batch_workers']} threads "
            f"({best['cpu_ms_per_user']:.3f} ms CPU per user).",
            "",
        ]
        ab = e.get("faiss_openmp_ab")
        if ab:
            lines += [f"A/B, batch {ab['batch']} on {ab['threads']} threads, alternated:", ""]
            lines += _ab_table("batch threads' FAISS OpenMP", ab["arms"], ("index",))
        lab = e.get("linear_ab")
        if lab:
            lines += [
                f"A/B of the linear bundle's two paths, batch {lab['batch']} on {lab['threads']} threads, alternated:",
                "",
            ]
            lines += _ab_table("path", lab["arms"], ("encode", "model", "index"))
    a = r.get("raw_asgi")
    if a:
        lines += [
            f"Raw ASGI ceiling (`loadtest/raw_asgi.py`, wrk {a['connections']} connections, {a['duration_s']:g} s):",
            "",
            "| route | req/s | p50 ms | p99 ms | failed | server cores | wrk cores |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for route in ("post", "get"):
            x = a[route]
            lines.append(
                f"| {route.upper()} /profile | {_fmt(x.get('rps'))} | {_fmt(x.get('p50_ms'), 2)} | "
                f"{_fmt(x.get('p99_ms'), 2)} | {x.get('failures', '-')} | {_fmt(x.get('service_cores'), 2)} | "
                f"{_fmt(x.get('loadgen_cores'), 2)} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_loop(r: Mapping[str, Any]) -> str:
    lines = [
        "| request, in process (GET: a cache hit) | event-loop CPU per request (us, median of rounds) "
        "| requests/s | mean batch |",
        "|---|---:|---:|---:|",
    ]
    for name, v in [*r.items(), *r.get("post", {}).items()]:
        if isinstance(v, Mapping) and "loop_us_per_request" in v:
            cells = [_fmt(v["loop_us_per_request"]), _fmt(v["requests_per_s"]), _fmt(v.get("mean_batch"), 2)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"`{r.get('command') or 'utpm bench loop'}` ({r['rounds']} rounds of {r['requests']:,} requests, "
        f"{r['concurrency']} at once; load average {r.get('load_average_1m', '?')} at the end).",
    ]
    return "\n".join(lines) + "\n"


def render_speed(r: Mapping[str, Any]) -> str:
    lines = [
        f"`{r.get('command') or 'utpm bench speed'}` ({_when(r)}): the CPU probe ({r['probe_loops']:,} additions "
        f"in a Python loop, CPU time) every {r['interval_s']:g} s for {r['seconds']:g} s, on each CPU in turn.",
        "",
        "| CPU | probes | median ms | p10 ms | p90 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for cpu, x in [*r["per_cpu"].items(), ("all", r["all"])]:
        cells = [x["samples"], x["median_ms"], x["p10_ms"], x["p90_ms"]]
        lines.append(f"| {cpu} | {cells[0]} | " + " | ".join(_fmt(v, 3) for v in cells[1:]) + " |")
    lines += [
        "",
        f"Median over the fastest probe: {_fmt(r['median_over_fastest'], 2)} (1.00 on cores that run at one speed).",
    ]
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "serve": render_serve,
    "tune": render_tune,
    "reliability": render_reliability,
    "ab": render_ab,
    "roofline": render_roofline,
    "commits": render_commits,
    "loop": render_loop,
    "gpu_check": render_gpu_check,
    "speed": render_speed,
}


def render(report: Mapping[str, Any]) -> str:
    return RENDERERS[report["kind"]](report)


# the columns of a side-by-side block: `loadtest.commits.figures` of each serve report, and their digits
SIDE_BY_SIDE = (
    ("post_rps", 1),
    ("post_p99_ms", 1),
    ("wrk_post_rps", 1),
    ("roofline_users_per_s", 1),
    ("cpu_ms_per_user", 2),
    ("post_vs_roofline", 3),
    ("post_vs_raw_asgi", 3),
    ("cpu_probe_ms", 2),
)


def _roofline_row(r: Mapping[str, Any], batch: int, threads: int) -> Mapping[str, Any]:
    return next((x for x in r["engine"]["rows"] if x["batch"] == batch and x["threads"] == threads), {})


def render_roofline_side_by_side(reports: list[Mapping[str, Any]]) -> str:
    """Several `utpm bench roofline` runs, one row each: the batch sizes every run measured, and the best."""
    batches = sorted(set.intersection(*({x["batch"] for x in r["engine"]["rows"]} for r in reports)))
    lines = [
        "| run (UTC) | bundle | "
        + " | ".join(f"model ms per user, batch {b}, 1 thread | users/s, batch {b}, 2 threads" for b in batches)
        + " | best users/s | CPU ms per user (best) |",
        "|---|---|" + "---:|" * (2 * len(batches) + 2),
    ]
    for r in reports:
        cells = []
        for b in batches:
            one, two = _roofline_row(r, b, 1), _roofline_row(r, b, 2)
            cells += [_fmt(one.get("per_user", {}).get("model_ms"), 3), _fmt(two.get("users_per_s"))]
        best = r["engine"]["best"]
        cells += [_fmt(best["users_per_s"]), _fmt(best["cpu_ms_per_user"], 3)]
        lines.append(f"| {r['started_at'][11:16]} | {r['bundle']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_side_by_side(reports: list[Mapping[str, Any]]) -> str:
    """Several `utpm bench serve` (or `roofline`) runs, one row each (a block naming several artifacts,
    comma-separated)."""
    if all(r.get("kind") == "roofline" for r in reports):
        return render_roofline_side_by_side(reports)
    lines = [
        "| run (UTC) | bundle | " + " | ".join(COMMIT_FIGURES[n] for n, _ in SIDE_BY_SIDE) + " |",
        "|---|---|" + "---:|" * len(SIDE_BY_SIDE),
    ]
    for r in reports:
        if r.get("kind") != "serve":
            raise ValueError(f"a side-by-side block takes serve (or only roofline) reports, not {r.get('kind')!r}")
        f = figures(r)
        cells = " | ".join(_fmt(f[n], digits) for n, digits in SIDE_BY_SIDE)
        workers = (r.get("config") or {}).get("workers", 1)
        label = f"{r['bundle']['model']} ({r['bundle']['path']})" + (f", {workers} workers" if workers != 1 else "")
        lines.append(f"| {r['started_at'][11:16]} | {label} | {cells} |")
    return "\n".join(lines) + "\n"


def _rendered(path: str, reports: list[Any]) -> str:
    """A block's text from its artifacts; a ValueError naming the artifact when one is no report the
    renderers know, or lacks what its kind's table shows (a KeyError deep in a renderer before)."""
    for report in reports:
        kind = report.get("kind") if isinstance(report, dict) else None
        if kind not in RENDERERS:
            raise ValueError(f"{path}: not a benchmark report (kind {kind!r}; known: {', '.join(RENDERERS)})")
    try:
        return render(reports[0]) if len(reports) == 1 else render_side_by_side(reports)
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise ValueError(f"{path}: not a complete {reports[0]['kind']} report ({type(e).__name__}: {e})") from None


def rerender(doc: Path, root: Path = Path()) -> tuple[str, list[tuple[str, str]]]:
    """`doc`'s text with every block whose artifact exists re-rendered (paths relative to `root`), and
    what happened to each block; nothing is written."""
    done: list[tuple[str, str]] = []

    def block(m: re.Match[str]) -> str:
        paths = [root / p for p in m["path"].split(",")]
        if not all(p.is_file() for p in paths):
            done.append((m["path"], "kept (artifact missing)"))
            return m[0]
        done.append((m["path"], "regenerated"))
        try:
            reports = [json.loads(p.read_text()) for p in paths]
        except json.JSONDecodeError as e:
            raise ValueError(f"{m['path']} is not JSON: {e}") from None
        text = _rendered(m["path"], reports)
        return f"<!-- report: {m['path']} -->\n{text}<!-- /report -->"

    return BLOCK.sub(block, doc.read_text()), done


def regenerate(doc: Path, root: Path = Path()) -> list[tuple[str, str]]:
    """`rerender` `doc` and write it if it changed (an unchanged doc keeps its timestamp: make, editors)."""
    text, done = rerender(doc, root)
    if text != doc.read_text():
        doc.write_text(text)
    return done
