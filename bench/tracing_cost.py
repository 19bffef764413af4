"""CPU microseconds per request that tracing costs: ``uv run python -m bench.tracing_cost``.

One request is what the edge and the router ask of ``service/observability/tracing.py`` for a
chat completion served on the first attempt: the SERVER span (``Tracing.server`` with a
client's headers, ``caller``, the exemplar read as the metrics read it, ``end``) and one CLIENT
attempt span (``attempt`` with a real body, its ``headers``, then ``answered`` with the
provider's JSON answer, or ``streamed`` for the stream row), with the gateway's attributes.

Rows (each the minimum over ``--repeats`` runs of ``--requests`` requests; the machine is
shared, and the minimum is the run the other processes disturbed least):

- **off**: the call sites' ``trace is None`` tests with tracing off (``Tracing.from_env``
  returns None without an endpoint).
- **record**: CPU of the calling thread only (``time.thread_time``): what a request's own
  coroutine pays, the export thread excluded; every request sampled, or one in ten
  (``traceidratio`` 0.1: the other nine draw ids and a ``traceparent`` only).
- **encode**: turning one request's spans into the OTLP protobuf bytes that the HTTP exporter
  posts, in batches of ``BATCH`` spans, as the export thread does.  Beside it, the same spans
  built with ``opentelemetry-proto``'s message classes, and through the SDK's own encoder
  (``encode_spans``, from ``ReadableSpan`` objects).
- **whole path**: process CPU (``time.process_time``: every thread of this process) for
  recording and exporting over OTLP/HTTP into a receiver on loopback that discards (in a
  child process, so its CPU is not counted), until everything is exported.

These run in a tight loop, with warm caches.  ``--gateway`` measures instead what the
gateway itself pays: its process's CPU per request under ``wrk``, tracing off and on (see
``gateway_us``); that is the figure to hold against the gateway's throughput.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as PB2Request,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue as PB2AnyValue
from opentelemetry.proto.common.v1.common_pb2 import ArrayValue as PB2ArrayValue
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope as PB2Scope
from opentelemetry.proto.common.v1.common_pb2 import KeyValue as PB2KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PB2Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PB2Status
from opentelemetry.sdk.resources import Resource

from bench.loadgen import render_script, run_wrk
from bench.procs import cpu_seconds, free_port
from bench.targets import BENCH_TOKEN, Target, start_gateway
from bench.upstream import start_nginx
from service.apis import Api
from service.observability.span_export import (
    SCHEDULE_DELAY_S,
    SpanQueue,
    readable_span,
)
from service.observability.spans import Sampling, SpanRecord
from service.observability.tracing import REPEATED, WON, Tracing, encoder
from service.prices import Price, Prices
from service.upstream.usage import Usage

BATCH = 512  # spans per export (OTEL_BSP_MAX_EXPORT_BATCH_SIZE as the bench sets it)
REQUESTS = 20_000
REPEATS = 5

HEADERS = [
    (b"host", b"gateway.internal:8080"),
    (b"user-agent", b"OpenAI/Python 1.54.0"),
    (b"accept", b"application/json"),
    (b"content-type", b"application/json"),
    (b"authorization", b"Bearer sk-best-0123456789abcdef0123456789abcdef"),
    (b"content-length", b"187"),
]
UPSTREAM_HEADERS = {"Authorization": "Bearer sk-provider-key", "Content-Type": "application/json"}
URL = "https://api.openai.com/v1/chat/completions"
BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello in one word."}],
    "max_tokens": 64,
    "temperature": 0.7,
}
STREAM_BODY: dict[str, Any] = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
ANSWER: dict[str, Any] = {
    "id": "chatcmpl-AbCdEf0123456789",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
}
FIRST_FRAMES = [
    b'data: {"id":"chatcmpl-AbCdEf0123456789","object":"chat.completion.chunk",'
    b'"created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
]
USED = Usage("openai", "gpt-4o-mini", 12, 2)
PRICES = Prices(models={"gpt-4o-mini": Price.per_million(0.15, 0.6, 16384)})
TOKEN_ID = "b9b815bdafe4a64b"

Request = Callable[[Tracing | None, str], None]


def json_request(tracing: Tracing | None, request_id: str) -> None:
    """The tracing calls of a JSON chat completion, in the gateway's order."""
    if tracing is None:
        # What the call sites do when tracing is off: the same tests, nothing else.
        trace = None
        if trace is not None:  # auth.py, calls.py, router.py, app.py
            raise AssertionError
        return
    trace = tracing.server(
        "POST", "/v1/chat/completions", "/v1/chat/completions", request_id, HEADERS
    )
    trace.caller(TOKEN_ID, None)
    span = trace.attempt(Api.CHAT, "openai", "gpt-4o-mini", URL, BODY, UPSTREAM_HEADERS)
    if "traceparent" not in span.headers:
        raise AssertionError("the upstream request carries no traceparent")
    span.answered(WON, ANSWER, USED)
    exemplar = trace.exemplar  # the router's and the edge's histograms
    trace.status = 200
    trace.end()
    if exemplar is None and trace.exemplar is not None:
        raise AssertionError


