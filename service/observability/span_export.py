"""Ended spans on their way out: a bounded queue, an export thread, and the exporters.

``SpanQueue.put`` is the only export work a request does: an append to a deque, or a count
when the queue is full (the span is dropped).  A daemon thread wakes when a batch is full or
the schedule delay passed, and hands batches to a sink:

- ``OtlpHttpSink``: OTLP/HTTP, encoded by ``otlp.OtlpEncoder`` and posted by the SDK's
  exporter's own HTTP client (its retries, backoff, compression, headers and TLS settings);
- ``OtlpGrpcSink``: OTLP/gRPC, the same bytes sent by the SDK's gRPC exporter;
- ``ExporterSink``: any SDK ``SpanExporter`` (the tests' in-memory one), given the SDK's
  ``ReadableSpan`` objects.

A collector that is down or slow costs the queue's bound and log lines, at most one per
interval (``Throttle``), never a request's latency.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags, TraceState

from service.observability.otlp import OtlpEncoder
from service.observability.spans import SpanRecord

log = logging.getLogger("best.tracing")

# The SDK's BatchSpanProcessor defaults (OTEL_BSP_*).
MAX_QUEUE_SIZE = 2048
MAX_BATCH_SIZE = 512
SCHEDULE_DELAY_S = 5.0
EXPORT_THREAD = "best-span-export"


class Sink(Protocol):
    """Where batches go; ``export`` is called by one thread at a time."""

    def export(self, spans: Sequence[SpanRecord]) -> bool:
        """True when the collector took the batch."""
        ...

    def shutdown(self) -> None: ...


class SpanQueue:
    """Ended spans waiting for export, at most ``max_size``; exported by a daemon thread in
    batches of ``batch_size``, at least every ``delay_s``."""

    def __init__(
        self,
        sink: Sink,
        max_size: int = MAX_QUEUE_SIZE,
        batch_size: int = MAX_BATCH_SIZE,
        delay_s: float = SCHEDULE_DELAY_S,
    ) -> None:
        if not 0 < batch_size <= max_size:
            raise ValueError(f"batch size {batch_size} not in 1..{max_size}")
        self.dropped = 0  # spans not queued because the queue was full
        self._reported = 0
        self._sink = sink
        self._max_size = max_size
        self._batch_size = batch_size
        self._delay_s = delay_s
        self._queue: deque[SpanRecord] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # held while a batch is exported: one at a time
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=EXPORT_THREAD, daemon=True)
        self._thread.start()

    def put(self, span: SpanRecord) -> None:
        """Queue an ended span (from the event loop; never blocks)."""
        queue = self._queue
        size = len(queue)
        if size >= self._max_size:
            self.dropped += 1
            return
        queue.append(span)
        if size + 1 == self._batch_size:
            self._wake.set()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Export every queued span now, in the calling thread (blocking: tests and
        shutdown).  False when an export in progress did not end within ``timeout_s``."""
        if not self._lock.acquire(timeout=timeout_s):
            return False
        try:
            self._export_queued()
        finally:
            self._lock.release()
        return True

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop the thread, export what is queued, and shut the sink down."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)
        self.flush(timeout_s)
        self._sink.shutdown()

    def _run(self) -> None:
        while not self._stopping:
            full = self._wake.wait(self._delay_s)
            self._wake.clear()
            with self._lock:
                # Woken by a full batch: whole batches only.  The spans that arrive while
                # one is exported wait for the next full batch or the delay, instead of
                # leaving at once in a small batch each (one POST per few spans under load).
                self._export_queued(whole_batches_only=full)

    def _export_queued(self, whole_batches_only: bool = False) -> None:
        queue = self._queue
        least = self._batch_size if whole_batches_only else 1
        while len(queue) >= least:
            batch = [queue.popleft() for _ in range(min(self._batch_size, len(queue)))]
            try:
                exported = self._sink.export(batch)
            except Exception:  # a sink's bug must not kill the export thread
                log.exception("trace export failed: %d spans dropped", len(batch))
            else:
                if not exported:
                    log.warning(
                        "trace export failed: %d spans dropped (is the collector at the "
                        "OTEL_EXPORTER_OTLP_ENDPOINT up?)",
                        len(batch),
                    )
        dropped = self.dropped
        if dropped != self._reported:
            log.warning(
                "trace export queue full (OTEL_BSP_MAX_QUEUE_SIZE=%d): %d spans dropped so far",
                self._max_size,
                dropped,
            )
            self._reported = dropped


