"""Prices, budgets and the usage ledger on one replica: durable across restarts on both
stores, hot-reloaded prices, `best usage`, and OpenAI-shaped 400s for bad queries."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fakes.openai_payloads import chat_usage
from tests.fakes.upstream import FakeProvider
from tests.harness import GatewayProcess, free_port, run_cli, write_config
from tests.tools import require_tool

pytestmark = pytest.mark.slow  # the gateway runs as a process

ADMIN = "admin-secret"
PICO = 10**12
# USD per million tokens: exact pico-USD per token (2.5e6 and 7.75e6).
PRICES = {"models": {"m": {"input": 2.5, "output": 7.75}}}


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    with FakeProvider(["m", "free-model"], api_key="k") as fake:
        yield fake


@pytest.fixture(scope="module")
def priced_config(provider: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = write_config(
        tmp_path_factory.mktemp("priced"),
        [
            {
                "name": "p",
                "api_key_env_var": "P_KEY",
                "base_url": provider.base_url,
                "base_priority": 1,
                "models": ["m", "free-model"],
            }
        ],
    )
    (directory / "prices.yaml").write_text(yaml.safe_dump(PRICES))
    return directory


def _chat(content: str, model: str = "m") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


def _cost(body: dict[str, Any], price_in: int = 2_500_000, price_out: int = 7_750_000) -> int:
    usage = chat_usage(body)
    return usage["prompt_tokens"] * price_in + usage["completion_tokens"] * price_out


def _admin(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)


def _spend_and_ledger(url: str, token_id: str) -> tuple[float, dict[str, Any]]:
    with _admin(url) as admin:
        token = next(t for t in admin.get("/admin/tokens").json()["data"] if t["id"] == token_id)
        rows = admin.get("/admin/usage", params={"group_by": "token"}).json()["data"]
    return token["usage"]["budget_spent_usd"], next(r for r in rows if r["token"] == token_id)


def _use(url: str, raw: str, bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {raw}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert "x-best-budget-remaining-usd" in response.headers


def _restart_check(first: GatewayProcess, second: GatewayProcess) -> None:
    bodies = [_chat("durable spend " + "x " * i) for i in range(4)] + [_chat("free", "free-model")]
    with first, _admin(first.url) as admin:
        created = admin.post(
            "/admin/tokens", json={"name": "d", "budget_usd": 2.0, "budget_period": "total"}
        ).json()
        _use(first.url, created["token"], bodies)
        before = _spend_and_ledger(first.url, created["id"])
        # A clean stop (uvicorn re-raises the SIGTERM once drained) writes what is pending.
        assert first.terminate() in (0, -signal.SIGTERM)
    expected = sum(_cost(b) for b in bodies[:4])
    assert round(before[1]["cost_usd"] * PICO) == expected
    assert before[1]["requests"] == 5 and before[1]["unpriced_requests"] == 1
    assert round(before[0] * 10**6) == sum(-(-_cost(b) // 10**6) for b in bodies[:4])
    with second:
        assert _spend_and_ledger(second.url, created["id"]) == before
        # The budget still counts what was spent before the restart.
        remaining = httpx.post(
            f"{second.url}/v1/chat/completions",
            json=_chat("after"),
            headers={"Authorization": f"Bearer {created['token']}"},
        ).headers["x-best-budget-remaining-usd"]
        assert float(remaining) < 2.0 - before[0]


def test_ledger_and_spend_survive_a_restart_with_the_embedded_store(
    priced_config: Path, tmp_path: Path
) -> None:
    env = {"P_KEY": "k", "ADMIN_TOKENS": ADMIN, "DATA_DIR": str(tmp_path / "data")}
    _restart_check(GatewayProcess(priced_config, env), GatewayProcess(priced_config, env))
    assert (tmp_path / "data" / "ledger.json").exists()


class PersistentRedis:
    """redis-server with an append-only file fsynced on every write, restartable in place."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="best-aof-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = require_tool("redis-server")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir]
        args += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


@pytest.fixture
def persistent_redis() -> Iterator[PersistentRedis]:
    server = PersistentRedis()
    server.start()
    yield server
    server.kill()
    shutil.rmtree(server.dir, ignore_errors=True)