def stream_request(tracing: Tracing | None, request_id: str) -> None:
    """The tracing calls of a streamed chat completion relayed to its end."""
    if tracing is None:
        return
    trace = tracing.server(
        "POST", "/v1/chat/completions", "/v1/chat/completions", request_id, HEADERS
    )
    trace.caller(TOKEN_ID, None)
    span = trace.attempt(Api.CHAT, "openai", "gpt-4o-mini", URL, STREAM_BODY, UPSTREAM_HEADERS)
    span.streamed(FIRST_FRAMES, ("stop",), USED, 0.2345, None)
    _ = trace.exemplar
    trace.status = 200
    trace.end()


class Keep:
    """A sink that keeps what it is given (or nothing: ``keep=False``)."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.kept: list[SpanRecord] = []

    def export(self, spans: Sequence[SpanRecord]) -> bool:
        if self.keep:
            self.kept.extend(spans)
        return True

    def shutdown(self) -> None:
        return None


def _min_us(run: Callable[[], float], repeats: int, per: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        best = min(best, run())
    return best / per * 1e6


def cpu_of(
    tracing: Tracing | None, request: Request, requests: int, clock: Callable[[], float]
) -> float:
    ids = [f"3f9c2a1b7d4e-{i}" for i in range(requests)]
    started = clock()
    for request_id in ids:
        request(tracing, request_id)
    return clock() - started


def traced(sink: Keep, requests: int, rate: float = 1.0) -> Tracing:
    """Tracing into ``sink``, with room for ``requests`` requests' spans."""
    queue = SpanQueue(sink, max_size=2 * requests + 2, batch_size=BATCH)
    return Tracing(queue, Sampling.ratio(rate, parent_based=True), lambda: PRICES)


def record_us(request: Request, requests: int, repeats: int, rate: float = 1.0) -> float:
    tracing = traced(Keep(False), requests, rate)
    request(tracing, "warm-up")

    def run() -> float:
        took = cpu_of(tracing, request, requests, time.thread_time)
        tracing.flush()
        return took

    try:
        return _min_us(run, repeats, requests)
    finally:
        tracing.shutdown()


def spans_of(request: Request, count: int) -> list[SpanRecord]:
    """``count`` requests' spans as the export thread receives them."""
    sink = Keep(True)
    tracing = traced(sink, count)
    for i in range(count):
        request(tracing, f"3f9c2a1b7d4e-{i}")
    tracing.shutdown()
    return sink.kept


def encode_us(
    encode: Callable[[list[Any]], bytes], spans: list[Any], repeats: int, requests: int
) -> float:
    """Thread CPU per request to encode ``spans`` in batches of ``BATCH``."""
    batches = [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]

    def run() -> float:
        started = time.thread_time()
        for batch in batches:
            encode(batch)
        return time.thread_time() - started

    return _min_us(run, repeats, requests)


