"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine here)."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.tools import REPO, require_tool

GATEWAYS = ["gateway-1", "gateway-2", "gateway-3"]


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return compose["services"]


def host_paths(service: dict[str, Any]) -> list[str]:
    return [v.split(":")[0] for v in service.get("volumes", []) if v.startswith("./")]


def test_three_gateway_replicas_share_redis(services: dict[str, Any]) -> None:
    assert sorted(name for name in services if name.startswith("gateway")) == GATEWAYS
    for name in GATEWAYS:
        gateway = services[name]
        assert gateway["build"] == "."
        assert gateway["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert gateway["environment"]["HOST"] == "0.0.0.0"
        assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "ports" not in gateway  # reached through the load balancer only


def test_redis_persists_the_token_registry(services: dict[str, Any]) -> None:
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "healthcheck" in redis


def test_load_balancer_fronts_every_replica(services: dict[str, Any]) -> None:
    lb = services["lb"]
    assert "./deploy/nginx/nginx.conf:/etc/nginx/conf.d/default.conf:ro" in lb["volumes"]
    assert lb["ports"] == ["8080:8080"]
    conf = (REPO / "deploy/nginx/nginx.conf").read_text()
    assert re.findall(r"server (gateway-\d+):12345", conf) == GATEWAYS


def test_prometheus_and_grafana_are_provisioned(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    grafana = services["grafana"]
    assert any("best-dashboard.json" in v for v in grafana["volumes"])
    assert any(v.startswith("./grafana/provisioning:") for v in grafana["volumes"])


def test_every_mounted_file_exists(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for path in host_paths(service):
            assert (REPO / path).exists(), f"{name} mounts missing {path}"


@pytest.mark.slow  # runs docker-compose
def test_docker_compose_config_accepts_the_file() -> None:
    # `docker-compose config` (Compose v1, Debian's docker-compose) validates the file against
    # the Compose schema offline, without an engine.
    compose = require_tool("docker-compose")
    done = subprocess.run([compose, "config", "--quiet"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_provider_key_of_the_shipped_config_reaches_the_replicas(
    services: dict[str, Any],
) -> None:
    shipped = yaml.safe_load((REPO / "config" / "meta-providers.yaml").read_text())
    environment = services["gateway-1"]["environment"]
    keyed = [p for p in shipped["providers"] if "api_key_env_var" in p]
    assert keyed
    for provider in keyed:
        assert provider["api_key_env_var"] in environment


def test_dockerfile_builds_a_slim_non_root_image() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert stages and all(image.endswith("-slim") for image in stages)
    runtime = dockerfile.split("\nFROM ")[-1]  # the final stage is what runs
    user = re.search(r"^USER (\S+)", runtime, re.MULTILINE)
    assert user is not None and user.group(1).split(":")[0] not in ("0", "root")
    assert "HOST=0.0.0.0" in runtime
    assert re.search(r"^EXPOSE 12345$", runtime, re.MULTILINE)
    assert 'CMD ["best", "serve"]' in runtime
    assert "uv sync --frozen --no-dev" in dockerfile


def test_dockerignore_keeps_secrets_and_venv_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".env", ".venv", ".git", "data"):
        assert entry in ignored
