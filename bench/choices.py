"""CPU per request of the hot path's small choices, each measured in a loop on uvloop:
``uv run python -m bench.choices``.

Each row times what a request would do one way and the other (the least of ``REPEATS`` runs of
``N`` calls, ``time.process_time``), so that the performance page can give every choice its
figure.  These are floors with warm caches; the gateway's own A/B under load is
``python -m bench`` against another checkout (``--baseline-root``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Histogram
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE

from service.protocol import HEADER_NAME_BYTES, HEADER_VALUE_BYTES

N = 50_000
REPEATS = 5
BODY: dict[str, Any] = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "Say hello in four words."}],
    "max_tokens": 16,
}
# A coding agent's turn: a long system prompt, tool definitions and history (about 60 KB).
AGENT_BODY: dict[str, Any] = {
    "model": "bench-model",
    "messages": [{"role": "system", "content": "You are a coding agent. " * 400}]
    + [
        {"role": "user" if i % 2 else "assistant", "content": f"Step {i}: " + "x = f(y)\n" * 300}
        for i in range(16)
    ],
    "tools": [
        {"type": "function", "function": {"name": f"tool_{i}", "parameters": {"type": "object"}}}
        for i in range(20)
    ],
}
# A Claude Code turn: 120 messages of content blocks (tool calls and their results), about
# 50 KB and a few thousand JSON containers.
CODING_TURN: dict[str, Any] = {
    "model": "bench-model",
    "max_tokens": 4096,
    "messages": [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Reading the file."},
                {"type": "tool_use", "id": f"toolu_{i}", "name": "Read", "input": {"path": "a.py"}},
            ],
        }
        if i % 2
        else {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": f"toolu_{i - 1}", "content": "x = 1\n" * 40}
            ],
        }
        for i in range(120)
    ],
}
# A Messages answer's headers (each name and value as the gateway sends them).
MESSAGES_HEADERS = [
    (b"content-type", b"application/json"),
    (b"x-best-provider", b"json"),
    (b"x-best-model", b"bench-model"),
    *(
        (b"x-ratelimit-%s-%s" % (what, kind), value)
        for kind in (b"requests", b"tokens")
        for what, value in ((b"limit", b"1000000000"), (b"remaining", b"999999997"))
    ),
    (b"x-ratelimit-reset-requests", b"60s"),
    (b"x-ratelimit-reset-tokens", b"60s"),
    *(
        (b"anthropic-ratelimit-%s-%s" % (kind, what), value)
        for kind in (b"requests", b"tokens")
        for what, value in (
            (b"limit", b"1000000000"),
            (b"remaining", b"999999997"),
            (b"reset", b"2026-12-08T02:22:22Z"),
        )
    ),
    (b"x-request-id", b"f4f9c6e92bb8-6"),
    (b"request-id", b"f4f9c6e92bb8-6"),
]
HEADERS = {"Authorization": "Bearer sk-bench-key", "Content-Type": "application/json"}


def _best(run: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = time.process_time()
        run()
        best = min(best, (time.process_time() - started) / N)
    return best * 1e6


async def _best_async(step: Callable[[], Awaitable[None]]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = time.process_time()
        for _ in range(N):
            await step()
        best = min(best, (time.process_time() - started) / N)
    return best * 1e6


def _walked_depth(document: Any) -> int:
    """A body's nesting depth, walked in Python (the check ``parse_json`` made before)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _loop(rows: list[tuple[str, float]], name: str, fn: Callable[[], object]) -> None:
    def run() -> None:
        for _ in range(N):
            fn()

    rows.append((name, _best(run)))


async def _timers(rows: list[tuple[str, float]]) -> None:
    loop = asyncio.get_running_loop()

    async def answer() -> int:
        return 1

    async def bare() -> None:
        await answer()

    async def armed() -> None:
        async with asyncio.timeout(30):
            await answer()

    async def unarmed() -> None:
        async with asyncio.timeout(None):
            await answer()

    async def handle() -> None:
        timer = loop.call_later(30, lambda: None)
        try:
            await answer()
        finally:
            timer.cancel()

    async def nothing() -> None:
        async with contextlib.nullcontext():
            await answer()

    async def watcher_task() -> None:
        waiting: asyncio.Future[None] = loop.create_future()

        async def watch() -> None:
            await waiting

        task = asyncio.ensure_future(watch())
        await asyncio.sleep(0)  # the task starts waiting, as a request's watcher does
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    for name, step in (
        ("a request awaited bare", bare),
        ("... inside an armed asyncio.timeout", armed),
        ("... inside an unarmed asyncio.timeout(None)", unarmed),
        ("... with a timer handle armed and cancelled", handle),
        ("... inside contextlib.nullcontext", nothing),
        ("a task per request waiting for the client to leave, started and cancelled", watcher_task),
    ):
        rows.append((name, await _best_async(step)))


def main() -> int:
    rows: list[tuple[str, float]] = []
    try:
        import uvloop

        uvloop.run(_timers(rows))
    except ImportError:
        asyncio.run(_timers(rows))

    registry = CollectorRegistry()
    histogram = Histogram("bench_seconds", "a histogram", ["route", "provider"], registry=registry)
    child = histogram.labels("chat", "json")
    _loop(
        rows,
        "a labelled histogram observed, child looked up by labels",
        lambda: histogram.labels("chat", "json").observe(0.01),
    )
    _loop(rows, "... child resolved once", lambda: child.observe(0.01))

    encoded = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items()).encode()
    blocks = {id(HEADERS): encoded}
    _loop(
        rows,
        "an upstream header block encoded per request",
        lambda: "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items()).encode(),
    )
    _loop(rows, "... looked up once encoded", lambda: blocks[id(HEADERS)])

    for label, body in (("the benchmark's body", BODY), ("a 60 KB agent body", AGENT_BODY)):
        raw = orjson.dumps(body)
        _loop(
            rows,
            f"{label} ({len(raw):,} B) re-serialised with the model replaced",
            lambda b=body: orjson.dumps({**b, "model": "m"}),
        )
        _loop(rows, "... sent as the client's bytes", lambda r=raw: r)

    names = b"".join(name for name, _ in MESSAGES_HEADERS)
    values = b"\t".join(value for _, value in MESSAGES_HEADERS)
    _loop(
        rows,
        f"a Messages answer's {len(MESSAGES_HEADERS)} headers checked by uvicorn's regexes",
        lambda: HEADER_RE.search(names) or HEADER_VALUE_RE.search(values),
    )
    _loop(
        rows,
        "... by bytes.translate with the bytes they allow",
        lambda: (
            names.translate(None, HEADER_NAME_BYTES) or values.translate(None, HEADER_VALUE_BYTES)
        ),
    )

    turn = orjson.dumps(CODING_TURN)
    containers = turn.count(b"[") + turn.count(b"{")
    _loop(
        rows,
        f"a coding agent's turn ({len(turn):,} B, {containers:,} containers) checked for "
        "depth: walked in Python",
        lambda: _walked_depth(CODING_TURN),
    )
    _loop(
        rows,
        "... written by orjson (which refuses over 254 levels)",
        lambda: orjson.dumps(CODING_TURN),
    )

    width = max(len(name) for name, _ in rows)
    print(f"CPU us per call, least of {REPEATS} runs of {N:,} (time.process_time)")
    for name, us in rows:
        print(f"  {name:<{width}}  {us:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