class ProtoEncoder:
    """The ExportTraceServiceRequest built with opentelemetry-proto's message classes, the
    KeyValue messages of repeated (key, value) pairs cached: the library way, to compare."""

    def __init__(self, resource: Resource) -> None:
        self._pairs: dict[tuple[str, type, Any], PB2KeyValue] = {}
        self._repeated = frozenset(REPEATED)
        self._resource = PB2Resource(
            attributes=[self._key_value(k, v) for k, v in resource.attributes.items()]
        )
        self._scope = PB2Scope(name="best")

    def _value(self, value: Any) -> PB2AnyValue:
        if isinstance(value, bool):
            return PB2AnyValue(bool_value=value)
        if isinstance(value, str):
            return PB2AnyValue(string_value=value)
        if isinstance(value, int):
            return PB2AnyValue(int_value=value)
        if isinstance(value, float):
            return PB2AnyValue(double_value=value)
        return PB2AnyValue(array_value=PB2ArrayValue(values=[self._value(v) for v in value]))

    def _key_value(self, key: str, value: Any) -> PB2KeyValue:
        if key not in self._repeated:
            return PB2KeyValue(key=key, value=self._value(value))
        pair = (key, value.__class__, value)
        found = self._pairs.get(pair)
        if found is None:
            found = self._pairs[pair] = PB2KeyValue(key=key, value=self._value(value))
        return found

    def encode(self, spans: list[SpanRecord]) -> bytes:
        request = PB2Request()
        scope_spans = request.resource_spans.add(resource=self._resource).scope_spans.add(
            scope=self._scope
        )
        for span in spans:
            encoded = scope_spans.spans.add(
                trace_id=span.trace_id.to_bytes(16, "big"),
                span_id=span.span_id.to_bytes(8, "big"),
                parent_span_id=span.parent_id.to_bytes(8, "big") if span.parent_id else b"",
                name=span.name,
                kind=span.kind.value + 1,
                start_time_unix_nano=span.start_ns,
                end_time_unix_nano=span.end_ns,
                flags=0x300 if span.parent_remote else 0x100,
                status=PB2Status(
                    code=PB2Status.STATUS_CODE_ERROR if span.error else PB2Status.STATUS_CODE_UNSET
                ),
            )
            encoded.attributes.extend([self._key_value(k, v) for k, v in span.attributes.items()])
        return bytes(request.SerializeToString())


RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Discard(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Discard)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def whole_us(request: Request, requests: int, repeats: int, sampler: str = "always_on") -> float:
    """Process CPU per request, recording and exporting over OTLP/HTTP to a loopback
    receiver in a child process."""
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        name, _, ratio = sampler.partition("=")
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_TRACES_SAMPLER": name,
            "OTEL_TRACES_SAMPLER_ARG": ratio,
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": str(BATCH),
            "OTEL_BSP_MAX_QUEUE_SIZE": str(8 * BATCH),
        }
        tracing = Tracing.from_env(env, lambda: PRICES)
        assert tracing is not None
        request(tracing, "warm-up")
        assert tracing.flush()
        chunk = 2 * BATCH  # flushed as it goes (2 spans a request), so the queue never drops

        def run() -> float:
            started = time.process_time()
            for first in range(0, requests, chunk):
                for i in range(first, min(first + chunk, requests)):
                    request(tracing, f"3f9c2a1b7d4e-{i}")
                assert tracing.flush()
            took = time.process_time() - started
            assert tracing.dropped == 0
            return took

        try:
            return _min_us(run, repeats, requests)
        finally:
            tracing.shutdown()
    finally:
        receiver.terminate()
        receiver.wait()


def main_thread_cpu_s(pid: int) -> float:
    """CPU seconds of the process's main thread (the event loop's)."""
    stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Point = tuple[bool, str]  # tracing on, kind


