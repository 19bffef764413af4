"""The upstream client's proxy choice: read once per origin from the environment."""

from __future__ import annotations

import pytest

from service.upstream.client import UpstreamClient


def test_proxy_follows_the_environment_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain-proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1,.corp.example")
    client = UpstreamClient()
    assert client._proxy_for("https://api.groq.com/openai/v1/chat/completions") == (
        "http://proxy.internal:3128"
    )
    assert (
        client._proxy_for("http://models.example/v1/models") == "http://plain-proxy.internal:3128"
    )
    assert client._proxy_for("http://127.0.0.1:8080/v1/chat/completions") is None
    assert client._proxy_for("https://llm.corp.example/v1/chat/completions") is None


def test_proxy_choice_is_cached_per_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    client = UpstreamClient()
    assert client._proxy_for("https://api.example/v1/chat/completions") is None
    # Read once: a later change of the environment does not cost a lookup per request.
    monkeypatch.setenv("HTTPS_PROXY", "http://late.proxy:1")
    assert client._proxy_for("https://api.example/v1/embeddings") is None
    assert client._proxy_for("https://other.example/v1/embeddings") == "http://late.proxy:1"
