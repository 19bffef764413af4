"""Export over OTLP/HTTP to a receiver on loopback that decodes the protobuf, as a collector
would: spans arrive with their names and attributes, a closed collector port costs requests
nothing and yields a log line, and a sampler at 0 exports nothing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.harness import free_port
from tests.inprocess import client
from tests.observability.traced import CHAT, gateway

pytestmark = pytest.mark.anyio


@dataclass
class Received:
    """A span as the collector decoded it."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    service: str
    attributes: dict[str, Any] = field(default_factory=dict)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


class Collector:
    """An OTLP/HTTP trace receiver: POST /v1/traces with an ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.posts = 0
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest.FromString(raw)
                collector._add(request, dict(self.headers))
                body = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _add(self, request: ExportTraceServiceRequest, headers: dict[str, str]) -> None:
        with self._lock:
            self.posts += 1
            self.headers.append(headers)
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            Received(
                                span.name,
                                span.kind,
                                span.trace_id.hex(),
                                span.span_id.hex(),
                                span.parent_span_id.hex(),
                                str(resource.get("service.name")),
                                {a.key: _value(a.value) for a in span.attributes},
                            )
                        )

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    found = Collector()
    yield found
    found.close()


async def test_spans_arrive_at_the_collector(
    collector: Collector, config_dir: Path, tmp_path: Path
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=team-a",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
    }
    async with gateway(config_dir, tmp_path, env) as app, client(app) as http:
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        stream = {**CHAT, "stream": True}
        assert (await http.post("/v1/chat/completions", json=stream)).status_code == 200
        assert app.gateway.tracing is not None and app.gateway.tracing.flush()
    names = sorted(s.name for s in collector.spans)
    assert names == ["POST /v1/chat/completions"] * 2 + ["chat m"] * 2
    assert {s.service for s in collector.spans} == {"best"}
    assert collector.headers[0]["x-tenant"] == "team-a"
    servers = {s.span_id: s for s in collector.spans if s.kind == Span.SPAN_KIND_SERVER}
    attempts = [s for s in collector.spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert len(servers) == 2 and len(attempts) == 2
    for attempt in attempts:
        parent = servers[attempt.parent_id]
        assert parent.trace_id == attempt.trace_id
        assert attempt.attributes["gen_ai.provider.name"] == "a"
        assert attempt.attributes["best.outcome"] == "won"
        assert isinstance(attempt.attributes["gen_ai.usage.input_tokens"], int)
    streamed = [a for a in attempts if a.attributes.get("gen_ai.request.stream")]
    assert len(streamed) == 1 and streamed[0].attributes["best.ttft_ms"] > 0
    for span in collector.spans:
        print(span.name, span.attributes)  # the docs page shows such a trace


@pytest.mark.slow  # about two seconds of export retries
async def test_a_closed_collector_port_costs_requests_nothing_and_logs(
    config_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",  # nobody listens
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    caplog.set_level(logging.WARNING)
    async with gateway(config_dir, tmp_path, env) as app, client(app) as http:
        slowest = 0.0
        started = time.monotonic()
        for _ in range(40):
            before = time.monotonic()
            response = await http.post("/v1/chat/completions", json=CHAT)
            slowest = max(slowest, time.monotonic() - before)
            assert response.status_code == 200
        took = time.monotonic() - started
        tracing = app.gateway.tracing
        assert tracing is not None
        tracing.flush(timeout_s=5)  # the export fails: nobody listens
    # The requests did not notice (generous bounds: the machine is shared)...
    assert slowest < 1.0
    assert took < 10.0
    # ...and it was said, without flooding the log.
    export_lines = [
        r for r in caplog.records if r.name.startswith(("opentelemetry", "best.tracing"))
    ]
    assert 1 <= len(export_lines) <= 3, [r.getMessage() for r in export_lines]


async def test_a_sampler_at_zero_exports_nothing(
    collector: Collector, config_dir: Path, tmp_path: Path
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{collector.endpoint}/v1/traces",
        "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0",
    }
    async with gateway(config_dir, tmp_path, env) as app, client(app) as http:
        for _ in range(5):
            assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert app.gateway.tracing is not None and app.gateway.tracing.flush()
        scrape = await http.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert collector.posts == 0 and collector.spans == []
    assert "trace_id" not in scrape.text  # no exemplar points at a trace nobody kept
