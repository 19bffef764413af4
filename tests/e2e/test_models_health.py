"""Operational endpoints end to end: /health, /ok, /ready, /metrics, /stats, model discovery,
and readiness when nothing is routable."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import (
    Fleet,
    ProviderSpec,
    assert_openai_error,
    chat_body,
    provider_key,
    start_fleet,
)
from tests.fakes.upstream import Behavior, RecordedRequest, chat_usage
from tests.harness import RedisServer

DISCOVERED = ["disc-chat", "disc-other"]
DISCOVERY_REQUESTS: list[RecordedRequest] = []


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    specs = [
        ProviderSpec("main", ["stat-a", "stat-b", "metric-m"], priority=2),
        ProviderSpec("spare", ["stat-b"]),
        ProviderSpec("disc", DISCOVERED, fixed_models=False),
    ]
    fleet = start_fleet(tmp_path_factory.mktemp("ops-config"), specs)
    # Discovery runs in the background: wait until the gateway lists what it found.
    with fleet.http() as http:
        deadline = time.monotonic() + 10
        while not set(DISCOVERED) <= {m["id"] for m in http.get("/v1/models").json()["data"]}:
            assert time.monotonic() < deadline, "discovery never finished"
            time.sleep(0.05)
    DISCOVERY_REQUESTS.extend(r for r in fleet["disc"].requests if r.path == "/v1/models")
    yield fleet
    fleet.stop()


@pytest.fixture(autouse=True)
def _reset(fleet: Fleet) -> None:
    fleet.reset()


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text, 0 when absent."""
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_ok_and_health_need_no_token(fleet: Fleet) -> None:
    with httpx.Client(base_url=fleet.url, timeout=5) as anonymous:
        ok = anonymous.get("/ok")
        health = anonymous.get("/health")
    assert ok.status_code == 200
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["store"] == "embedded"
    assert body["auth"] == "enabled"


