"""Structured (JSON) logs with the request id; secrets never reach a log line."""

from __future__ import annotations

import contextvars
import logging
import sys

import orjson

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The caller's W3C `traceparent` header, when it sent one: tracing joins the caller's trace.
traceparent_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("traceparent", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        for key in ("route", "status", "ms", "bundle", "cache"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("utpm")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
