"""Three gateway replicas on any REDIS_URL, and real traffic against them from threads.

``gateways`` starts the replicas in parallel (each start is mostly Python imports) and stops
them at the end.  ``Traffic`` keeps requests flowing round-robin over the replicas and tokens
from a few threads until stopped, recording every answer, so a test can fail a store over
mid-traffic and then count what the clients saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from devkit.procs import eventually
from tests.harness import GatewayProcess

ADMIN = "admin-secret"
STATIC = "static-token"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def fleet_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "P_KEY": "k",
        "ADMIN_TOKENS": ADMIN,
        "AUTH_TOKENS": STATIC,
        "ON_STORE_FAILURE": "open",
        "LOG_LEVEL": "warning",
        **extra,
    }


@contextlib.contextmanager
def gateways(
    config: Path, env: Mapping[str, str], count: int = 3
) -> Iterator[list[GatewayProcess]]:
    replicas = [GatewayProcess(config, env) for _ in range(count)]
    try:
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda r: r.start(), replicas))
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


def admin(replica: GatewayProcess) -> httpx.Client:
    return httpx.Client(
        base_url=replica.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    )


def create_token(replica: GatewayProcess, **limits: object) -> tuple[str, str]:
    """(id, raw token) of a new managed token, created through ``replica``'s admin API."""
    with admin(replica) as client:
        response = client.post("/admin/tokens", json={"name": "t", **limits})
    assert response.status_code == 201, response.text
    body = response.json()
    return body["id"], body["token"]


def chat(url: str, token: str, client: httpx.Client | None = None, **body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    payload = {**CHAT, **body}
    if client is None:
        return httpx.post(f"{url}/v1/chat/completions", json=payload, headers=headers, timeout=30)
    return client.post(f"{url}/v1/chat/completions", json=payload, headers=headers)


def burst(replicas: Sequence[GatewayProcess], token: str, n: int) -> list[int]:
    """Statuses of ``n`` concurrent requests spread round-robin over the replicas."""
    urls = itertools.cycle([r.url for r in replicas])
    headers = {"Authorization": f"Bearer {token}"}

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as c:
            responses = await asyncio.gather(
                *(
                    c.post(f"{next(urls)}/v1/chat/completions", json=CHAT, headers=headers)
                    for _ in range(n)
                )
            )
        return [r.status_code for r in responses]

    return asyncio.run(run())


def all_ready(replicas: Sequence[GatewayProcess]) -> bool:
    try:
        return all(httpx.get(f"{r.url}/ready", timeout=2).status_code == 200 for r in replicas)
    except httpx.HTTPError:
        return False


@dataclass(frozen=True)
class Answer:
    at: float  # monotonic
    replica: int
    token: str  # the label the test gave the token
    status: int  # 0: no HTTP answer (connection error, timeout)
    detail: str  # body start of a non-200


class Traffic:
    """``threads`` clients, each sending requests one after another, round-robin over the
    replicas and the tokens, until ``stop``."""

    def __init__(
        self,
        replicas: Sequence[GatewayProcess],
        tokens: Mapping[str, str],
        threads: int = 4,
    ) -> None:
        self._urls = [r.url for r in replicas]
        self._tokens = list(tokens.items())
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(threads)
        ]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.answers: list[Answer] = []

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _client(self, index: int) -> None:
        pairs = itertools.cycle(
            [(r, t) for r in range(len(self._urls)) for t in range(len(self._tokens))]
        )
        for _ in range(index * 7):  # threads start at different places in the cycle
            next(pairs)
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                replica, token_index = next(pairs)
                label, token = self._tokens[token_index]
                try:
                    response = chat(self._urls[replica], token, client)
                    status, detail = (
                        response.status_code,
                        ("" if response.status_code == 200 else response.text[:300]),
                    )
                except httpx.HTTPError as exc:
                    status, detail = 0, repr(exc)
                with self._lock:
                    self.answers.append(Answer(time.monotonic(), replica, label, status, detail))

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def wait_for(self, more: int, timeout: float = 30.0) -> None:
        """Until ``more`` answers beyond the current count have arrived."""
        target = self.count() + more
        eventually(lambda: self.count() >= target, f"{more} more answers", timeout)

    def statuses(self) -> Counter[int]:
        with self._lock:
            return Counter(a.status for a in self.answers)

    def failures(self) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.status != 200]
