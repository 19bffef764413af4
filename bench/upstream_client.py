"""CPU per upstream request of the gateway's HTTP client against aiohttp's, on one core.

``uv run python -m bench.upstream_client [--requests N] [--concurrency C]``: starts the
benchmark's nginx upstream, then POSTs a chat body to it N times with C in flight, through
``service.upstream.client.UpstreamClient`` and through a tuned ``aiohttp.ClientSession``
(one pooled session, no auto headers, no proxy lookups), alternating, and prints the process
CPU microseconds per request of each (the median of the rounds).  The client runs pinned to
the benchmark's core under test, nginx to the other.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop

from bench.loadgen import request_body
from bench.procs import SUT_CORE, free_port, pin_self
from bench.upstream import start_nginx
from service.upstream.client import UpstreamClient

HEADERS = {"Authorization": "Bearer bench-json-key", "Content-Type": "application/json"}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _drive(one: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> float:
    """CPU microseconds per request of ``requests`` calls of ``one``, ``concurrency`` at once."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    await asyncio.gather(*(worker(50) for _ in range(concurrency)))  # warm the pools
    started = _cpu_s()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    return (_cpu_s() - started) / (requests // concurrency * concurrency) * 1e6


async def _measure(url: str, requests: int, concurrency: int, rounds: int) -> dict[str, float]:
    body = request_body("json").encode()
    ours = UpstreamClient()
    await ours.start()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        skip_auto_headers=("User-Agent",),
        trust_env=False,
    )
    timeout = aiohttp.ClientTimeout(total=30, connect=10, sock_connect=10)

    async def with_ours() -> None:
        answer = await ours.post(url, HEADERS, body, 30)
        assert answer.status == 200, answer.status

    async def with_aiohttp() -> None:
        async with session.request("POST", url, data=body, headers=HEADERS, timeout=timeout) as r:
            assert r.status == 200, r.status
            await r.read()

    figures: dict[str, list[float]] = {"UpstreamClient": [], "aiohttp": []}
    try:
        for _ in range(rounds):
            figures["UpstreamClient"].append(await _drive(with_ours, requests, concurrency))
            figures["aiohttp"].append(await _drive(with_aiohttp, requests, concurrency))
    finally:
        await ours.close()
        await session.close()
    return {name: statistics.median(values) for name, values in figures.items()}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream_client", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-client-"))
    port = free_port()
    nginx = start_nginx(work, port)
    try:
        time.sleep(0.2)
        pin_self(SUT_CORE)
        url = f"http://127.0.0.1:{port}/json/v1/chat/completions"
        figures = uvloop.run(_measure(url, args.requests, args.concurrency, args.rounds))
    finally:
        nginx.stop()
    for name, us in figures.items():
        print(f"{name:15s} {us:6.1f} us of CPU per request")
    print(f"aiohttp / UpstreamClient: {figures['aiohttp'] / figures['UpstreamClient']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
