"""The response cache end to end, in process, on every store backend: hits, misses and
bypasses; tenants kept apart; TTLs; a stored answer served as JSON and as a stream; what is
never stored; quotas and the ledger on hits; the entry size bound; single flight."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from service.app import App
from tests.cache.conftest import Gateway
from tests.cache.upstream import TOOL_ARGUMENTS, ScriptedUpstream
from tests.inprocess import ADMIN_TOKEN, USER_TOKEN, client

pytestmark = pytest.mark.anyio

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]


async def post(
    app: App, body: dict[str, Any], path: str = "/v1/chat/completions", **headers: str
) -> httpx.Response:
    async with client(app) as http:
        response = await http.post(path, json=body, headers=headers)
    await app.gateway.cache.flush()  # the answer is stored in the background
    return response


def sse_events(response: httpx.Response) -> list[Any]:
    assert response.headers["content-type"] == "text/event-stream"
    payloads = [line[6:] for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]", payloads[-3:]
    return [json.loads(p) for p in payloads[:-1]]


def streamed_message(events: list[Any]) -> dict[str, Any]:
    """What an OpenAI client makes of a chat stream: the message, its finish and usage."""
    message: dict[str, Any] = {"content": "", "reasoning_content": "", "tool_calls": {}}
    out: dict[str, Any] = {"message": message, "finish_reason": None, "usage": None}
    for event in events:
        if event.get("usage"):
            out["usage"] = event["usage"]
        for choice in event["choices"]:
            delta = choice["delta"]
            for key in ("content", "reasoning_content"):
                message[key] += delta.get(key) or ""
            for call in delta.get("tool_calls") or ():
                held = message["tool_calls"].setdefault(
                    call["index"], {"id": None, "name": "", "arguments": ""}
                )
                held["id"] = call.get("id") or held["id"]
                function = call.get("function") or {}
                held["name"] += function.get("name") or ""
                held["arguments"] += function.get("arguments") or ""
            out["finish_reason"] = choice["finish_reason"] or out["finish_reason"]
    return out


async def test_a_repeated_request_is_a_hit_with_no_upstream_call(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    async with gateway(cache_default_ttl_s=60) as app:
        first = await post(app, CHAT)
        again = await post(app, {**CHAT, "user": "someone", "metadata": {"run": 2}})
    assert first.status_code == again.status_code == 200
    assert first.headers["x-best-cache"] == "miss"
    assert again.headers["x-best-cache"] == "hit"
    assert again.json() == first.json()  # the same answer, "answer number 1"
    assert first.json()["choices"][0]["message"]["content"] == "answer number 1"
    assert upstream.calls["chat"] == 1
    assert again.headers["age"] == "0"
    assert (
        again.headers["x-request-id"]
        and again.headers["x-request-id"] != first.headers["x-request-id"]
    )
    assert (again.headers["x-best-provider"], again.headers["x-best-model"]) == ("p", "m")


async def test_no_cache_refreshes_no_store_bypasses_and_a_changed_body_misses(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    async with gateway(cache_default_ttl_s=60) as app:
        await post(app, CHAT)
        fresh = await post(app, CHAT, **{"cache-control": "no-cache"})
        after_fresh = await post(app, CHAT)
        unstored = await post(app, CHAT, **{"cache-control": "no-store"})
        after_unstored = await post(app, CHAT)
        off = await post(app, CHAT, **{"x-best-cache-ttl": "0"})
        other = await post(app, {**CHAT, "temperature": 0.5})
        invalid = await post(app, CHAT, **{"x-best-cache-ttl": "soon"})
    assert fresh.headers["x-best-cache"] == "bypass"
    assert fresh.json()["choices"][0]["message"]["content"] == "answer number 2"
    # no-cache stored its fresh answer; no-store neither read nor wrote.
    assert after_fresh.headers["x-best-cache"] == "hit"
    assert after_fresh.json() == fresh.json()
    assert unstored.headers["x-best-cache"] == "bypass"
    assert unstored.json()["choices"][0]["message"]["content"] == "answer number 3"
    assert after_unstored.json() == fresh.json()
    assert off.headers["x-best-cache"] == "bypass"
    assert other.headers["x-best-cache"] == "miss"
    assert upstream.calls["chat"] == 5
    assert invalid.status_code == 400
    assert invalid.json()["error"]["param"] == "x-best-cache-ttl"


@pytest.mark.slow  # waits out a TTL: over a second
async def test_a_request_header_opts_in_and_ttl_expires(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    ttl = {"x-best-cache-ttl": "1"}
    async with gateway() as app:  # no default TTL: the header alone opts in
        plain = await post(app, CHAT)
        first = await post(app, CHAT, **ttl)
        hit = await post(app, CHAT, **ttl)
        await asyncio.sleep(1.1)
        expired = await post(app, CHAT, **ttl)
    assert "x-best-cache" not in plain.headers
    assert [first.headers["x-best-cache"], hit.headers["x-best-cache"]] == ["miss", "hit"]
    assert expired.headers["x-best-cache"] == "miss"
    assert upstream.calls["chat"] == 3


async def test_teams_share_answers_and_tenants_never_see_each_others(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    async with gateway() as app:
        async with client(app, ADMIN_TOKEN) as admin:
            for team in ("team-a", "team-b"):
                made = await admin.post(
                    "/admin/teams", json={"name": team, "id": team, "cache_ttl_s": 60}
                )
                assert made.status_code == 201 and made.json()["cache_ttl_s"] == 60

            async def token(**fields: Any) -> str:
                made = await admin.post("/admin/tokens", json={"name": "t", **fields})
                assert made.status_code == 201, made.text
                return str(made.json()["token"])

            a1, a2 = await token(team="team-a"), await token(team="team-a")
            b1 = await token(team="team-b")
            alone, other = await token(cache_ttl_s=60), await token(cache_ttl_s=60)
            opted_out = await token(team="team-a", cache_ttl_s=0)

        async def ask(raw: str) -> httpx.Response:
            async with client(app, raw) as http:
                response = await http.post("/v1/chat/completions", json=CHAT)
            await app.gateway.cache.flush()
            return response

        results = [await ask(t) for t in (a1, a2, b1, alone, other, alone, opted_out)]
    caches = [r.headers.get("x-best-cache") for r in results]
    assert caches == ["miss", "hit", "miss", "miss", "miss", "hit", None]
    contents = [r.json()["choices"][0]["message"]["content"] for r in results]
    assert contents[0] == contents[1]  # one team, one answer
    assert len({contents[0], contents[2], contents[3], contents[4]}) == 4
    assert contents[5] == contents[3]
    assert upstream.calls["chat"] == 5


async def test_a_json_answer_replays_as_a_stream_with_reasoning_and_tool_calls(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    body = {**CHAT, "tools": TOOLS}
    async with gateway(cache_default_ttl_s=60) as app:
        stored = (await post(app, body)).json()
        streamed = await post(
            app, {**body, "stream": True, "stream_options": {"include_usage": True}}
        )
        plain_stream = await post(app, {**body, "stream": True})
    assert streamed.headers["x-best-cache"] == "hit"
    got = streamed_message(sse_events(streamed))
    message = stored["choices"][0]["message"]
    assert got["message"]["content"] == message["content"] == "answer number 1"
    assert got["message"]["reasoning_content"] == message["reasoning_content"] == "thinking 1"
    assert got["message"]["tool_calls"] == {
        0: {"id": "call_1", "name": "weather", "arguments": TOOL_ARGUMENTS}
    }
    assert got["finish_reason"] == "tool_calls"
    assert got["usage"] == stored["usage"]
    assert streamed_message(sse_events(plain_stream))["usage"] is None  # not asked: not sent
    assert upstream.calls["chat"] == 1


async def test_a_streamed_answer_is_stored_whole_and_served_as_json(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    body = {**CHAT, "tools": TOOLS}
    async with gateway(cache_default_ttl_s=60) as app:
        streamed = await post(app, {**body, "stream": True})
        as_json = await post(app, body)
        as_stream = await post(app, {**body, "stream": True})
    assert streamed.headers["x-best-cache"] == "miss"
    assert as_json.headers["x-best-cache"] == "hit"
    answer = as_json.json()
    assert answer["object"] == "chat.completion" and answer["id"] == "chatcmpl-1"
    message = answer["choices"][0]["message"]
    assert message["content"] == "answer number 1"
    assert message["reasoning_content"] == "thinking 1"
    assert message["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "weather", "arguments": TOOL_ARGUMENTS},
        }
    ]
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    # The usage the client did not ask for in its stream is kept for later JSON answers.
    assert answer["usage"]["total_tokens"] == 12
    assert streamed_message(sse_events(as_stream)) == streamed_message(sse_events(streamed))
    assert upstream.calls["chat"] == 1


async def test_completions_and_embeddings_are_cached_too(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    prompt = {"model": "m", "prompt": "say it"}
    vectors = {"model": "m", "input": "a document"}
    async with gateway(cache_default_ttl_s=60) as app:
        streamed = await post(app, {**prompt, "stream": True}, "/v1/completions")
        text = await post(app, prompt, "/v1/completions")
        replayed = await post(
            app,
            {**prompt, "stream": True, "stream_options": {"include_usage": True}},
            "/v1/completions",
        )
        first = await post(app, vectors, "/v1/embeddings")
        second = await post(app, vectors, "/embeddings")
    assert text.headers["x-best-cache"] == "hit"
    assert text.json()["choices"][0]["text"] == "text number 1"
    events = sse_events(replayed)
    assert "".join(c["text"] for e in events for c in e["choices"]) == "text number 1"
    assert events[-1]["usage"]["total_tokens"] == 6
    assert streamed.headers["x-best-cache"] == "miss"
    assert second.headers["x-best-cache"] == "hit" and second.json() == first.json()
    assert upstream.calls["completions"] == 1 and upstream.calls["embeddings"] == 1


@pytest.mark.slow  # a 429's Retry-After: over a second
@pytest.mark.parametrize("mode", ["429", "500", "filter", "cut"])
@pytest.mark.parametrize("stream", [False, True])
async def test_errors_filtered_and_cut_answers_are_never_stored(
    gateway: Gateway, upstream: ScriptedUpstream, mode: str, stream: bool
) -> None:
    body = {**CHAT, "stream": stream}
    upstream.modes.append(mode)
    async with gateway(cache_default_ttl_s=60) as app:
        failed = await post(app, body)
        if mode == "429":
            await asyncio.sleep(1.1)  # the provider cools for its Retry-After (1 s)
        retried = await post(app, body)
        again = await post(app, body)
    if mode == "429":
        assert failed.status_code == 429
    elif mode == "filter":
        assert failed.status_code == 200
    elif stream and mode == "cut":
        assert '"error"' in failed.text.split("\n\n")[-2]  # the stream ended with an error
    else:
        assert failed.status_code == 502
    assert retried.status_code == 200
    assert retried.headers["x-best-cache"] == "miss"  # nothing of the failure was stored
    assert again.headers["x-best-cache"] == "hit"
    assert upstream.calls["chat"] == 2


async def test_an_answer_over_the_entry_bound_is_not_stored(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    async with gateway(cache_default_ttl_s=60, cache_max_entry_bytes=100) as app:
        results = [await post(app, CHAT) for _ in range(2)]
    assert [r.headers["x-best-cache"] for r in results] == ["miss", "miss"]
    assert upstream.calls["chat"] == 2


async def test_hits_count_for_rpm_but_not_for_tokens_or_spend(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    body = {**CHAT, "max_tokens": 10}  # reserves about 30 tokens; uses 12
    async with gateway() as app, client(app, ADMIN_TOKEN) as admin:
        made = await admin.post(
            "/admin/tokens",
            json={
                "name": "q",
                "rpm": 4,
                "tpm": 50,
                "budget_usd": 1,
                "budget_period": "day",
                "cache_ttl_s": 60,
            },
        )
        token = made.json()["token"]
        async with client(app, token) as http:
            results = []
            for _ in range(5):
                results.append(await http.post("/v1/chat/completions", json=body))
                await app.gateway.cache.flush()
                await app.gateway.quotas.flush()
        await app.gateway.quotas.flush()
        usage = (await admin.get("/admin/usage", params={"group_by": "token"})).json()
        listed = (await admin.get("/admin/tokens")).json()["data"]
    statuses = [r.status_code for r in results]
    # A miss and three hits fill rpm 4; had hits reserved tokens, the third would pass tpm 50.
    assert statuses == [200, 200, 200, 200, 429], [r.text for r in results]
    assert [r.headers.get("x-best-cache") for r in results[:4]] == ["miss", "hit", "hit", "hit"]
    assert results[4].json()["error"]["code"] == "rate_limit_exceeded"
    assert results[3].headers["x-ratelimit-remaining-requests"] == "0"
    row = next(r for r in usage["data"] if r["token"] == made.json()["id"])
    assert (row["requests"], row["cached_requests"]) == (4, 3)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 5)  # the miss alone
    assert row["cost_usd"] == pytest.approx((7 * 1.0 + 5 * 2.0) / 1e6)
    mine = next(t for t in listed if t["id"] == made.json()["id"])
    assert mine["usage"]["tokens_last_minute"] == 12
    assert mine["usage"]["budget_spent_usd"] == pytest.approx((7 * 1.0 + 5 * 2.0) / 1e6)
    assert mine["usage"]["in_flight"] == 0
    assert upstream.calls["chat"] == 1


async def test_identical_concurrent_misses_make_one_upstream_call(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    upstream.delay_s = 0.3
    async with gateway(cache_default_ttl_s=60) as app, client(app) as http:
        results = await asyncio.gather(
            *(
                http.post("/v1/chat/completions", json={**CHAT, "stream": i % 2 == 1})
                for i in range(6)
            )
        )
    assert upstream.calls["chat"] == 1
    assert sorted(r.headers["x-best-cache"] for r in results) == ["hit"] * 5 + ["miss"]
    contents = {
        r.json()["choices"][0]["message"]["content"]
        if i % 2 == 0
        else streamed_message(sse_events(r))["message"]["content"]
        for i, r in enumerate(results)
    }
    assert contents == {"answer number 1"}


async def test_followers_of_a_failed_leader_go_upstream_themselves(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    upstream.delay_s = 0.2
    upstream.modes.append("500")
    async with gateway(cache_default_ttl_s=60) as app, client(app) as http:
        results = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=CHAT) for _ in range(3))
        )
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 200, 502]  # the error is the leader's alone
    assert upstream.calls["chat"] == 3


async def test_a_stream_whose_client_leaves_is_not_stored(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    upstream.chunk_delay_s = 0.05
    body = {**CHAT, "stream": True}
    async with gateway(cache_default_ttl_s=60) as app:
        pieces: list[bytes] = []
        gone = asyncio.Event()
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": json.dumps(body).encode()}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                pieces.append(message["body"])
                gone.set()  # the client leaves after the first piece

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/chat/completions",
            "query_string": b"",
            "headers": [(b"authorization", f"Bearer {USER_TOKEN}".encode())],
        }
        await app(scope, receive, send)
        await app.gateway.cache.flush()
        again = await post(app, body)
    assert len(pieces) == 1 and b"[DONE]" not in pieces[0]
    assert again.headers["x-best-cache"] == "miss"
    assert upstream.calls["chat"] == 2


@pytest.mark.parametrize("store_url", ["embedded"], indirect=True)
async def test_cache_ttl_s_is_kept_changed_and_cleared_through_the_admin_api(
    gateway: Gateway,
) -> None:
    async with gateway() as app, client(app, ADMIN_TOKEN) as admin:
        made = (await admin.post("/admin/tokens", json={"name": "t", "cache_ttl_s": 30})).json()
        assert made["cache_ttl_s"] == 30
        changed = await admin.patch(f"/admin/tokens/{made['id']}", json={"cache_ttl_s": 0})
        assert changed.json()["cache_ttl_s"] == 0
        assert app.gateway.cache.policy.ttl_of(await app.gateway.tokens.find(made["id"])) == 0
        cleared = await admin.patch(f"/admin/tokens/{made['id']}", json={"cache_ttl_s": None})
        assert cleared.json()["cache_ttl_s"] is None
        team = (await admin.post("/admin/teams", json={"name": "x", "id": "x"})).json()
        assert team["cache_ttl_s"] is None
        patched = await admin.patch("/admin/teams/x", json={"cache_ttl_s": 90})
        assert patched.json()["cache_ttl_s"] == 90
        listed = (await admin.get("/admin/teams")).json()["data"]
        assert [t["cache_ttl_s"] for t in listed if t["id"] == "x"] == [90]
