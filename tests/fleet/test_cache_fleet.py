"""The response cache across replicas: an answer one replica stores on the fleet's Redis is a
hit on another, and tenants stay apart."""

from __future__ import annotations

import httpx
import pytest

from tests.fleet.conftest import Fleet

CHAT = {"model": "chat-model", "messages": [{"role": "user", "content": "cache me"}]}


@pytest.mark.slow
def test_one_replica_stores_and_another_hits(fleet: Fleet) -> None:
    _, token = fleet.create_token(cache_ttl_s=60)
    _, stranger = fleet.create_token(cache_ttl_s=60)
    before = fleet.primary.chat_requests

    def ask(replica: int, raw: str, body: dict[str, object]) -> httpx.Response:
        response = httpx.post(
            f"{fleet.replicas[replica].url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {raw}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response

    stored = ask(0, token, CHAT)
    hit = ask(1, token, CHAT)
    streamed = ask(2, token, {**CHAT, "stream": True})
    other = ask(1, stranger, CHAT)
    assert [r.headers["x-best-cache"] for r in (stored, hit, streamed, other)] == [
        "miss",
        "hit",
        "hit",
        "miss",
    ]
    assert hit.json() == stored.json()
    assert streamed.text.endswith("data: [DONE]\n\n")
    assert stored.json()["choices"][0]["message"]["content"] in streamed.text
    assert fleet.primary.chat_requests - before == 2  # the stranger's miss, and the first
