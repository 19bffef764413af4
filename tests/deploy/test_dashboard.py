"""The Grafana dashboard and its provisioning: every query names a metric BEST exports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from service.observability.metrics import create_metrics
from tests.deploy.metric_names import exported_names, referenced_names
from tests.tools import REPO

DASHBOARD = REPO / "grafana" / "best-dashboard.json"
CHART_DASHBOARD = REPO / "helm" / "best" / "files" / "best-dashboard.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[str]:
    queries = [t["expr"] for p in panels() for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def alert_expressions() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def exported() -> set[str]:
    text, _ = create_metrics().render()
    return exported_names(text.decode())


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_query_names_an_exported_metric(source: str, exported: set[str]) -> None:
    queries = dashboard_queries() if source == "dashboard" else alert_expressions()
    assert queries
    for query in queries:
        names = referenced_names(query)
        assert names, f"query reads no BEST metric: {query}"
        assert names <= exported, f"{sorted(names - exported)} not exported; query: {query}"


def test_dashboard_covers_every_metric_family(exported: set[str]) -> None:
    used = set().union(*(referenced_names(q) for q in dashboard_queries()))
    families = {
        name.removesuffix("_total")
        .removesuffix("_bucket")
        .removesuffix("_sum")
        .removesuffix("_count")
        for name in used
    }
    for name in exported:
        if name.endswith("_created") or name.endswith(("_sum", "_count")):
            continue
        family = name.removesuffix("_total").removesuffix("_bucket")
        assert family in families, f"no dashboard panel shows {name}"


def test_datasource_is_a_template_variable_used_by_every_panel() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panels_cover_what_operators_watch() -> None:
    titles = " | ".join(p["title"].lower() for p in panels())
    for words in (
        "route and status",
        "errors by provider",
        "request latency",
        "time to first token",
        "gateway overhead",
        "tokens/s by provider/model and type",
        "failovers",
        "cooldowns",
        "quota rejections",
        "store errors",
        "store latency",
        "store degraded",
        "in-flight",
        "auth failures",
    ):
        assert words in titles, words
    exprs = " ".join(dashboard_queries())
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(best_request_duration" in exprs
        assert (
            f"histogram_quantile({quantile}, sum by (le) (rate(gen_ai_server_time_to_first" in exprs
        )


def test_panel_ids_are_unique() -> None:
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))


def test_chart_ships_the_same_dashboard() -> None:
    assert CHART_DASHBOARD.read_bytes() == DASHBOARD.read_bytes(), (
        "helm/best/files/best-dashboard.json differs: "
        "cp grafana/best-dashboard.json helm/best/files/"
    )


def test_compose_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    provisioning = REPO / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards/best.yml").read_text())["providers"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    dashboard_mount = f"./grafana/best-dashboard.json:{provider['options']['path']}/"
    assert any(m.startswith(dashboard_mount) for m in mounts), mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