def test_ledger_and_spend_survive_a_restart_of_redis_with_persistence(
    priced_config: Path, persistent_redis: PersistentRedis
) -> None:
    env = {"P_KEY": "k", "ADMIN_TOKENS": ADMIN, "REDIS_URL": persistent_redis.url}
    first = GatewayProcess(priced_config, env)
    second = GatewayProcess(priced_config, env)
    original_start = second.start

    def start_after_redis_restart(wait_ready: bool = True, timeout: float = 20.0) -> Any:
        persistent_redis.kill()
        persistent_redis.start()
        return original_start(wait_ready, timeout)

    second.start = start_after_redis_restart  # type: ignore[method-assign]
    _restart_check(first, second)


@pytest.fixture(scope="module")
def gateway(priced_config: Path) -> Iterator[GatewayProcess]:
    with GatewayProcess(priced_config, {"P_KEY": "k", "ADMIN_TOKENS": ADMIN}) as process:
        yield process


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"group_by": "colour"}, "group_by"),
        ({"from": "2026-13-01"}, "from"),
        ({"to": "yesterday"}, "to"),
    ],
)
def test_bad_usage_queries_are_openai_400s(
    gateway: GatewayProcess, query: dict[str, str], param: str
) -> None:
    with _admin(gateway.url) as admin:
        response = admin.get("/admin/usage", params=query)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_prices_reload_without_a_restart(gateway: GatewayProcess, priced_config: Path) -> None:
    with _admin(gateway.url) as admin:
        created = admin.post("/admin/tokens", json={"name": "reload"}).json()
    body = _chat("one two three")

    def ledger_pico() -> int:
        with _admin(gateway.url) as admin:
            rows = admin.get("/admin/usage", params={"group_by": "token"}).json()["data"]
        row = next((r for r in rows if r["token"] == created["id"]), None)
        return round(row["cost_usd"] * PICO) if row else 0

    def one_request_costs() -> int:
        before = ledger_pico()
        _use_plain(gateway.url, created["token"], body)
        return ledger_pico() - before

    assert one_request_costs() == _cost(body)
    (priced_config / "prices.yaml").write_text(
        yaml.safe_dump({"models": {"m": {"input": 1.0, "output": 1.0}}})
    )
    try:
        deadline = time.monotonic() + 30
        while one_request_costs() != _cost(body, 1_000_000, 1_000_000):
            assert time.monotonic() < deadline, "prices.yaml was not reloaded within 30 s"
            time.sleep(0.5)
    finally:
        (priced_config / "prices.yaml").write_text(yaml.safe_dump(PRICES))
    # And back: the next tests see the module's prices.
    while one_request_costs() != _cost(body):
        assert time.monotonic() < deadline + 30, "prices.yaml was not reloaded within 30 s"
        time.sleep(0.5)


def _use_plain(url: str, raw: str, body: dict[str, Any]) -> None:
    response = httpx.post(
        f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {raw}"}
    )
    assert response.status_code == 200, response.text


def test_best_usage_prints_a_table_and_json(gateway: GatewayProcess) -> None:
    with _admin(gateway.url) as admin:
        admin.post("/admin/teams", json={"name": "CLI", "id": "cli-usage"})
        created = admin.post("/admin/tokens", json={"name": "u", "team": "cli-usage"}).json()
    _use_plain(gateway.url, created["token"], _chat("table please"))
    _use_plain(gateway.url, created["token"], _chat("no price", "free-model"))

    def usage(*args: str) -> str:
        return run_cli(gateway.url, ADMIN, "usage", *args)

    document = json.loads(usage("--group-by", "team", "--json"))
    row = next(r for r in document["data"] if r["team"] == "cli-usage")
    assert row["requests"] == 2 and row["unpriced_requests"] == 1
    assert round(row["cost_usd"] * PICO) == _cost(_chat("table please"))
    table = usage("--group-by", "model")
    header, *lines = table.splitlines()
    assert header.split() == [
        "model",
        "requests",
        "prompt",
        "completion",
        "cost_usd",
        "unpriced",
        "cached",
    ]
    assert any(line.split()[0] == "free-model" for line in lines)
    assert lines[-1].split()[0] == "total"