def gateway_us(
    seconds: float, rounds: int
) -> tuple[dict[Point, list[float]], dict[Point, list[float]]]:
    """The gateway's own CPU per request (its process, export thread included), tracing off
    and on (every request sampled, exported to nginx's OTLP receiver), embedded store: wrk
    at c=32 for ``seconds`` per point, off and on alternating for ``rounds`` rounds.  Each
    point waits out the export schedule delay after wrk, so the spans of its requests are
    exported (and counted) before the next point.  Also the event loop's thread's share."""
    workdir = Path(tempfile.mkdtemp(prefix="best-tracing-cost-"))
    upstream_port = free_port()
    nginx = start_nginx(workdir / "nginx", upstream_port)
    gateways: dict[bool, Target] = {}
    out: dict[Point, list[float]] = {}
    loop: dict[Point, list[float]] = {}
    try:
        for on in (False, True):
            name = "gateway-traced" if on else "gateway"
            gateways[on] = start_gateway(
                workdir / name,
                upstream_port,
                None,
                name,
                name,
                otlp_endpoint=f"http://127.0.0.1:{upstream_port}" if on else None,
            )
        scripts = {}
        for kind in ("json", "sse"):
            scripts[kind] = workdir / f"{kind}.lua"
            scripts[kind].write_text(render_script(kind, BENCH_TOKEN))
        for _ in range(rounds):
            for kind in ("json", "sse"):
                for on in (False, True):
                    target = gateways[on]
                    assert target.proc is not None
                    pid = target.proc.pid
                    before, thread_before = cpu_seconds(pid), main_thread_cpu_s(pid)
                    result = run_wrk(target.urls[kind], scripts[kind], 32, seconds)
                    time.sleep(SCHEDULE_DELAY_S + 0.5)
                    used = cpu_seconds(pid) - before
                    if result.errors or not result.requests:
                        raise RuntimeError(f"{target.name} {kind}: {result.errors} errors")
                    out.setdefault((on, kind), []).append(used / result.requests * 1e6)
                    thread = main_thread_cpu_s(pid) - thread_before
                    loop.setdefault((on, kind), []).append(thread / result.requests * 1e6)
        traced = gateways[True].proc
        assert traced is not None
        if "queue full" in traced.log_path.read_text(errors="replace"):
            raise RuntimeError("the traced gateway dropped spans: its figures are too low")
        return out, loop
    finally:
        for target in gateways.values():
            if target.proc is not None:
                target.proc.stop()
        nginx.stop()


def gateway_main(seconds: float, rounds: int) -> None:
    found, loop = gateway_us(seconds, rounds)
    print(
        f"gateway CPU us per request (its process), min of {rounds} rounds of {seconds:g} s, "
        "c=32, embedded store"
    )
    print("  kind   tracing off   tracing on (all sampled)   on / off")
    for kind in ("json", "sse"):
        off, on = min(found[False, kind]), min(found[True, kind])
        print(f"  {kind:<5}  {off:11.1f}   {on:24.1f}   {on / off:8.3f}")
    for (on, kind), runs in sorted(found.items()):
        label = "on " if on else "off"
        print(f"    {kind} {label} runs: " + ", ".join(f"{us:.1f}" for us in runs))
    print("  of which the event loop's thread (min):")
    for kind in ("json", "sse"):
        off, on = min(loop[False, kind]), min(loop[True, kind])
        print(f"  {kind:<5}  {off:11.1f}   {on:24.1f}   {on / off:8.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tracing_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument(
        "--gateway",
        action="store_true",
        help="instead: the gateway's CPU per request with tracing off and on, under wrk",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="per --gateway point")
    parser.add_argument("--rounds", type=int, default=3, help="of --gateway points")
    args = parser.parse_args(argv)
    if args.gateway:
        gateway_main(args.seconds, args.rounds)
        return 0
    n, r = args.requests, args.repeats
    off = _min_us(lambda: cpu_of(None, json_request, n, time.thread_time), r, n)
    rows = [
        ("off (the call sites' None tests)", off),
        ("record, JSON request (calling thread)", record_us(json_request, n, r)),
        ("record, stream request (calling thread)", record_us(stream_request, n, r)),
        ("record, JSON, traceidratio 0.1 (calling thread)", record_us(json_request, n, r, 0.1)),
    ]
    spans = spans_of(json_request, n)
    resource = Resource.create({"service.name": "best"})
    ours = encoder(resource)
    proto = ProtoEncoder(resource)
    sdk = [readable_span(s, resource) for s in spans]
    rows += [
        ("encode, service/observability/otlp.py", encode_us(ours.encode, spans, r, n)),
        ("encode, opentelemetry-proto messages", encode_us(proto.encode, spans, r, n)),
        (
            "encode, SDK encode_spans (from ReadableSpan)",
            encode_us(lambda b: encode_spans(b).SerializePartialToString(), sdk, r, n),
        ),
        ("whole path, OTLP/HTTP to loopback (process)", whole_us(json_request, n, r)),
        (
            "whole path, traceidratio 0.1 (process)",
            whole_us(json_request, n, r, "traceidratio=0.1"),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"tracing cost per request: CPU us, min of {r} runs of {n:,} requests")
    for name, us in rows:
        print(f"  {name:<{width}}  {us:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
