"""The export queue: bounded (a full queue drops spans, counts them and says so once), batched,
flushed on demand, and alive after a failing export; and OTLP/gRPC into a loopback receiver."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.trace import SpanKind

from service.apis import Api
from service.observability.span_export import SpanQueue
from service.observability.spans import SpanRecord
from service.observability.tracing import WON, Tracing
from service.upstream.usage import Usage
from tests.harness import free_port


def span(number: int) -> SpanRecord:
    found = SpanRecord(1, number + 1, 0, False, "", f"span {number}", SpanKind.SERVER, 1, {})
    found.end_ns = 2
    return found


class Sink:
    """Records batches; ``gate`` (when given) holds each export until it is set."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.gate = gate
        self.fail = fail
        self.shut = False

    def export(self, spans: Sequence[SpanRecord]) -> bool:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise RuntimeError("the collector's client broke")
        self.batches.append([s.name for s in spans])
        return True

    def shutdown(self) -> None:
        self.shut = True


def test_a_full_queue_drops_spans_counts_them_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = threading.Event()
    sink = Sink(gate)
    queue = SpanQueue(sink, max_size=4, batch_size=2, delay_s=60)
    caplog.set_level(logging.WARNING, "best.tracing")
    queue.put(span(0))
    queue.put(span(1))  # a full batch wakes the thread, which is held in the export
    assert sink.entered.wait(10)
    for number in range(2, 9):
        queue.put(span(number))  # 4 fit, 3 do not
    assert queue.dropped == 3
    gate.set()
    assert queue.flush(10)
    exported = [name for batch in sink.batches for name in batch]
    assert exported == [f"span {n}" for n in range(6)]  # the first ones, in order
    assert all(len(batch) <= 2 for batch in sink.batches)
    full = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(full) == 1 and "3 spans dropped" in full[0].getMessage()
    queue.shutdown()
    assert sink.shut


def test_spans_ended_during_an_export_wait_for_a_whole_batch() -> None:
    gate = threading.Event()
    sink = Sink(gate)
    queue = SpanQueue(sink, max_size=100, batch_size=4, delay_s=60)
    for number in range(4):
        queue.put(span(number))  # a full batch wakes the thread, held in its export
    assert sink.entered.wait(10)
    for number in range(4, 11):
        queue.put(span(number))  # 7 more meanwhile: one whole batch and 3 left over
    gate.set()
    # The thread sends the whole batch, and keeps the 3 for a full batch or the delay.
    for _ in range(100):
        if len(sink.batches) == 2:
            break
        threading.Event().wait(0.01)
    threading.Event().wait(0.05)
    assert [len(batch) for batch in sink.batches] == [4, 4]
    queue.shutdown()
    assert [len(batch) for batch in sink.batches] == [4, 4, 3]


def test_spans_are_exported_after_the_delay_without_a_flush() -> None:
    sink = Sink()
    queue = SpanQueue(sink, max_size=100, batch_size=50, delay_s=0.05)
    queue.put(span(0))
    assert sink.entered.wait(10)
    queue.shutdown()
    assert sink.batches == [["span 0"]]


def test_a_broken_export_is_logged_and_the_next_batch_still_goes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink(fail=True)
    queue = SpanQueue(sink, max_size=10, batch_size=2, delay_s=60)
    queue.put(span(0))
    assert queue.flush(10)
    assert "trace export failed: 1 spans dropped" in caplog.text
    sink.fail = False
    queue.put(span(1))
    queue.put(span(2))
    queue.shutdown()
    assert sink.batches == [["span 1", "span 2"]]


def test_shutdown_exports_what_is_queued() -> None:
    sink = Sink()
    queue = SpanQueue(sink, max_size=10, batch_size=5, delay_s=60)
    for number in range(3):
        queue.put(span(number))
    queue.shutdown()
    assert sink.batches == [["span 0", "span 1", "span 2"]] and sink.shut


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.metadata: list[dict[str, Any]] = []

    def Export(  # the service's method name
        self, request: ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> ExportTraceServiceResponse:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        return ExportTraceServiceResponse()


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[Receiver, int]]:
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    yield receiver, port
    server.stop(None)


def test_otlp_grpc_reaches_a_grpc_collector(grpc_receiver: tuple[Receiver, int]) -> None:
    receiver, port = grpc_receiver
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=team-a",
        "OTEL_SERVICE_NAME": "best-grpc",
    }
    tracing = Tracing.from_env(env)
    assert tracing is not None
    trace = tracing.server("POST", "/v1/chat/completions", "/v1/chat/completions", "r-1", [])
    attempt = trace.attempt(
        Api.CHAT, "openai", "gpt-4o-mini", "https://api.openai.com/v1", {"model": "m"}, {}
    )
    attempt.answered(WON, {"id": "chatcmpl-1"}, Usage("openai", "gpt-4o-mini", 3, 4))
    trace.status = 200
    trace.end()
    assert tracing.flush(10)
    tracing.shutdown(10)
    assert len(receiver.requests) == 1
    assert receiver.metadata[0]["x-tenant"] == "team-a"
    resource_spans = receiver.requests[0].resource_spans[0]
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "best-grpc"
    spans = {s.name: s for s in resource_spans.scope_spans[0].spans}
    assert set(spans) == {"POST /v1/chat/completions", "chat gpt-4o-mini"}
    client = spans["chat gpt-4o-mini"]
    assert client.parent_span_id == spans["POST /v1/chat/completions"].span_id
    got = {a.key: a.value for a in client.attributes}
    assert got["gen_ai.usage.output_tokens"].int_value == 4
    assert got["best.outcome"].string_value == "won"