class OtlpHttpSink:
    """OTLP/HTTP through the SDK's ``OTLPSpanExporter``: its HTTP client posts the bytes.

    The exporter's own ``export`` takes ``ReadableSpan`` objects and encodes them with the
    SDK's encoder, several times dearer (see ``otlp``); its client (``_client.export(bytes)``)
    is the part worth keeping.  Were a later SDK to move it, the exporter is used whole."""

    def __init__(self, exporter: SpanExporter, encoder: OtlpEncoder, resource: Resource) -> None:
        self._exporter = exporter
        self._encoder = encoder
        post = getattr(getattr(exporter, "_client", None), "export", None)
        self._post: Callable[[bytes], Any] | None = post if callable(post) else None
        self._whole = ExporterSink(exporter, resource)

    def export(self, spans: Sequence[SpanRecord]) -> bool:
        if self._post is None:
            return self._whole.export(spans)
        return bool(self._post(self._encoder.encode(spans)).success)

    def shutdown(self) -> None:
        self._exporter.shutdown()


class Encoded:
    """A batch encoded already, as ``OtlpGrpcSink``'s exporter takes it."""

    __slots__ = ("count", "payload")

    def __init__(self, payload: bytes, count: int) -> None:
        self.payload = payload
        self.count = count


class OtlpGrpcSink:
    """OTLP/gRPC: the SDK's gRPC exporter, made (``grpc_exporter``) to send a request
    encoded already; it keeps its channel, retries and headers."""

    def __init__(self, exporter: Any, encoder: OtlpEncoder) -> None:
        self._exporter = exporter
        self._encoder = encoder

    def export(self, spans: Sequence[SpanRecord]) -> bool:
        result = self._exporter.export(Encoded(self._encoder.encode(spans), len(spans)))
        return result is SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._exporter.shutdown()


def grpc_exporter(**options: Any) -> Any:
    """The SDK's gRPC ``OTLPSpanExporter`` (``options`` are its own), whose ``export`` takes
    an ``Encoded`` batch instead of spans.  Imported only when asked for: grpc is a large
    library to hold in memory."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    class EncodedExporter(OTLPSpanExporter):
        # The exporter's hooks between its export() and its stub's Export call.
        def _translate_data(self, data: Any) -> ExportTraceServiceRequest:
            request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(data.payload)
            return request

        def _count_data(self, data: Any) -> int:
            return int(data.count)

    return EncodedExporter(**options)


class ExporterSink:
    """Any SDK ``SpanExporter``, given ``ReadableSpan`` objects."""

    def __init__(self, exporter: SpanExporter, resource: Resource) -> None:
        self._exporter = exporter
        self._resource = resource

    def export(self, spans: Sequence[SpanRecord]) -> bool:
        readable = [readable_span(s, self._resource) for s in spans]
        return self._exporter.export(readable) is SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._exporter.shutdown()


SCOPE = InstrumentationScope("best")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)


def readable_span(span: SpanRecord, resource: Resource) -> ReadableSpan:
    """The SDK's view of a recorded span (every recorded span is sampled)."""
    state = TraceState.from_header([span.trace_state]) if span.trace_state else None
    parent = (
        SpanContext(span.trace_id, span.parent_id, span.parent_remote, _SAMPLED, state)
        if span.parent_id
        else None
    )
    return ReadableSpan(
        name=span.name,
        context=SpanContext(span.trace_id, span.span_id, False, _SAMPLED, state),
        parent=parent,
        resource=resource,
        attributes=span.attributes,
        kind=span.kind,
        status=_ERROR if span.error else _UNSET,
        start_time=span.start_ns,
        end_time=span.end_ns,
        instrumentation_scope=SCOPE,
    )


class Throttle(logging.Filter):
    """Lets one record through per interval on the export path's loggers: a collector that
    stays down costs a log line per interval, not one per batch and retry."""

    def __init__(self, interval_s: float, loggers: Sequence[str]) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._loggers = loggers
        self._next = 0.0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self._interval_s
        if self.suppressed:
            record.msg = f"{record.msg} ({self.suppressed} similar lines suppressed)"
            self.suppressed = 0
        return True

    def attach(self) -> None:
        for name in self._loggers:
            logging.getLogger(name).addFilter(self)

    def detach(self) -> None:
        for name in self._loggers:
            logging.getLogger(name).removeFilter(self)
