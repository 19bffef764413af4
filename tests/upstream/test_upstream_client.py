"""The upstream client: the proxy choice (read once per URL from the environment), and its
bounds on a server that never answers."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from service.types import HeadersPlus, headers_plus
from service.upstream.client import UpstreamClient
from service.upstream.errors import TIMEOUT, UpstreamFailure


def _proxy(client: UpstreamClient, url: str) -> str | None:
    proxy = client._route(url).proxy
    return None if proxy is None else f"{proxy.host}:{proxy.port}"


def test_proxy_follows_the_environment_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain-proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1,.corp.example")
    client = UpstreamClient()
    assert _proxy(client, "https://api.groq.com/openai/v1/chat/completions") == (
        "proxy.internal:3128"
    )
    assert _proxy(client, "http://models.example/v1/models") == "plain-proxy.internal:3128"
    # Through a plain-HTTP proxy the request line carries the whole URL.
    assert client._route("http://models.example/v1/models").target == (
        b"http://models.example/v1/models"
    )
    assert _proxy(client, "http://127.0.0.1:8080/v1/chat/completions") is None
    assert _proxy(client, "https://llm.corp.example/v1/chat/completions") is None


def test_proxy_choice_is_cached_per_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    client = UpstreamClient()
    assert _proxy(client, "https://api.example/v1/chat/completions") is None
    # Read once: a later change of the environment does not cost a lookup per request.
    monkeypatch.setenv("HTTPS_PROXY", "http://late.proxy:1")
    assert _proxy(client, "https://api.example/v1/chat/completions") is None
    assert _proxy(client, "https://other.example/v1/embeddings") == "late.proxy:1"


def test_a_requests_own_headers_go_with_the_shared_ones_encoded_once() -> None:
    client = UpstreamClient()
    shared = {"authorization": "Bearer k", "x-team": "a"}
    own = headers_plus(shared, {"traceparent": "00-1-2-01"})
    assert isinstance(own, HeadersPlus) and dict(own) == {**shared, "traceparent": "00-1-2-01"}
    assert client._header_block(own) == (
        b"authorization: Bearer k\r\nx-team: a\r\ntraceparent: 00-1-2-01\r\n"
    )
    assert client._header_block(headers_plus(shared, {"traceparent": "00-3-4-01"})).endswith(
        b"traceparent: 00-3-4-01\r\n"
    )
    assert list(client._encoded) == [id(shared)]  # the per-request mappings are not kept
    # A provider configured with one of the request's own headers: the request's wins, once.
    clash = headers_plus({"traceparent": "configured", "x": "1"}, {"traceparent": "mine"})
    assert client._header_block(clash) == b"traceparent: mine\r\nx: 1\r\n"


class _SilentServer:
    """A loopback TCP server that accepts connections and never says a word (a TLS
    handshake or a response that never comes)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]

    def close(self) -> None:
        self._sock.close()


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_stream_that_never_answers_gives_up_within_its_own_timeout(scheme: str) -> None:
    server = _SilentServer()

    async def attempt() -> UpstreamFailure:
        client = UpstreamClient()
        await client.start()
        try:
            with pytest.raises(UpstreamFailure) as caught:
                await client.open_stream(
                    f"{scheme}://127.0.0.1:{server.port}/v1/chat/completions", {}, b"{}", 0.5
                )
            return caught.value
        finally:
            await client.close()

    try:
        started = time.monotonic()
        failure = asyncio.run(attempt())
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert failure.reason == TIMEOUT
    # The client's own connect timeout is 10 s: the attempt's 0.5 s bound must win.
    assert elapsed < 2.0, elapsed
