"""Anthropic's Messages API is traced like chat: a SERVER span for the route, a CLIENT span
per attempt with the GenAI attributes (the translated chat call's), streams included."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.upstream import FakeProvider
from tests.observability.test_tracing import attrs, child_of, only
from tests.observability.traced import Traced

pytestmark = pytest.mark.anyio

MESSAGE: dict[str, Any] = {
    "model": "m",
    "max_tokens": 64,
    "temperature": 0.5,
    "messages": [{"role": "user", "content": "hello"}],
}


async def test_a_message_is_a_server_span_with_a_chat_client_span(
    traced: Traced, providers: dict[str, FakeProvider]
) -> None:
    response = await traced.http.post("/v1/messages", json=MESSAGE)
    assert response.status_code == 200, response.text
    server, attempt = only(traced.servers()), only(traced.clients())
    assert server.name == "POST /v1/messages"
    assert attrs(server)["http.response.status_code"] == 200
    assert child_of(attempt, server)
    assert attempt.name == "chat m"
    got = attrs(attempt)
    assert got["gen_ai.operation.name"] == "chat"
    assert got["gen_ai.provider.name"] == "a"
    assert got["gen_ai.request.max_tokens"] == 64
    assert got["gen_ai.request.temperature"] == 0.5
    assert got["best.outcome"] == "won"
    assert isinstance(got["gen_ai.usage.input_tokens"], int)
    assert not any(key.startswith("gen_ai.") for key in attrs(server))


async def test_a_streamed_message_ends_its_span_with_the_stream(traced: Traced) -> None:
    response = await traced.http.post("/v1/messages", json={**MESSAGE, "stream": True})
    assert response.status_code == 200
    assert response.text.rstrip().endswith('data: {"type":"message_stop"}')
    attempt = only(traced.clients())
    got = attrs(attempt)
    assert got["gen_ai.request.stream"] is True
    assert got["best.outcome"] == "won"
    assert got["best.ttft_ms"] >= 0
