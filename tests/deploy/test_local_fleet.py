"""The loopback fleet end to end: traffic through nginx to three replicas sharing Redis, read
back from Prometheus; and the real /metrics against the dashboard and alert queries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from devkit.procs import eventually
from tests.deploy.gateway_setup import GATEWAY_ENV, MODEL, TOKEN, write_config
from tests.deploy.metric_names import exported_names, referenced_names
from tests.deploy.test_dashboard import alert_expressions, dashboard_queries
from tests.fakes.upstream import FakeProvider
from tests.tools import require_tool, run

pytestmark = pytest.mark.slow

REQUESTS = 12
T = TypeVar("T")


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    with FakeProvider(models=[MODEL]) as fake:
        yield fake


@pytest.fixture(scope="module")
def fleet(
    local_fleet: Any, provider: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    for tool in ("redis-server", "nginx", "prometheus"):
        require_tool(tool)
    config = write_config(tmp_path_factory.mktemp("config"), provider.base_url)
    with local_fleet.LocalFleet(config, env=GATEWAY_ENV) as running:
        yield running


@pytest.fixture(scope="module")
def traffic(fleet: Any, provider: FakeProvider) -> int:
    """Send REQUESTS chat completions (one streamed) and one unauthenticated request through
    the load balancer; return how many chat requests succeeded."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=fleet.lb_url, headers=headers, timeout=30) as client:
        for i in range(REQUESTS - 1):
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"hello {i}"}]}
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            assert response.headers["x-best-provider"] == "fake"
            assert response.json()["choices"][0]["message"]["content"] == f"echo: hello {i}"
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "s"}]}
        with client.stream("POST", "/v1/chat/completions", json=body) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[0].removeprefix("data: "))["object"] == "chat.completion.chunk"
        unauthorized = client.post("/v1/chat/completions", json=body, headers={"Authorization": ""})
        assert unauthorized.status_code == 401
    assert provider.chat_requests >= REQUESTS
    return REQUESTS


def test_requests_through_the_load_balancer_are_counted_by_prometheus(
    fleet: Any, traffic: int
) -> None:
    fleet.wait_for_targets()
    query = 'sum(best_requests_total{route="chat",status="200"})'

    def counted() -> float | None:
        result = fleet.prometheus_query(query)
        value = float(result[0]["value"][1]) if result else 0.0
        return value if value >= traffic else None

    assert eventually(counted, f"{query} to reach {traffic}", timeout=30, interval=0.25) == traffic
    per_replica = fleet.prometheus_query(
        'sum by (instance) (best_requests_total{route="chat",status="200"}) > 0'
    )
    assert len(per_replica) >= 2, "nginx sent every request to one replica"
    failures = fleet.prometheus_query('sum(best_auth_failures_total{reason="missing"})')
    assert failures and float(failures[0]["value"][1]) >= 1


def test_alert_rules_load_and_stay_quiet_on_a_healthy_fleet(fleet: Any, traffic: int) -> None:
    status, body = fleet_get(fleet.prometheus_url + "/api/v1/rules")
    assert status == 200
    groups = json.loads(body)["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules and all(rule["health"] == "ok" for rule in rules), rules
    firing = fleet.prometheus_query('ALERTS{alertstate="firing"}')
    assert firing == []


def scrape(fleet: Any) -> list[str]:
    texts = []
    for url in fleet.replica_urls:
        status, body = fleet_get(f"{url}/metrics")
        assert status == 200
        texts.append(body.decode())
    return texts


def fleet_get(url: str) -> tuple[int, bytes]:
    response = httpx.get(url, timeout=5)
    return response.status_code, response.content


def test_dashboard_and_alerts_query_only_metrics_the_gateway_exports(
    fleet: Any, traffic: int
) -> None:
    exported = set().union(*(exported_names(text) for text in scrape(fleet)))
    for query in dashboard_queries() + alert_expressions():
        missing = referenced_names(query) - exported
        assert not missing, f"/metrics lacks {sorted(missing)} used by: {query}"


def test_real_metrics_pass_promtool_lint(fleet: Any, traffic: int, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    for text in scrape(fleet):
        run([promtool, "check", "metrics"], stdin=text)
