"""JSON responses rendered by orjson (fast, and numpy-free payloads only)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class RenderedJSON(Response):
    """A body that is JSON already (a rendered profile): sent as is."""

    media_type = "application/json"
