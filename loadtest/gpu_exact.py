"""Exact inner-product top-50 over 1M x 128 on a CUDA GPU with PyTorch (matmul + topk): what a GPU
flat scan costs on the machine, as the reference for FAISS' GPU indexes where the installed faiss
build cannot search on that GPU (docs/performance.md, "GPU"). Prints one JSON object.

    python -m loadtest.gpu_exact            # needs torch with CUDA; run by loadtest/gpu_check.sh
"""

from __future__ import annotations

import json
import statistics
import time


def main(n_tags: int = 1_000_000, dim: int = 128, n_queries: int = 2000, k: int = 50, repeats: int = 20) -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("error: torch sees no CUDA GPU")
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(n_tags, dim, device="cuda"), dim=1)
    q = torch.nn.functional.normalize(torch.randn(n_queries, dim, device="cuda"), dim=1)
    out: dict[str, object] = {}
    for dtype in (torch.float32, torch.bfloat16):
        xs, qs = x.to(dtype), q.to(dtype)
        for b in (1, 16, n_queries):
            for _ in range(3):
                torch.topk(qs[:b] @ xs.T, k, dim=1)
            torch.cuda.synchronize()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                torch.topk(qs[:b] @ xs.T, k, dim=1)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            median = statistics.median(times)
            name = str(dtype).split(".")[1]
            out[f"{name}_batch{b}"] = {"median_ms": round(1000 * median, 3), "qps": round(b / median, 1)}
    ref = torch.topk(q @ x.T, k, dim=1).indices
    bf = torch.topk(q.bfloat16() @ x.bfloat16().T, k, dim=1).indices
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ref, bf, strict=True))
    out[f"bf16_recall@{k}_vs_fp32"] = round(overlap / (k * n_queries), 4)
    out["what"] = (
        f"exact inner-product top-{k} over {n_tags:,} x {dim} (unit vectors) on the GPU with torch matmul + topk, "
        "queries copied in beforehand"
    )
    out["torch"] = torch.__version__
    out["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