def test_ready_counts_routable_models(fleet: Fleet) -> None:
    response = httpx.get(fleet.url + "/ready", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert body["routable_models"] >= 4  # main's three + spare's one, discovery aside


def test_discovered_models_are_listed_and_routable(fleet: Fleet) -> None:
    listed = {m.id for m in fleet.client().models.list()}
    assert set(DISCOVERED) <= listed
    # Discovery asked the provider's own /models with the provider's own key.
    assert DISCOVERY_REQUESTS
    assert DISCOVERY_REQUESTS[0].method == "GET"
    assert DISCOVERY_REQUESTS[0].headers["Authorization"] == f"Bearer {provider_key('disc')}"
    raw = fleet.client().chat.completions.with_raw_response.create(
        model="disc-chat", messages=[{"role": "user", "content": "found you"}]
    )
    assert raw.headers["x-best-provider"] == "disc"
    assert raw.parse().choices[0].message.content == "echo: found you"


def test_metrics_count_requests_and_gateway_overhead(fleet: Fleet) -> None:
    before = httpx.get(fleet.url + "/metrics", timeout=5).text
    labels = {"route": "chat", "status": "200", "model": "metric-m", "provider": "main"}
    start = sample(before, "best_requests_total", **labels)
    client = fleet.client()
    for _ in range(3):
        client.chat.completions.create(
            model="metric-m", messages=[{"role": "user", "content": "m"}]
        )
    response = httpx.get(fleet.url + "/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "best_requests_total" in text
    assert "best_gateway_overhead_seconds" in text
    assert sample(text, "best_requests_total", **labels) == start + 3
    assert sample(text, "best_gateway_overhead_seconds_count", route="chat") >= 3


def test_stats_shape_and_counts(fleet: Fleet) -> None:
    client = fleet.client()
    bodies = [chat_body("stat-a", text=f"count {'w ' * i}") for i in range(3)]
    with fleet.http() as http:
        for body in bodies:
            assert http.post("/v1/chat/completions", json=body).status_code == 200
    fleet["main"].queue(Behavior.server_error(500), model="stat-b")
    client.chat.completions.create(model="stat-b", messages=[{"role": "user", "content": "b"}])

    with fleet.http() as http:
        response = http.get("/stats")
    assert response.status_code == 200
    stats = response.json()
    assert set(stats["totals"]) >= {"requests", "failures", "prompt_tokens", "completion_tokens"}
    rows = {(r["provider"], r["model"]): r for r in stats["providers"]}
    for row in rows.values():
        assert set(row) >= {
            "provider",
            "model",
            "requests",
            "failures",
            "prompt_tokens",
            "completion_tokens",
            "latency_ms",
            "cooldown_remaining_s",
        }
        assert set(row["latency_ms"]) >= {"p50", "p95"}

    a = rows[("main", "stat-a")]
    assert a["requests"] == 3 and a["failures"] == 0
    assert a["prompt_tokens"] == sum(chat_usage(b)["prompt_tokens"] for b in bodies)
    assert a["completion_tokens"] == sum(chat_usage(b)["completion_tokens"] for b in bodies)
    assert a["latency_ms"]["p50"] is not None and a["latency_ms"]["p50"] > 0
    assert a["cooldown_remaining_s"] == 0

    failed = rows[("main", "stat-b")]
    assert failed["requests"] == 1 and failed["failures"] == 1
    assert failed["cooldown_remaining_s"] == 0  # one 5xx is no evidence: nothing cools
    assert rows[("spare", "stat-b")]["requests"] == 1

    totals = stats["totals"]
    assert totals["requests"] == sum(r["requests"] for r in rows.values())
    assert totals["failures"] == sum(r["failures"] for r in rows.values()) >= 1


def test_stats_and_models_need_a_token(fleet: Fleet) -> None:
    for path in ("/stats", "/v1/models"):
        response = httpx.get(fleet.url + path, timeout=5)
        assert_openai_error(response, 401)


def test_nothing_routable_is_not_ready_but_exact_ids_work(
    tmp_path: Path, fleet_guard: list[Fleet]
) -> None:
    """Only score <= 0 models: /ready is 503, priority-auto finds nothing, exact ids work."""
    specs = [ProviderSpec("embedder", ["text-embedding-x", "whisper-y"])]
    adjustments = {"not_chat": {"priority": -1000, "regex": ["embedding", "whisper"]}}
    fleet = start_fleet(tmp_path, specs, adjustments=adjustments, wait_ready=False)
    fleet_guard.append(fleet)

    ready = httpx.get(fleet.url + "/ready", timeout=5)
    assert ready.status_code == 503
    assert "no routable model" in ready.json()["problems"]

    with pytest.raises(openai.NotFoundError) as caught:
        fleet.client().chat.completions.create(
            model="priority-auto", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "model_not_found"
    assert fleet["embedder"].chat_requests == 0

    raw = fleet.client().chat.completions.with_raw_response.create(
        model="whisper-y", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-best-model"] == "whisper-y"
    embedding = fleet.client().embeddings.create(model="text-embedding-x", input="abc")
    assert len(embedding.data) == 1
    assert {m.id for m in fleet.client().models.list()} == {
        "priority-auto",
        "text-embedding-x",
        "whisper-y",
    }


def test_auth_disabled_is_reported(tmp_path: Path, fleet_guard: list[Fleet]) -> None:
    fleet = start_fleet(tmp_path, [ProviderSpec("open", ["free-chat"])], env={"AUTH_TOKENS": ""})
    fleet_guard.append(fleet)
    assert httpx.get(fleet.url + "/health", timeout=5).json()["auth"] == "disabled"
    response = httpx.post(fleet.url + "/v1/chat/completions", json=chat_body("free-chat"))
    assert response.status_code == 200
    assert "auth is DISABLED" in fleet.gateway.logs()


def test_health_reports_the_redis_store(
    tmp_path: Path, fleet_guard: list[Fleet], redis_server: RedisServer
) -> None:
    redis_server.flush()
    fleet = start_fleet(
        tmp_path, [ProviderSpec("shared", ["r-chat"])], env={"REDIS_URL": redis_server.url}
    )
    fleet_guard.append(fleet)
    assert httpx.get(fleet.url + "/health", timeout=5).json()["store"] == "redis"
    raw = fleet.client().chat.completions.with_raw_response.create(
        model="r-chat", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-best-provider"] == "shared"
