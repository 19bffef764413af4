"""Alert rules and the compose Prometheus config: valid, unit-tested, shipped identically."""

from __future__ import annotations

from typing import Any

import yaml

from tests.tools import REPO, require_tool, run

PROM_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
CHART_ALERTS = REPO / "helm" / "best" / "files" / "alerts.yml"


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_check() -> None:
    out = run([require_tool("promtool"), "check", "rules", str(ALERTS)])
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_rules_unit_tests_pass() -> None:
    out = run([require_tool("promtool"), "test", "rules", ALERTS_TEST.name], cwd=PROM_DIR)
    assert "SUCCESS" in out


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never shown firing"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} never shown quiet"


def test_the_alerts_operators_need_exist_with_severity_and_summary() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    # The alerts operators rely on: all providers cooling, error-rate spike, Redis down,
    # quota surge, overhead p99 high.
    for name in (
        "BestAllProvidersCooling",
        "BestNoRoutableModels",
        "BestErrorRateHigh",
        "BestRedisDown",
        "BestStoreDegraded",
        "BestQuotaRejectionSurge",
        "BestGatewayOverheadHigh",
    ):
        assert name in rules
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_chart_ships_the_same_rules() -> None:
    assert CHART_ALERTS.read_bytes() == ALERTS.read_bytes(), (
        "helm/best/files/alerts.yml differs: cp deploy/prometheus/alerts.yml helm/best/files/"
    )


def test_compose_prometheus_config_is_valid() -> None:
    out = run([require_tool("promtool"), "check", "config", str(PROM_DIR / "prometheus.yml")])
    assert "is valid prometheus config file" in out


def test_compose_prometheus_scrapes_every_replica_directly() -> None:
    conf = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    replicas = sorted(name for name in compose["services"] if name.startswith("gateway-"))
    (job,) = conf["scrape_configs"]
    targets = sorted(t for sc in job["static_configs"] for t in sc["targets"])
    assert targets == [f"{name}:12345" for name in replicas]
    assert conf["rule_files"] == ["alerts.yml"]


def test_local_fleet_prometheus_config_is_valid(local_fleet: Any, tmp_path: Any) -> None:
    conf = tmp_path / "prometheus.yml"
    rendered = local_fleet.render_prometheus_conf([20001, 20002, 20003])
    conf.write_text(yaml.safe_dump(rendered))
    run([require_tool("promtool"), "check", "config", str(conf)])
    (job,) = rendered["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [
        "127.0.0.1:20001",
        "127.0.0.1:20002",
        "127.0.0.1:20003",
    ]
