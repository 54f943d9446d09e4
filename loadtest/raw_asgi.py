"""The raw ASGI ceiling: no framework, orjson, answering the service's routes with bodies of the same shape.

`POST /profile` reads the body, parses it with orjson and answers a profile of the same fields and
about the same size as the service's (k tags of the bundle with float scores, version, arm,
`unknown`, times, `stale`, `cached`); `GET /profile/{user}` answers like a cache hit. Both render
the answer per request with orjson (what the smallest real service would do). Served by the same
uvicorn as the service (uvloop, httptools), its requests/s is what HTTP on this machine allows a
Python service: `loadtest/ceiling.py` is the FastAPI version of the same (framework included).

    UTPM_BUNDLE=artifacts/demo/bundle uvicorn --factory loadtest.raw_asgi:create_app --loop uvloop --http httptools
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson

from loadtest.ceiling import _bundle_tags

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_JSON = [(b"content-type", b"application/json")]


def create_app() -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    bundle = os.environ.get("UTPM_BUNDLE")
    version, names = _bundle_tags(Path(bundle) if bundle else None)
    scores = [float(f"{0.9 - i * 1e-4:.7f}") + 1.1920929e-08 for i in range(len(names))]

    def answer(user_id: str, k: int, cached: bool) -> bytes:
        k = max(1, min(k, len(names)))
        return orjson.dumps(
            {
                "arm": "champion",
                "user_id": user_id,
                "model_version": version,
                "tags": [{"tag": t, "score": s} for t, s in zip(names[:k], scores[:k], strict=True)],
                "unknown": {},
                "all_unknown": False,
                "computed_at": "2026-11-30T19:00:00.000Z",
                "expires_at": "2026-11-30T20:00:00.000Z",
                "stale": False,
                "cached": cached,
            }
        )

    async def reply(send: Send, status: int, body: bytes) -> None:
        headers = [*_JSON, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path, method = scope["path"], scope["method"]
        if method == "POST" and path == "/profile":
            chunks, more = [], True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            try:
                body = orjson.loads(b"".join(chunks))
                user, k = str(body["user_id"]), int(body.get("k") or 50)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                await reply(send, 422, b'{"detail":"bad request"}')
                return
            await reply(send, 200, answer(user, k, cached=False))
        elif method == "GET" and path.startswith("/profile/"):
            query = parse_qs(scope["query_string"].decode("latin-1"))
            await reply(send, 200, answer(path[len("/profile/") :], int(query.get("k", ["50"])[0]), cached=True))
        elif path in ("/healthz", "/readyz"):
            await reply(send, 200, b'{"status":"alive"}')
        else:
            await reply(send, 404, b'{"detail":"not found"}')

    return app
