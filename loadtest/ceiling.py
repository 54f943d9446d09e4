"""The ceiling: FastAPI endpoints that accept the service's requests and answer without computing.

`POST /profile` validates the same request body (`service.schemas.ProfileRequest`) and returns a
body of the same shape and about the same size as the service's (k tags of the bundle with
descending scores, the bundle's version, `unknown`, `all_unknown`, `cached`); `GET /profile/{user}`
answers like a cache hit. Same server (uvicorn), same JSON encoder (orjson), no middleware, no
work: its requests/s is what this machine's HTTP stack can do, the ceiling any service on it has.

    UTPM_BUNDLE=artifacts/demo/bundle uvicorn --factory loadtest.ceiling:create_app
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query

from service.responses import JSONResponse
from service.schemas import ProfileRequest

MAX_TAGS = 1000


def _bundle_tags(bundle: Path | None) -> tuple[str, list[str]]:
    """The bundle's version and its most frequent tag names (realistic sizes), or stand-ins."""
    if bundle is None:
        return "0" * 16, [f"tag{i:06d}" for i in range(MAX_TAGS)]
    manifest = json.loads((bundle / "manifest.json").read_text())
    tokens = json.loads((bundle / "tags.json").read_text(encoding="utf-8"))["tokens"]
    return str(manifest["bundle_version"]), [str(t) for t in tokens[2 : 2 + MAX_TAGS]]


def create_app() -> FastAPI:
    """The ceiling app; `UTPM_BUNDLE` (optional) gives tag names and version of the same sizes."""
    bundle = os.environ.get("UTPM_BUNDLE")
    version, names = _bundle_tags(Path(bundle) if bundle else None)
    # Scores like the service's float32 values rendered as doubles (about 18 characters each).
    scores = [float(f"{0.9 - i * 1e-4:.7f}") + 1.1920929e-08 for i in range(len(names))]
    app = FastAPI(title="utpm load-test ceiling", default_response_class=JSONResponse)

    def answer(user_id: str, k: int, cached: bool) -> dict[str, Any]:
        k = min(k, len(names))
        return {
            "user_id": user_id,
            "model_version": version,
            "tags": [{"tag": t, "score": s} for t, s in zip(names[:k], scores[:k], strict=True)],
            "unknown": {},
            "all_unknown": False,
            "cached": cached,
        }

    @app.post("/profile")
    async def post_profile(body: ProfileRequest) -> JSONResponse:
        return JSONResponse(answer(body.user_id, body.k or 50, cached=False))

    @app.get("/profile/{user_id}")
    async def get_profile(user_id: str, k: Annotated[int, Query(ge=1)] = 50) -> JSONResponse:
        return JSONResponse(answer(user_id, k, cached=True))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "alive"})

    return app
