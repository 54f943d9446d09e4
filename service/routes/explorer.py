"""The profile explorer: static files (HTML, JS, CSS; no build step, no CDN) under /explorer/."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static" / "explorer"


def install_explorer(app: FastAPI) -> None:
    @app.get("/explorer", include_in_schema=False)
    async def explorer_root() -> RedirectResponse:
        return RedirectResponse("/explorer/")

    app.mount("/explorer/", StaticFiles(directory=STATIC, html=True), name="explorer")
