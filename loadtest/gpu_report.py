"""Markdown for a `loadtest/gpu_check.sh` report (kind "gpu_check"), rendered by `utpm bench report`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _model_rows(m: Mapping[str, Any]) -> list[str]:
    rows = [
        f"ONNX Runtime {m['onnxruntime_version']} on {m['providers'][0]} against PyTorch {m['torch_version']} on "
        f"{m.get('torch_device', 'cpu')}, untrained `{m['model']}` at the `{m['preset']}` preset "
        f"(`utpm bench model --preset industrial`):",
        "",
        "| batch | ONNX Runtime p50 ms | p99 ms | PyTorch p50 ms | p99 ms | speed-up (p50) | max abs diff of u |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in m["results"]:
        o, t = r["onnxruntime"], r["pytorch"]
        rows.append(
            f"| {r['batch']} | {_f(o['p50_ms'], 2)} | {_f(o['p99_ms'], 2)} | {_f(t['p50_ms'], 2)} | "
            f"{_f(t['p99_ms'], 2)} | {_f(r['speedup_p50'], 2)}x | {r['max_abs_diff_u']:.1e} |"
        )
    return rows


def _index_rows(i: Mapping[str, Any], t: Mapping[str, Any] | None, probe: Mapping[str, Any] | None) -> list[str]:
    k = i["k"]
    where = "GPU" if i.get("gpu") else f"CPU, {i['threads']} threads"
    rows = [
        f"Index over {i['tags']:,} x {i['dim']} structured tags, {i['queries']:,} queries batched, top-{k} "
        f"(`utpm bench index --tags {i['tags']} --kind ivf --no-peers`, faiss {i['faiss_version']}):",
        "",
        "| search | where | queries/s | recall@" + str(k) + " |",
        "|---|---|---:|---:|",
        f"| exact (IndexFlatIP) | CPU, {i['threads']} threads | {_f(i['exact_qps'])} | 1 |",
    ]
    g = i.get("exact_gpu")
    if g:
        rows.append(f"| exact (faiss GPU) | GPU | {_f(g['qps'])} | {_f(g.get(f'recall@{k}_vs_cpu_exact'), 4)} |")
    rows.append(
        f"| {i['ann_factory']}, {', '.join(f'{a} {b}' for a, b in i['ann_params'].items())} | {where} | "
        f"{_f(i['ann_qps'])} | {_f(i[f'recall@{k}'], 4)} |"
    )
    if t:
        for name, label in (("float32", "fp32"), ("bfloat16", "bf16")):
            for key, v in t.items():
                if key.startswith(f"{name}_batch"):
                    b = int(key.rsplit("batch", 1)[1])
                    recall = "1" if name == "float32" else _f(t.get(f"bf16_recall@{k}_vs_fp32"), 4)
                    rows.append(
                        f"| exact, PyTorch matmul + topk, {label}, batches of {b:,} | GPU | {_f(v['qps'])} | {recall} |"
                    )
    if probe:
        rows += ["", f"faiss on the GPU: {probe['build']} reports {probe['reported_gpus']} GPU; {probe['result']}."]
    return rows


def _serve_row(label: str, s: Mapping[str, Any], users: int) -> str:
    run = s["runs"].get(f"utpm/post/{users}", {})
    stages = run.get("service_metrics", {}).get("stages", {})
    batch = run.get("service_metrics", {}).get("batches", {}).get("mean_size")
    return (
        f"| {label} | {users} | {_f(run.get('rps'))} | {_f(run.get('p50_ms'))} | {_f(run.get('p99_ms'))} | "
        f"{_f(stages.get('model', {}).get('mean_ms'), 2)} | {_f(stages.get('index', {}).get('mean_ms'), 2)} | "
        f"{_f(batch)} | {_f(run.get('service_cores'), 2)} |"
    )


def render_gpu_check(r: Mapping[str, Any]) -> str:
    env = r.get("environment") or {}
    lines = [
        f"Machine: {env.get('gpu', '?')}, {env.get('cpus', '?')} CPU cores; onnxruntime {env.get('onnxruntime')} "
        f"(providers {', '.join(env.get('onnxruntime_providers', []))}), faiss {env.get('faiss')} "
        f"({env.get('faiss_gpus', 0)} GPUs reported). `{r.get('command', 'bash loadtest/gpu_check.sh')}`"
        + (f" ({r['when']})." if r.get("when") else "."),
        "",
    ]
    if r.get("model"):
        lines += [*_model_rows(r["model"]), ""]
    if r.get("index"):
        lines += [*_index_rows(r["index"], r.get("exact_torch"), r.get("faiss_gpu_probe")), ""]
    serve, serve_cpu = r.get("serve"), r.get("serve_cpu")
    if serve:
        b = serve.get("bundle") or {}
        index = b.get("index") or {}
        lines += [
            f"Service, POST /profile with k = {serve['config'].get('k', 50)} on a {b.get('servable_tags', 0):,}-tag "
            f"`{b.get('model', '?')}` ({b.get('preset', '?')}) bundle, index `{index.get('factory', '?')}`; "
            f"{serve['config'].get('duration_s')} s per run, locust; ONNX Runtime on the GPU, then the same runs with "
            "`--set device=cpu` (model and index stage times are per batch):",
            "",
            "| ONNX Runtime on | users | req/s | p50 ms | p99 ms | model ms | index ms | batch | server cores |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for users in serve["config"].get("levels", [16, 64]):
            lines.append(_serve_row("GPU (CUDA)", serve, users))
            if serve_cpu:
                lines.append(_serve_row(f"CPU ({env.get('cpus', '?')} cores)", serve_cpu, users))
        for label, s in (("GPU", serve), ("CPU", serve_cpu)):
            if not s or not s.get("roofline"):
                continue  # the CPU run's may be left out (see its artifact's roofline_left_out)
            roof, c = s["roofline"], s["summary"]["compare_users"]
            lines += [
                "",
                f"Engine roofline of the {label} run (the engine alone, no HTTP, ONNX Runtime on "
                f"{roof.get('execution_provider', '?')}): {_f(roof['best']['users_per_s'])} users/s at batches "
                f"of {roof['best']['batch']}; POST at {c} users is "
                f"{_f(s['summary']['ratios'].get('post_vs_roofline'), 3)} of it.",
            ]
    return "\n".join(lines) + "\n"
