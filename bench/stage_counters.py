"""Per-stage counters: CPU per call of each stage of a proxied request, in one process.

Run by ``python -m bench.breakdown`` as a script with the interpreter of the measured
checkout and that checkout first on ``PYTHONPATH``, so it imports that checkout's ``service``
and nothing of this one's ``bench`` (an older checkout has a ``bench`` of its own)::

    <root>/.venv/bin/python bench/stage_counters.py CONFIG_DIR DATA_DIR UPSTREAM_URL \
        [--redis-url URL]

It prints one JSON document: ``{"store": ..., "counters": [{stage, what, us, error}]}``.  A
stage whose code this checkout does not have (renamed since) reports its error instead of a
figure; the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

TOKEN = "bench-breakdown-token"
LIMIT = 1_000_000_000
REPEATS = 5
IN_FLIGHT = 32  # admissions held at once: the load's connections
TARGET_S = 0.1  # CPU seconds per repeat, about
BODY = (
    b'{"model":"bench-model","messages":[{"role":"user","content":"Say hello in four words."}],'
    b'"max_tokens":16}'
)
ANSWER = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    b'"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello from the bench upstream."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}'
)

# Runs a stage about n times; returns how many times, and the CPU seconds of those calls
# (setup a stage needs, such as the admissions a settlement settles, left out).
Step = Callable[[int], Awaitable[tuple[int, float]]]


async def per_call_us(step: Step) -> float:
    """CPU microseconds per call: the least of ``REPEATS`` repeats of about ``TARGET_S``."""
    await step(50)  # warm: first calls fill caches and resolve metric children
    n = 100
    while True:
        done, spent = await step(n)
        if spent >= TARGET_S / 4 or n >= 10_000_000:
            break
        n *= 4
    n = max(1, int(done * TARGET_S / max(spent, 1e-6)))
    best = float("inf")
    for _ in range(REPEATS):
        done, spent = await step(n)
        best = min(best, spent / done)
    return best * 1e6


def _scope(path: str = "/v1/chat/completions") -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "headers": [
            (b"host", b"gateway"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {TOKEN}".encode()),
            (b"content-length", str(len(BODY)).encode()),
        ],
    }


async def _no_message() -> dict[str, Any]:
    return {"type": "http.request", "body": BODY, "more_body": False}


async def measure(config_dir: str, data_dir: str, upstream_url: str, redis_url: str | None) -> Any:
    from service.api import calls, chat
    from service.api.auth import require_token
    from service.api.http import Request, parse_json
    from service.apis import Api
    from service.app import App
    from service.gateway import Gateway
    from service.quotas.limits import estimate
    from service.routing.exchange import ForwardExchange
    from service.routing.router import Completion
    from service.settings import Settings
    from service.upstream.client import UpstreamResponse
    from service.upstream.usage import Usage

    values: dict[str, Any] = {
        "config_dir": config_dir,
        "data_dir": data_dir,
        "auth_tokens": (TOKEN,),
        "default_rpm": LIMIT,
        "default_tpm": LIMIT,
        "default_max_concurrency": 100_000,
        "env": dict(os.environ),  # the providers' keys
    }
    if redis_url:
        values["redis_url"] = redis_url
    gateway = Gateway.build(Settings.model_validate(values))
    app = App(gateway)
    await gateway.start()
    counters: list[dict[str, Any]] = []

    async def count(stage: str, what: str, make: Callable[[], Awaitable[Step]]) -> None:
        try:
            us: float | None = await per_call_us(await make())
            error = None
        except Exception as exc:  # a checkout without this stage's code: say so, go on
            us, error = None, f"{type(exc).__name__}: {exc}"[:160]
        counters.append({"stage": stage, "what": what, "us": us, "error": error})

    try:
        request = Request(_scope(), _no_message)
        record = await require_token(gateway, request)
        body = parse_json(BODY)
        need = estimate(body, len(BODY))
        model = chat.validate_chat(body)[0]
        candidates = gateway.router.candidates(model)
        candidate = candidates[0]

        async def make_auth() -> Step:
            async def step(n: int) -> tuple[int, float]:
                started = time.process_time()
                for _ in range(n):
                    await require_token(gateway, Request(_scope(), _no_message))
                return n, time.process_time() - started

            return step

        async def make_body() -> Step:
            async def step(n: int) -> tuple[int, float]:
                started = time.process_time()
                for _ in range(n):
                    parsed = parse_json(BODY)
                    chat.validate_chat(parsed)
                    estimate(parsed, len(BODY))
                return n, time.process_time() - started

            return step

        async def make_routing() -> Step:
            async def step(n: int) -> tuple[int, float]:
                started = time.process_time()
                for i in range(n):
                    gateway.router.candidates(model)
                    gateway.router.new_call(str(i), model, None)
                return n, time.process_time() - started

            return step

        usage = Usage(candidate.provider, candidate.model, 12, 7)
        pairs = candidates

        def make_quota(part: str) -> Callable[[], Awaitable[Step]]:
            """Admissions with ``IN_FLIGHT`` held at once, as under load, each settled
            when it leaves that window; the settlements ride the next admissions' store
            calls, as in the gateway.  ``part``: which calls' CPU the step returns."""

            async def make() -> Step:
                async def step(n: int) -> tuple[int, float]:
                    window: deque[Any] = deque()
                    spent = {"admit": 0.0, "settle": 0.0}
                    for i in range(n):
                        started = time.process_time()
                        window.append(await gateway.quotas.admit(record, f"e{i}", need, pairs))
                        spent["admit"] += time.process_time() - started
                        if len(window) >= IN_FLIGHT:
                            started = time.process_time()
                            gateway.quotas.settle(window.popleft(), usage)
                            spent["settle"] += time.process_time() - started
                    started = time.process_time()
                    while window:
                        gateway.quotas.settle(window.popleft(), usage)
                    await gateway.quotas.flush()  # what is left rides alone
                    spent["settle"] += time.process_time() - started
                    return n, spent[part]

                return step

            return make

        async def make_exchange() -> Step:
            async def step(n: int) -> tuple[int, float]:
                started = time.process_time()
                for _ in range(n):
                    ForwardExchange(Api.CHAT, body, raw=BODY).request(candidate)
                return n, time.process_time() - started

            return step

        answered = UpstreamResponse(200, ANSWER, b"application/json", None)

        async def make_relay() -> Step:
            exchange = ForwardExchange(Api.CHAT, body, raw=BODY)
            call = gateway.router.new_call("relay", model, None)
            call.candidate = candidate

            async def step(n: int) -> tuple[int, float]:
                started = time.process_time()
                for _ in range(n):
                    usable = exchange.answer(candidate, answered)
                    completion = Completion(usable.status, usable.body, b"application/json")
                    calls.relayed(completion, call)
                return n, time.process_time() - started

            return step

        async def make_metrics() -> Step:
            route = Api.CHAT
            call = gateway.router.new_call("metrics", model, None)
            call.candidate = candidate
            response = calls.relayed(Completion(200, ANSWER, b"application/json"), call)
            gauge = app._in_flight[route]
            series = gateway.router._series_of(route, candidate)

            async def step(n: int) -> tuple[int, float]:
                started = time.process_time()
                for _ in range(n):
                    began = time.perf_counter()
                    gauge.inc()
                    series.duration_ok.observe(0.001, None)
                    series.tokens_in.observe(12)
                    series.tokens_out.observe(7)
                    app._observe(route, response, began, None)
                    gauge.dec()
                return n, time.process_time() - started

            return step

        async def make_upstream() -> Step:
            client = gateway.client
            headers = dict(candidate.headers)

            async def one(count: int) -> None:
                for _ in range(count):
                    answer = await client.post(upstream_url, headers, BODY, 30)
                    if answer.status != 200:
                        raise RuntimeError(f"upstream answered {answer.status}")

            async def step(n: int) -> tuple[int, float]:
                started = time.process_time()
                # 32 in flight, as at c=32; the loop's work for these sockets is counted.
                each = max(1, n // 32)
                await asyncio.gather(*(one(each) for _ in range(32)))
                return each * 32, time.process_time() - started

            return step

        await count("auth", "`require_token` of a static token", make_auth)
        await count(
            "body parse and validation",
            "`parse_json`, `validate_chat` and `estimate` of the bench body",
            make_body,
        )
        await count("routing", "`router.candidates` and `router.new_call`", make_routing)
        await count(
            "admission",
            "`quotas.admit` of a token with limits, 32 held at once (its store call, "
            "with the settlements riding it, included)",
            make_quota("admit"),
        )
        await count(
            "upstream request building",
            "`ForwardExchange(...).request(candidate)`: URL, headers and body",
            make_exchange,
        )
        await count(
            "upstream client",
            "`client.post` to the nginx upstream and its answer read, 32 in flight "
            "(per request; the loop's work for the socket included)",
            make_upstream,
        )
        await count(
            "relay",
            "`exchange.answer` (parse and check), the `Completion` and its `Response`",
            make_relay,
        )
        await count(
            "settlement",
            "`quotas.settle` of that admission (a correction queued to ride the next store "
            "call; those left at the end flushed)",
            make_quota("settle"),
        )
        await count(
            "metrics",
            "in-flight gauge, the pair's duration and token histograms, the route's "
            "counter, duration and overhead",
            make_metrics,
        )
    finally:
        await gateway.close()
    return {"store": gateway.store.kind, "counters": counters}


def main() -> int:
    parser = argparse.ArgumentParser(prog="stage_counters.py")
    parser.add_argument("config_dir")
    parser.add_argument("data_dir")
    parser.add_argument("upstream_url")
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    run: Any
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    doc = run(measure(args.config_dir, args.data_dir, args.upstream_url, args.redis_url))
    json.dump(doc, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
