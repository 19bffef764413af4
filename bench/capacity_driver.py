"""Drive Redis to saturation through the gateway's own store client; print what it cost.

Run by bench/capacity.py with the interpreter of the checkout under test and that checkout on
``sys.path``, so ``service`` is its store client (``RedisBackend``: the script batcher and
lua/quota.lua).  Each simulated replica is one ``RedisBackend`` (one connection, one batcher)
with ``--concurrency`` admissions in flight; a finished request's settlement waits for the
next admission of its token on that replica, or travels alone when its wait is over, as
service/quotas/admission.py does (the checkout's own wait for requests far from their
limits, or with ``--alone`` the short one for requests near a limit).  Tokens have the
benchmark gateway's limits (rpm, tpm and concurrency, all far from binding), so every
admission runs the whole script.

Prints one JSON object: admissions, seconds, errors, Redis CPU seconds (INFO cpu, summed
over the nodes), script calls, windows reads and µs inside script calls (INFO commandstats).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
from collections import deque
from typing import Any

LIMITS = (1_000_000_000, 1_000_000_000, 100_000)  # rpm, tpm, max_concurrency
COST = 43  # tokens reserved per request, 19 used: every settlement corrects its bucket


def _counters(clients: list[Any]) -> tuple[float, int, int, int]:
    cpu = calls = reads = script_us = 0.0
    for client in clients:
        info = client.info("all")
        cpu += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        calls += int(info.get("cmdstat_evalsha", {}).get("calls", 0))
        script_us += int(info.get("cmdstat_evalsha", {}).get("usec", 0))
        reads += int(info.get("cmdstat_hmget", {}).get("calls", 0))
    return cpu, int(calls), int(reads), int(script_us)


async def _drive(args: argparse.Namespace) -> dict[str, Any]:
    import redis

    from service.quotas import admission
    from service.store.backend import AdmitRequest, Charge, RateLimits, Settlement, Status
    from service.store.connection import parse_redis_url
    from service.store.keys import Keys, QuotaKeys
    from service.store.redis_backend import RedisBackend

    nodes = args.nodes.split(",")
    url = f"redis://{nodes[0]}/0" if args.kind == "standalone" else f"redis+cluster://{args.nodes}"
    keys = Keys("best")
    owners = [keys.quota(f"capacity-{t:05d}", None) for t in range(args.tokens)]
    clients = [redis.Redis.from_url(f"redis://{node}/0") for node in nodes]
    state = {"admitted": 0, "errors": 0, "running": True}
    # A checkout before quotas/settlement.py kept these in quotas/admission.py.
    try:
        waits: Any = importlib.import_module("service.quotas.settlement")
    except ImportError:
        waits = admission
    patient = getattr(waits, "SETTLE_PATIENT_S", waits.SETTLE_DELAY_S)
    wait = waits.SETTLE_DELAY_S if args.alone else patient

    async def replica(index: int) -> None:
        backend = RedisBackend(parse_redis_url(url), keys)
        await backend.ping()
        waiting: dict[str, tuple[QuotaKeys, list[Settlement], float]] = {}
        queued: deque[tuple[float, str]] = deque()  # (since, token) in the order they wait
        loop = asyncio.get_running_loop()

        alone: set[asyncio.Future[Any]] = set()

        async def send_alone() -> None:
            while state["running"]:
                await asyncio.sleep(0.005)
                due = loop.time() - wait
                while queued and queued[0][0] <= due:
                    since, key = queued.popleft()
                    held = waiting.get(key)
                    if held is None or held[2] != since:
                        continue  # they rode with an admission meanwhile
                    del waiting[key]
                    task = asyncio.ensure_future(backend.quota(held[0], held[1], None))
                    alone.add(task)
                    task.add_done_callback(alone.discard)

        async def requests(worker: int) -> None:
            n = 0
            while state["running"]:
                q = owners[(worker * 7919 + n * args.concurrency + index) % len(owners)]
                n += 1
                entry = f"{index}-{worker}-{n}"
                ride = waiting.pop(q.token_windows, None)
                try:
                    decision = await backend.quota(
                        q,
                        ride[1] if ride else [],
                        AdmitRequest(entry, COST, 10_000, RateLimits(*LIMITS)),
                    )
                except Exception:
                    state["errors"] += 1
                    continue
                if decision.status != Status.ADMITTED:
                    state["errors"] += 1
                    continue
                state["admitted"] += 1
                await asyncio.sleep(args.pause)  # the request is served
                done = Settlement(entry, decision.now_ms // 1000, COST, 19, Charge.NOTHING)
                held = waiting.get(q.token_windows)
                if held is None:
                    since = loop.time()
                    waiting[q.token_windows] = (q, [done], since)
                    queued.append((since, q.token_windows))
                else:
                    held[1].append(done)

        sender = asyncio.ensure_future(send_alone())
        await asyncio.gather(*(requests(w) for w in range(args.concurrency)))
        sender.cancel()
        await backend.close()

    tasks = [asyncio.ensure_future(replica(i)) for i in range(args.replicas)]
    await asyncio.sleep(args.warmup)
    cpu0, calls0, reads0, script0 = _counters(clients)
    admitted0, start = state["admitted"], time.monotonic()
    await asyncio.sleep(args.seconds)
    cpu1, calls1, reads1, script1 = _counters(clients)
    admitted1, seconds = state["admitted"], time.monotonic() - start
    state["running"] = False
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        client.close()
    return {
        "admissions": admitted1 - admitted0,
        "seconds": round(seconds, 3),
        "errors": state["errors"],
        "cpu_s": round(cpu1 - cpu0, 4),
        "script_calls": calls1 - calls0,
        "windows_reads": reads1 - reads0,
        "script_us": script1 - script0,  # time inside EVALSHA (INFO commandstats)
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True, help="the checkout whose store client runs")
    parser.add_argument("--nodes", required=True, help="host:port[,host:port...]")
    parser.add_argument("--kind", choices=("standalone", "cluster"), default="standalone")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--alone", action="store_true", help="the short wait: every settlement travels alone"
    )
    parser.add_argument(
        "--pause", type=float, default=0.0, help="seconds each request is served for (0: none)"
    )
    args = parser.parse_args()
    sys.path.insert(0, args.root)
    print(json.dumps(asyncio.run(_drive(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
