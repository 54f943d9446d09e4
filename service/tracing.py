"""Optional OpenTelemetry traces of a request's stages (UTPM_OTLP_ENDPOINT; the `otel` extra).

Off by default, and then free: the OpenTelemetry SDK and exporter are not imported (FastAPI
imports the API itself) and the routes skip tracing with one `is None` test. On, each profile
request becomes one span with a child per stage (decode, queue, model, index, cache), exported
over OTLP/HTTP in batches off the event loop. Stages are recorded after the fact from the
timestamps the request already takes for the metrics, because model and index run for a whole
batch in a worker thread. A request carrying a W3C `traceparent` header gets its spans in the
caller's trace.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from service.logs import traceparent_var


class Tracing:
    def __init__(self, endpoint: str, service_name: str = "utpm-service") -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as e:
            raise RuntimeError(
                f"UTPM_OTLP_ENDPOINT is set but OpenTelemetry is not installed ({e.name}); "
                "pip install 'utpm[otel]' or unset UTPM_OTLP_ENDPOINT"
            ) from None
        self.provider: Any = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self.tracer = self.provider.get_tracer("utpm.service")
        # perf_counter() -> epoch nanoseconds; drift over a process's life is far below a span's size
        self._offset_ns = time.time_ns() - int(time.perf_counter() * 1e9)

    def _ns(self, perf_s: float) -> int:
        return self._offset_ns + int(perf_s * 1e9)

    def record(self, name: str, stages: Sequence[tuple[str, float, float]], **attributes: Any) -> None:
        """One span `name` over `stages` [(stage, start, end) in perf_counter seconds], a child for each."""
        if not stages:
            return
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        caller = traceparent_var.get()
        joined = TraceContextTextMapPropagator().extract({"traceparent": caller}) if caller else None
        parent = self.tracer.start_span(name, context=joined, start_time=self._ns(stages[0][1]), attributes=attributes)

        context = trace.set_span_in_context(parent)
        for stage, start, end in stages:
            self.tracer.start_span(f"utpm.{stage}", context=context, start_time=self._ns(start)).end(self._ns(end))
        parent.end(self._ns(stages[-1][2]))

    def shutdown(self) -> None:
        self.provider.shutdown()  # flushes what is batched


def make_tracing(endpoint: str | None) -> Tracing | None:
    return Tracing(endpoint) if endpoint else None
