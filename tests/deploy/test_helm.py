"""The Helm chart: lints, renders with default and all-on values, and the rendered objects are
valid Kubernetes (schema-checked) with the properties an operator relies on."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools import REPO, require_tool, run

CHART = REPO / "helm" / "best"
ALL_ON = CHART / "ci" / "all-on-values.yaml"
# A version kubernetes-validate bundles (1.25-1.37) and the oldest still widely deployed.
KUBE_VERSION = "1.30.0"
# Custom resources of prometheus-operator: no bundled schema, checked by structure below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

Obj = dict[str, Any]


def render(*args: str) -> list[Obj]:
    helm = require_tool("helm")
    out = run([helm, "template", "rel", str(CHART), "--kube-version", KUBE_VERSION, *args])
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: Sequence[Obj]) -> dict[str, list[Obj]]:
    kinds: dict[str, list[Obj]] = {}
    for obj in objects:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


def one(objects: Sequence[Obj], kind: str) -> Obj:
    (found,) = by_kind(objects)[kind]
    return found


def named(objects: Sequence[Obj], kind: str, name: str) -> Obj:
    (found,) = [o for o in by_kind(objects)[kind] if o["metadata"]["name"] == name]
    return found


def gateway_container(objects: Sequence[Obj]) -> Obj:
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: Obj) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


@pytest.fixture(scope="module")
def default() -> list[Obj]:
    return render()


@pytest.fixture(scope="module")
def all_on() -> list[Obj]:
    return render("-f", str(ALL_ON))


@pytest.mark.parametrize("values", [[], ["-f", str(ALL_ON)]], ids=["default", "all-on"])
def test_chart_lints(values: list[str]) -> None:
    out = run([require_tool("helm"), "lint", "--strict", str(CHART), *values])
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", [[], ["-f", str(ALL_ON)]], ids=["default", "all-on"])
def test_rendered_objects_pass_kubernetes_schemas(values: list[str], tmp_path: Path) -> None:
    validate = require_tool("kubernetes-validate")
    objects = [o for o in render(*values) if o["kind"] not in CRD_KINDS]
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    out = run([validate, "--strict", "-k", KUBE_VERSION, str(manifest)])
    assert out.count("passed for resource") == len(objects), out


def test_optional_parts_are_off_by_default(default: list[Obj]) -> None:
    kinds = set(by_kind(default))
    assert kinds == {"ServiceAccount", "Secret", "ConfigMap", "Service", "Deployment"}
    assert len(by_kind(default)["ConfigMap"]) == 1  # no dashboard ConfigMap
    assert "REDIS_URL" not in env_of(gateway_container(default))


def test_all_on_renders_every_optional_part(all_on: list[Obj]) -> None:
    kinds = by_kind(all_on)
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "StatefulSet"):
        assert kind in kinds
    assert len(kinds["Service"]) == 2  # gateway and Redis
    assert len(kinds["ConfigMap"]) == 2  # configuration and dashboard
    # The HPA owns the replica count; a fixed one would fight it on every upgrade.
    assert "replicas" not in one(all_on, "Deployment")["spec"]


@pytest.mark.parametrize("fixture", ["default", "all_on"])
def test_gateway_pod_is_non_root_and_read_only(fixture: str, request: Any) -> None:
    objects = request.getfixturevalue(fixture)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    container = gateway_container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # Everything the gateway writes lives on emptyDirs.
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    env = env_of(container)
    assert {"/tmp", env["DATA_DIR"]} <= writable
    # The server makes a fresh multiprocess metrics dir under /tmp per start.
    assert "PROMETHEUS_MULTIPROC_DIR" not in env
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounted = {m["name"] for m in container["volumeMounts"] if m["mountPath"] in writable}
    assert mounted <= empty_dirs


def test_probes_and_listen_address(default: list[Obj]) -> None:
    container = gateway_container(default)
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    env = env_of(container)
    assert env["HOST"] == "0.0.0.0"
    (port,) = container["ports"]
    assert port["name"] == "http" and str(port["containerPort"]) == env["PORT"]


def test_shutdown_drains_streams(default: list[Obj]) -> None:
    pod = one(default, "Deployment")["spec"]["template"]["spec"]
    container = gateway_container(default)
    sleep = re.search(
        r"sleep\((\d+)\)", " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    )
    assert sleep is not None
    drain = int(env_of(container)["SHUTDOWN_GRACE_S"])
    # Kubelet kills the pod at the grace period, counted from the start of preStop.
    assert pod["terminationGracePeriodSeconds"] > int(sleep.group(1)) + drain
    assert drain >= 120  # long enough for a long chat stream


def test_config_and_secret_changes_roll_the_pods(default: list[Obj]) -> None:
    annotations = one(default, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
    changed = render("--set", "config.modelAdjustments.adjustments.big.priority=2")
    changed_annotations = one(changed, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert changed_annotations["checksum/config"] != annotations["checksum/config"]


def test_configmap_holds_both_files_and_is_the_config_dir(all_on: list[Obj]) -> None:
    config = named(all_on, "ConfigMap", "rel-best")
    providers = yaml.safe_load(config["data"]["meta-providers.yaml"])["providers"]
    assert providers[0]["api_key_env_var"] == "GROQ_API_KEY"
    adjustments = yaml.safe_load(config["data"]["model-adjustments.yaml"])["adjustments"]
    assert adjustments["embeddings"]["priority"] == -100
    assert "weights" in yaml.safe_load(config["data"]["scoring.yaml"])
    assert "scoring.yaml" not in named(render(), "ConfigMap", "rel-best")["data"]
    container = gateway_container(all_on)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert mount["mountPath"] == env_of(container)["CONFIG_DIR"]


def test_secret_from_values_or_existing_secret(all_on: list[Obj]) -> None:
    secret = one(all_on, "Secret")
    assert secret["stringData"]["AUTH_TOKENS"] == "tok-a,tok-b"
    assert secret["stringData"]["GROQ_API_KEY"] == "gsk-test"
    assert gateway_container(all_on)["envFrom"] == [{"secretRef": {"name": "rel-best"}}]

    existing = render("--set", "secret.existingSecret=my-keys")
    assert "Secret" not in by_kind(existing)
    assert gateway_container(existing)["envFrom"] == [{"secretRef": {"name": "my-keys"}}]


def test_redis_in_chart_or_external(all_on: list[Obj]) -> None:
    assert env_of(gateway_container(all_on))["REDIS_URL"] == "redis://rel-best-redis:6379/0"
    redis = one(all_on, "StatefulSet")["spec"]
    args = redis["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    redis_service = next(
        s for s in by_kind(all_on)["Service"] if s["metadata"]["name"].endswith("-redis")
    )
    assert redis_service["spec"]["selector"] == redis["selector"]["matchLabels"]

    external = render("--set", "redis.url=redis://cache.example:6379/1")
    assert env_of(gateway_container(external))["REDIS_URL"] == "redis://cache.example:6379/1"
    assert "StatefulSet" not in by_kind(external)


def test_service_selects_only_gateway_pods(all_on: list[Obj]) -> None:
    deployment = one(all_on, "Deployment")
    service = named(all_on, "Service", "rel-best")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = one(all_on, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    hpa = one(all_on, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_tracing_is_off_by_default_and_configured_by_values(
    default: list[Obj], all_on: list[Obj]
) -> None:
    assert not any(name.startswith("OTEL_") for name in env_of(gateway_container(default)))
    env = env_of(gateway_container(all_on))
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://tempo.observability:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
    assert env["OTEL_SERVICE_NAME"] == "best"
    assert "k8s.pod.name=$(POD_NAME)" in env["OTEL_RESOURCE_ATTRIBUTES"]
    assert "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT" not in env  # opt-in only
    # $(POD_NAME) expands only when POD_NAME is defined earlier in the list.
    names = [e["name"] for e in gateway_container(all_on)["env"]]
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")


def test_service_monitor_structure(all_on: list[Obj]) -> None:
    monitor = one(all_on, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = named(all_on, "Service", "rel-best")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"


def test_prometheus_rule_carries_the_alert_rules(all_on: list[Obj]) -> None:
    rule = one(all_on, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    source = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    assert rule["spec"] == source
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for alert in group["rules"]:
            assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}


def test_dashboard_configmap_for_the_grafana_sidecar(all_on: list[Obj]) -> None:
    config = next(
        c for c in by_kind(all_on)["ConfigMap"] if c["metadata"]["name"].endswith("-dashboard")
    )
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config["data"]["best-dashboard.json"])
    assert dashboard == json.loads((REPO / "grafana/best-dashboard.json").read_text())


def test_every_value_is_documented() -> None:
    """prom-label-proxy style: every key has a `# --` comment, on itself or an ancestor
    (a documented mapping, such as a securityContext, documents its contents)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key = re.compile(r"^(\s*)([A-Za-z0-9_.]+):(.*)$")
    stack: list[tuple[int, bool]] = []  # (indent, documented) of enclosing keys
    undocumented = []
    for number, line in enumerate(lines):
        match = key.match(line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        above = number - 1
        while (
            above >= 0
            and lines[above].strip().startswith("#")
            and not lines[above].strip().startswith("# --")
        ):
            above -= 1
        documented = above >= 0 and lines[above].strip().startswith("# --")
        inherited = any(doc for _, doc in stack)
        is_leaf = match.group(3).strip() != ""
        if is_leaf and not (documented or inherited):
            undocumented.append(match.group(2))
        stack.append((indent, documented or inherited))
    assert not undocumented
