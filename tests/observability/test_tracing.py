"""Traces of requests, read from the SDK's in-memory exporter: a SERVER span per request, a
CLIENT span per upstream attempt with the GenAI conventions' attributes, the trace continued
from the caller and carried to the upstream, no token and no content unless asked."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from service.apis import Api
from service.observability.tracing import EXEMPLAR_INTERVAL_NS, Tracing
from service.quotas.tokens import token_id
from tests.fakes.behaviors import Behavior
from tests.fakes.upstream import FakeProvider
from tests.inprocess import USER_TOKEN, client
from tests.observability.conftest import HEDGE_AFTER_MS
from tests.observability.traced import CHAT, Traced, gateway, traced_gateway

pytestmark = pytest.mark.anyio

INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_PARENT = "00f067aa0ba902b7"


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def only(spans: list[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    return (
        span.parent is not None
        and span.parent.span_id == parent.context.span_id
        and span.context.trace_id == parent.context.trace_id
    )


async def test_a_json_chat_is_a_server_span_with_one_client_span(
    traced: Traced, providers: dict[str, FakeProvider]
) -> None:
    providers["a"].report_cost(0.0042)
    body = {**CHAT, "temperature": 0.25, "max_tokens": 40, "top_p": 0.5}
    response = await traced.http.post(
        "/v1/chat/completions", json=body, headers={"x-request-id": "req-1"}
    )
    assert response.status_code == 200
    server, attempt = only(traced.servers()), only(traced.clients())

    assert server.name == "POST /v1/chat/completions"
    assert attrs(server) == {
        "http.request.method": "POST",
        "url.path": "/v1/chat/completions",
        "http.route": "/v1/chat/completions",
        "best.request_id": "req-1",
        "best.token_id": token_id(USER_TOKEN),
        "http.response.status_code": 200,
    }
    assert child_of(attempt, server)
    assert attempt.name == "chat m"
    got = attrs(attempt)
    answer = response.json()
    assert got == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "a",
        "gen_ai.request.model": "m",
        "gen_ai.request.temperature": 0.25,
        "gen_ai.request.max_tokens": 40,
        "gen_ai.request.top_p": 0.5,
        "server.address": "127.0.0.1",
        "server.port": providers["a"].port,
        "best.attempt": 1,
        "best.hedge": False,
        "gen_ai.response.id": answer["id"],
        "gen_ai.response.model": answer["model"],
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": answer["usage"]["prompt_tokens"],
        "gen_ai.usage.output_tokens": answer["usage"]["completion_tokens"],
        "best.cost_usd": 0.0042,
        "best.outcome": "won",
    }
    assert attempt.status.status_code is StatusCode.UNSET
    # The attempt lies within the request.
    assert server.start_time is not None and attempt.start_time is not None
    assert server.end_time is not None and attempt.end_time is not None
    assert server.start_time <= attempt.start_time <= attempt.end_time <= server.end_time


async def test_a_stream_s_spans_end_when_the_stream_ends(
    traced: Traced, providers: dict[str, FakeProvider]
) -> None:
    chunk_delay_s = 0.05
    providers["a"].set_behavior(Behavior.slow_stream(chunk_delay_s))
    started = time.monotonic()
    async with traced.http.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "stream": True}
    ) as response:
        text = (await response.aread()).decode()
    took_s = time.monotonic() - started
    assert text.rstrip().endswith("data: [DONE]")
    server, attempt = only(traced.servers()), only(traced.clients())
    assert child_of(attempt, server)
    got = attrs(attempt)
    assert got["gen_ai.request.stream"] is True
    assert got["best.outcome"] == "won"
    assert got["gen_ai.response.finish_reasons"] == ("stop",)
    assert got["gen_ai.response.id"].startswith("chatcmpl")
    assert isinstance(got["gen_ai.usage.output_tokens"], int)
    ttft_ms = got["best.ttft_ms"]
    assert isinstance(ttft_ms, float) and ttft_ms > 0
    assert got["gen_ai.response.time_to_first_chunk"] == pytest.approx(ttft_ms / 1000, abs=1e-3)
    # The span lasted the whole stream (several chunk delays), well past its first chunk.
    assert attempt.end_time is not None and attempt.start_time is not None
    duration_s = (attempt.end_time - attempt.start_time) / 1e9
    assert duration_s >= 3 * chunk_delay_s
    assert duration_s > ttft_ms / 1000 + 2 * chunk_delay_s
    assert duration_s <= took_s
    assert server.end_time is not None and server.end_time >= attempt.end_time


async def test_embeddings_are_an_embeddings_span(traced: Traced) -> None:
    response = await traced.http.post("/v1/embeddings", json={"model": "emb-m", "input": "hi"})
    assert response.status_code == 200
    server, attempt = only(traced.servers()), only(traced.clients())
    assert server.name == "POST /v1/embeddings"
    assert attempt.name == "embeddings emb-m"
    got = attrs(attempt)
    assert got["gen_ai.operation.name"] == "embeddings"
    assert got["gen_ai.usage.input_tokens"] == response.json()["usage"]["prompt_tokens"]
    assert got["best.outcome"] == "won"


async def test_a_failover_is_two_sibling_attempts_the_first_failed(
    traced: Traced, providers: dict[str, FakeProvider]
) -> None:
    providers["a"].set_behavior(Behavior.server_error(503))
    response = await traced.http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["x-best-provider"] == "b"
    server = only(traced.servers())
    failed, won = traced.clients()
    assert child_of(failed, server) and child_of(won, server)
    assert (attrs(failed)["gen_ai.provider.name"], attrs(won)["gen_ai.provider.name"]) == (
        "a",
        "b",
    )
    assert attrs(failed)["best.outcome"] == "failed"
    assert attrs(failed)["error.type"] == "server_error"
    assert failed.status.status_code is StatusCode.ERROR
    assert "gen_ai.usage.input_tokens" not in attrs(failed)
    assert (attrs(failed)["best.attempt"], attrs(won)["best.attempt"]) == (1, 2)
    assert attrs(won)["best.outcome"] == "won"
    assert attrs(won)["best.hedge"] is False
    assert failed.end_time is not None and won.start_time is not None
    assert failed.end_time <= won.start_time  # one after the other


async def test_a_hedge_that_wins_leaves_the_first_attempt_cancelled(
    traced: Traced, providers: dict[str, FakeProvider]
) -> None:
    providers["a"].set_behavior(Behavior.ok(delay_s=3))
    response = await traced.http.post("/v1/chat/completions", json={**CHAT, "model": "hedge-m"})
    assert response.status_code == 200
    assert response.headers["x-best-provider"] == "b"
    server = only(traced.servers())
    first, hedge = traced.clients()
    assert child_of(first, server) and child_of(hedge, server)
    assert attrs(first)["gen_ai.provider.name"] == "a"
    assert attrs(first)["best.outcome"] == "cancelled"
    assert attrs(first)["best.hedge"] is False
    assert attrs(hedge)["gen_ai.provider.name"] == "b"
    assert attrs(hedge)["best.outcome"] == "won"
    assert attrs(hedge)["best.hedge"] is True
    assert attrs(hedge)["best.attempt"] == 2
    # The hedge started after the hedge delay, while the first was still running.
    assert first.start_time is not None and hedge.start_time is not None
    assert (hedge.start_time - first.start_time) / 1e6 >= HEDGE_AFTER_MS * 0.9
    assert first.end_time is not None and hedge.end_time is not None
    assert first.end_time >= hedge.start_time


async def test_an_incoming_traceparent_continues_its_trace(traced: Traced) -> None:
    traceparent = f"00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"
    response = await traced.http.post(
        "/v1/chat/completions",
        json=CHAT,
        headers={"traceparent": traceparent, "tracestate": "vendor=x"},
    )
    assert response.status_code == 200
    server, attempt = only(traced.servers()), only(traced.clients())
    assert f"{server.context.trace_id:032x}" == INCOMING_TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == INCOMING_PARENT
    assert server.parent.is_remote
    assert f"{attempt.context.trace_id:032x}" == INCOMING_TRACE


async def test_each_upstream_request_carries_its_attempt_s_traceparent(
    traced: Traced, providers: dict[str, FakeProvider]
) -> None:
    providers["a"].set_behavior(Behavior.server_error(500))
    assert (await traced.http.post("/v1/chat/completions", json=CHAT)).status_code == 200
    failed, won = traced.clients()
    for fake, span in ((providers["a"], failed), (providers["b"], won)):
        sent = only([r for r in fake.requests if r.path.endswith("/chat/completions")])
        version, trace_id, span_id, flags = sent.headers["traceparent"].split("-")
        assert version == "00"
        assert int(flags, 16) & 1  # sampled
        assert trace_id == f"{span.context.trace_id:032x}"
        assert span_id == f"{span.context.span_id:016x}"  # the attempt's span, not the server's


async def test_tracing_off_sends_no_traceparent(
    config_dir: Path, tmp_path: Path, providers: dict[str, FakeProvider]
) -> None:
    async with gateway(config_dir, tmp_path) as app, client(app) as http:
        assert app.gateway.tracing is None
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
    sent = only([r for r in providers["a"].requests if r.path.endswith("/chat/completions")])
    assert "traceparent" not in sent.headers


async def test_a_refused_request_still_has_its_server_span(traced: Traced) -> None:
    async with client(traced.app, token="sk-not-a-token") as stranger:
        assert (await stranger.post("/v1/chat/completions", json=CHAT)).status_code == 401
    missing = {**CHAT, "model": "no-such-model"}
    assert (await traced.http.post("/v1/chat/completions", json=missing)).status_code == 404
    refused, not_found = sorted(traced.servers(), key=lambda s: s.start_time or 0)
    assert attrs(refused)["http.response.status_code"] == 401
    assert "best.token_id" not in attrs(refused)
    assert attrs(not_found)["http.response.status_code"] == 404
    assert attrs(not_found)["best.token_id"] == token_id(USER_TOKEN)
    assert traced.clients() == []


async def test_ops_routes_have_a_server_span_named_by_their_route(traced: Traced) -> None:
    assert (await traced.http.get("/v1/models/m")).status_code == 200
    server = only(traced.servers())
    assert server.name == "GET /v1/models/{model_id:path}"
    assert attrs(server)["http.route"] == "/v1/models/{model_id:path}"
    assert attrs(server)["url.path"] == "/v1/models/m"
    assert attrs(server)["http.response.status_code"] == 200


async def test_no_token_and_no_content_in_any_attribute(
    traced: Traced, providers: dict[str, FakeProvider]
) -> None:
    providers["a"].set_behavior(Behavior.server_error(500))
    assert (await traced.http.post("/v1/chat/completions", json=CHAT)).status_code == 200
    values = " ".join(str(v) for s in traced.spans() for v in attrs(s).values())
    assert USER_TOKEN not in values
    for key in ("ka", "kb"):  # the providers' keys
        assert f"Bearer {key}" not in values
    assert "plum" not in values
    assert not any(k.startswith("gen_ai.") for s in traced.servers() for k in attrs(s))


async def test_content_is_recorded_only_with_the_capture_variable(
    config_dir: Path, tmp_path: Path
) -> None:
    env = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}
    async with traced_gateway(config_dir, tmp_path, env) as traced:
        response = await traced.http.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        got = attrs(only(traced.clients()))
    assert '"content":"the secret word is plum"' in got["gen_ai.input.messages"]
    assert '"role":"user"' in got["gen_ai.input.messages"]
    reply = response.json()["choices"][0]["message"]["content"]
    assert reply in got["gen_ai.output.messages"]
    assert USER_TOKEN not in " ".join(str(v) for v in got.values())


async def test_latency_histograms_carry_trace_id_exemplars(traced: Traced) -> None:
    assert (await traced.http.post("/v1/chat/completions", json=CHAT)).status_code == 200
    trace_id = f"{only(traced.servers()).context.trace_id:032x}"
    scrape = await traced.http.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert scrape.headers["content-type"].startswith("application/openmetrics-text")
    lines = [line for line in scrape.text.splitlines() if f'trace_id="{trace_id}"' in line]
    families = {line.split("{", 1)[0] for line in lines}
    assert "best_request_duration_seconds_bucket" in families
    assert "gen_ai_client_operation_duration_seconds_bucket" in families
    assert all(" # {" in line for line in lines)  # the OpenMetrics exemplar syntax
    # The Prometheus text format, which has no exemplars, stays the default.
    plain = await traced.http.get("/metrics")
    assert plain.headers["content-type"].startswith("text/plain")
    assert "trace_id" not in plain.text


async def test_a_trace_not_sampled_records_nothing_but_still_propagates(
    config_dir: Path, tmp_path: Path, providers: dict[str, FakeProvider]
) -> None:
    env = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    async with traced_gateway(config_dir, tmp_path, env) as traced:
        assert (await traced.http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert traced.spans() == []
        sent = only([r for r in providers["a"].requests if r.path.endswith("/chat/completions")])
        assert sent.headers["traceparent"].endswith("-00")  # unsampled, for the upstream too
        # A caller that kept its trace is followed (parent-based), whatever the ratio.
        traceparent = f"00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"
        response = await traced.http.post(
            "/v1/chat/completions", json=CHAT, headers={"traceparent": traceparent}
        )
        assert response.status_code == 200
        server, attempt = only(traced.servers()), only(traced.clients())
    assert f"{server.context.trace_id:032x}" == INCOMING_TRACE
    assert child_of(attempt, server)


def test_a_few_requests_a_second_per_route_carry_an_exemplar() -> None:
    """Prometheus keeps one exemplar per bucket and scrape: under load, the requests of a
    route carry their trace id to the metrics at most ten times a second."""
    tracing = Tracing.from_env({}, exporter=InMemorySpanExporter())
    assert tracing is not None
    try:
        chat = "/v1/chat/completions"
        first = tracing.server("POST", chat, chat, "r-1", [])
        assert first.exemplar == {
            "trace_id": f"{first.trace_id:032x}",
            "span_id": f"{first.span_id:016x}",
        }
        assert tracing.server("POST", chat, chat, "r-2", []).exemplar is None
        other = tracing.server("POST", "/v1/embeddings", "/v1/embeddings", "r-3", [])
        assert other.exemplar is not None
        time.sleep(EXEMPLAR_INTERVAL_NS / 1e9)
        assert tracing.server("POST", chat, chat, "r-4", []).exemplar is not None
    finally:
        tracing.shutdown()


def test_a_stream_s_identity_is_its_first_data_event() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.from_env({}, exporter=exporter)
    assert tracing is not None
    frames = [
        b": keep-alive\n\ndata: not json\n\n",
        b'xdata: {"id":"no"}\n\ndata: {"id":"chatcmpl-1","model":"m-2024"}\n\n'
        b'data: {"id":"chatcmpl-2"}\n\ndata: [DONE]\n\n',
    ]
    try:
        trace = tracing.server("POST", "/v1/chat/completions", "", "r-1", [])
        attempt = trace.attempt(Api.CHAT, "a", "m", "http://up:8080/v1", {"stream": True}, {})
        attempt.streamed(frames, ["stop"], None, 0.25, None)
        trace.status = 200
        trace.end()
        assert tracing.flush()
    finally:
        tracing.shutdown()
    got = attrs(only([s for s in exporter.get_finished_spans() if s.name == "chat m"]))
    assert got["gen_ai.response.id"] == "chatcmpl-1"
    assert got["gen_ai.response.model"] == "m-2024"
    assert got["best.ttft_ms"] == 250.0
    assert got["server.port"] == 8080
