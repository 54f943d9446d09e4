"""The service's outer pure-ASGI middleware, `Gateway`, in front of FastAPI (the inner one,
`service.routes.hot.HotRoutes`, only takes the two hot routes past the router).

What every request passes through, in order: load shedding (503 + Retry-After when too many are
in flight, before anything is parsed), a request id (X-Request-ID honoured or made, echoed, on
every log line), the body limit (413 by Content-Length or while streaming), compressed bodies
refused (415), and the per-route latency metric. One layer rather than one per concern: each ASGI
layer is another coroutine and another wrapped `send` on every request, on the hot path of a
cache hit.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from prometheus_client.metrics import MetricWrapperBase
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PROBLEM_MEDIA_TYPE, RETRY_AFTER_S, problem_body
from service.logs import request_id_var, traceparent_var
from service.metrics import Metrics

# 1 MiB: ten times the largest legitimate profile request (a few fields of a few hundred values).
MAX_BODY_BYTES = 1 << 20
# The latency metric's method label; any other method is counted as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class _TooLarge(Exception):
    pass


async def _reply(
    send: Send, status: int, kind: str, detail: str, rid: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = problem_body(kind, status, detail, rid)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", rid.encode("latin-1")),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def route_label(scope: Scope) -> str:
    route: Any = scope.get("route")
    if route is not None and hasattr(route, "path_format"):  # "/profile/{user_id}", without ":path"
        return str(route.path_format)
    if route is not None and hasattr(route, "path"):
        return str(route.path)
    return "unmatched"


class Gateway:
    """Load shedding, request ids, the body limit and request latency, as one ASGI layer.

    Shedding: the bounded model queue (`MicroBatcher.max_pending`) protects the model; this
    protects the event loop, which under overload is itself the bottleneck, so a request refused
    here costs no parsing, validation or JSON. Health, readiness and metrics are never shed.
    """

    NOT_SHED = ("/healthz", "/readyz", "/metrics")

    def __init__(self, app: ASGIApp, metrics: Metrics, max_inflight: int, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_inflight = max_inflight
        self.retry_after = str(RETRY_AFTER_S).encode()
        self.inflight = 0
        # Made request ids: a random per-process prefix and a counter (unique, and cheaper than uuid4).
        self._id_prefix = os.urandom(6).hex()
        self._id_counter = itertools.count(1)
        self._latency: dict[tuple[str, str, int], MetricWrapperBase] = {}  # labelled children, looked up once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        length = None
        traceparent = None
        encoding = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")[:64]
            elif name == b"content-length":
                length = value
            elif name == b"traceparent":
                traceparent = value.decode("latin-1")[:64]
            elif name == b"content-encoding":
                encoding = value
        rid = rid or f"{self._id_prefix}{next(self._id_counter):08x}"
        shed = scope["path"] not in self.NOT_SHED
        if shed and self.inflight >= self.max_inflight:
            self.metrics.errors.labels("overloaded").inc()
            await _reply(
                send,
                503,
                "overloaded",
                f"the service is overloaded ({self.inflight} requests in flight); retry later",
                rid,
                [(b"retry-after", self.retry_after)],
            )
            return
        if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
            # Read as plain JSON, a compressed body would be a baffling "invalid JSON" (RFC 7694: 415).
            self.metrics.errors.labels("unsupported_encoding").inc()
            coding = encoding.decode("latin-1")[:64]
            detail = f"Content-Encoding {coding!r} is not supported: send the request body uncompressed"
            await _reply(send, 415, "unsupported_encoding", detail, rid, [(b"accept-encoding", b"identity")])
            return
        if length is not None:
            try:
                too_big = int(length) > self.max_body_bytes
            except ValueError:
                self.metrics.errors.labels("bad_request").inc()
                await _reply(send, 400, "bad_request", "invalid Content-Length header", rid)
                return
            if too_big:
                self.metrics.errors.labels("payload_too_large").inc()
                await _reply(
                    send, 413, "payload_too_large", f"request body larger than {self.max_body_bytes} bytes", rid
                )
                return
        rid_header = (b"x-request-id", rid.encode("latin-1"))
        token = request_id_var.set(rid)
        tp_token = traceparent_var.set(traceparent) if traceparent is not None else None
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        started = False
        seen = 0
        t0 = time.perf_counter()

        async def limited_receive() -> Message:
            # Bodies without a Content-Length (chunked) are counted as they stream.
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise _TooLarge
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        if shed:
            self.inflight += 1
        try:
            await self.app(scope, receive if length is not None else limited_receive, send_with_id)
        except _TooLarge:
            if not started:
                status = 413
                self.metrics.errors.labels("payload_too_large").inc()
                await _reply(
                    send, 413, "payload_too_large", f"request body larger than {self.max_body_bytes} bytes", rid
                )
        finally:
            if shed:
                self.inflight -= 1
            self._observe(scope, status, time.perf_counter() - t0)
            request_id_var.reset(token)
            if tp_token is not None:
                traceparent_var.reset(tp_token)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        key = (route_label(scope), scope["method"], status // 100)
        child = self._latency.get(key)
        if child is None:
            method = key[1] if key[1] in METHODS else "other"  # made-up methods mint no label values
            child = self.metrics.request_seconds.labels(key[0], method, f"{key[2]}xx")
            if method != "other":  # nor keys here: only the known methods' children are kept
                self._latency[key] = child
        child.observe(seconds)  # type: ignore[attr-defined]
