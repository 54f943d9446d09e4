"""A naive peer: the profile service as a user would first write it, to compare against.

FastAPI; the trained PyTorch model in eager mode; the top-K by a numpy brute-force scan over all
tag embeddings (a (T, U) @ (U,) product and an argpartition); one request at a time (the work
runs inside the `async def` endpoint, so the event loop serves requests one after another); no
batching, no index, no cache. Same request body and response shape as the service's POST.

    UTPM_NAIVE_RUN=artifacts/bench/tags1000000/run uvicorn --factory loadtest.naive_peer:create_app
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI

from service.responses import JSONResponse
from service.schemas import ProfileRequest


def create_app(run_dir: str | Path | None = None) -> FastAPI:
    """The peer over the training run `run_dir` (default: `UTPM_NAIVE_RUN`)."""
    import torch

    from utpm.training.run import load_run

    path = run_dir or os.environ.get("UTPM_NAIVE_RUN")
    if not path:
        raise RuntimeError("set UTPM_NAIVE_RUN to a training run directory")
    run = load_run(path)
    model, encoder, tags = run.model, run.encoder, run.tags
    embeddings = model.tag_embedding.weight.detach().numpy()  # (T, U)
    version = f"naive-{Path(path).name}"
    app = FastAPI(title="utpm naive peer", default_response_class=JSONResponse)

    @app.post("/profile")
    async def post_profile(body: ProfileRequest) -> JSONResponse:
        k = body.k or 50
        # {value: count} objects give their values (the paper's model takes no counts)
        batch = encoder.encode([{f: list(v) if isinstance(v, dict) else v for f, v in body.features.items()}])
        with torch.no_grad():
            u = model(
                [torch.from_numpy(batch.ids[f]) for f in encoder.field_names],
                [torch.from_numpy(batch.mask[f]) for f in encoder.field_names],
            )[0].numpy()
        scores = embeddings @ u
        scores[:2] = -np.inf  # padding and OOV rows
        top = np.argpartition(-scores, k)[:k]
        top = top[np.argsort(-scores[top])]
        known = any(bool((batch.ids[f][0] > 1).any()) for f in encoder.field_names)  # ids 0, 1: padding, OOV
        result: dict[str, Any] = {
            "user_id": body.user_id,
            "model_version": version,
            "tags": [{"tag": tags.token(int(i)), "score": float(scores[i])} for i in top],
            "unknown": batch.unknown[0],
            "all_unknown": not known,
            "cached": False,
        }
        return JSONResponse(result)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "alive"})

    return app
