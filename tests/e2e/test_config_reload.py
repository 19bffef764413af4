"""Configuration end to end: hot reload of the YAML files without a restart, a broken file
reported once while the last good configuration keeps serving, and start-up with the shipped
``config/`` and no provider keys."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from devkit.procs import eventually as shared_eventually
from tests.e2e.conftest import (
    Fleet,
    ProviderSpec,
    chat_body,
    key_env_var,
    provider_key,
    start_fleet,
)
from tests.fakes.upstream import FakeProvider
from tests.harness import REPO, GatewayProcess

RELOAD_WITHIN_S = 10  # the gateway polls every 2 s; the documented bound is 30 s


@pytest.fixture(scope="module")
def late() -> Iterator[FakeProvider]:
    """A provider that is not in the configuration at start-up."""
    fake = FakeProvider(["late-model"], api_key=provider_key("late")).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, late: FakeProvider) -> Iterator[Fleet]:
    specs = [ProviderSpec("one", ["rl-m"], priority=2), ProviderSpec("two", ["rl-m"])]
    fleet = start_fleet(
        tmp_path_factory.mktemp("reload-config"),
        specs,
        env={key_env_var("late"): provider_key("late")},
    )
    yield fleet
    fleet.stop()


def write_providers(fleet: Fleet, priorities: dict[str, float], extra: list[dict] = ()) -> None:
    entries = []
    for spec in fleet.specs:
        spec.priority = priorities.get(spec.name, spec.priority)
        entries.append(spec.entry(fleet[spec.name]))
    path = fleet.config_dir / "meta-providers.yaml"
    path.write_text(yaml.safe_dump({"providers": [*entries, *extra]}))


def served_by(fleet: Fleet, model: str) -> str | None:
    with fleet.http() as http:
        response = http.post("/v1/chat/completions", json=chat_body(model))
    if response.status_code != 200:
        return None
    return response.headers["x-best-provider"]


def eventually(predicate: Callable[[], bool], what: str) -> float:
    """Poll until ``predicate()``; returns the seconds it took."""
    started = time.monotonic()
    shared_eventually(predicate, what, timeout=RELOAD_WITHIN_S, interval=0.1)
    return time.monotonic() - started


def test_priority_change_reroutes_without_restart(fleet: Fleet) -> None:
    pid = fleet.gateway.pid
    assert served_by(fleet, "rl-m") == "one"
    write_providers(fleet, {"one": 1, "two": 3})
    eventually(lambda: served_by(fleet, "rl-m") == "two", "two takes over after its boost")
    assert fleet.gateway.pid == pid


def test_added_provider_becomes_routable(fleet: Fleet, late: FakeProvider) -> None:
    assert served_by(fleet, "late-model") is None  # 404: nobody serves it yet
    entry = ProviderSpec("late", ["late-model"]).entry(late)
    write_providers(fleet, {}, extra=[entry])
    eventually(lambda: served_by(fleet, "late-model") == "late", "the new provider serves")
    assert late.chat_requests >= 1


def test_broken_yaml_is_reported_once_and_the_last_good_config_serves(fleet: Fleet) -> None:
    path = fleet.config_dir / "meta-providers.yaml"
    top = served_by(fleet, "rl-m")
    assert top is not None
    path.write_text("providers:\n  - name: broken\n    base_url: [unclosed\n    x: 1\n")

    pattern = re.compile(r"meta-providers\.yaml:\d+")

    def error_lines() -> list[str]:
        return [line for line in fleet.gateway.logs().splitlines() if pattern.search(line)]

    eventually(lambda: bool(error_lines()), "the broken file is reported")
    assert served_by(fleet, "rl-m") == top  # the last good configuration serves
    time.sleep(2.5)  # at least one more poll of the unchanged broken file
    assert served_by(fleet, "rl-m") == top
    lines = error_lines()
    assert len(lines) == 1, lines
    assert f"{path}:4: invalid YAML" in lines[0]
    assert "Traceback" not in fleet.gateway.logs()

    # Fixed (with a change): picked up again.
    other = "one" if top == "two" else "two"
    write_providers(fleet, {top: 1, other: 5})
    eventually(lambda: served_by(fleet, "rl-m") == other, "the fixed file is picked up")


def test_unknown_key_on_reload_is_logged_with_file_line_and_key_and_changes_nothing(
    fleet: Fleet,
) -> None:
    path = fleet.config_dir / "meta-providers.yaml"
    top = served_by(fleet, "rl-m")
    assert top is not None
    entries = [spec.entry(fleet[spec.name]) for spec in fleet.specs]
    other = "one" if top == "two" else "two"
    for entry in entries:
        # The change would reroute to `other`, but a misspelt key makes the file invalid.
        entry["base_priority"] = 9 if entry["name"] == other else 1
    entries[1]["timout_s"] = 5
    path.write_text(yaml.safe_dump({"providers": entries}, sort_keys=False))
    line = path.read_text().splitlines().index("  timout_s: 5") + 1

    def reported() -> bool:
        return f"{path}:{line}: providers[1].timout_s: unknown key" in fleet.gateway.logs()

    eventually(reported, "the unknown key is reported")
    assert served_by(fleet, "rl-m") == top


def test_a_broken_file_put_back_as_it_was_is_logged_as_fixed(fleet: Fleet) -> None:
    path = fleet.config_dir / "meta-providers.yaml"
    marker = f"{path}:"

    def last_config_line() -> str:
        lines = [line for line in fleet.gateway.logs().splitlines() if "config" in line]
        return lines[-1] if lines else ""

    # A good file of this test's own (earlier tests may leave anything behind).
    write_providers(fleet, {})
    path.write_text(path.read_text() + "# put-back test\n")
    good = path.read_text()
    eventually(lambda: "config reloaded" in last_config_line(), "the good file is loaded")
    path.write_text("providers: [unclosed\n")
    eventually(lambda: marker in last_config_line(), "the broken file is reported")
    path.write_text(good)  # the exact content in use: nothing to reload
    eventually(lambda: "valid again" in last_config_line(), "the fix is logged")
    assert "ERROR" not in last_config_line()


def test_shipped_config_starts_without_keys_and_names_each_missing_one(tmp_path: Path) -> None:
    shipped = yaml.safe_load((REPO / "config" / "meta-providers.yaml").read_text())["providers"]
    # Blank every key, so a developer's real keys (environment or .env) are not used.
    env = {p["api_key_env_var"]: "" for p in shipped}
    gateway = GatewayProcess(REPO / "config", env)
    try:
        gateway.start(wait_ready=False)
        assert httpx.get(gateway.url + "/ok", timeout=5).status_code == 200
        health = httpx.get(gateway.url + "/health", timeout=5)
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert health.json()["auth"] == "disabled"
        assert httpx.get(gateway.url + "/ready", timeout=5).status_code == 503
        logs = gateway.logs()
        for provider in shipped:
            env_var = provider["api_key_env_var"]
            name = provider.get("name") or env_var.lower().removesuffix("_api_key")
            assert any(name in line and env_var in line for line in logs.splitlines()), (
                f"no log line names {name} / {env_var}:\n{logs}"
            )
        assert "Traceback" not in logs
    finally:
        gateway.stop()


def test_without_any_key_chat_answers_503_naming_the_keys_to_set(tmp_path: Path) -> None:
    shipped = yaml.safe_load((REPO / "config" / "meta-providers.yaml").read_text())["providers"]
    env = {p["api_key_env_var"]: "" for p in shipped}
    enabled = {p["api_key_env_var"] for p in shipped if p.get("base_priority", 1) > 0}
    gateway = GatewayProcess(REPO / "config", env)
    try:
        gateway.start(wait_ready=False)
        for path, body in (
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
            (
                "/v1/chat/completions",
                {"model": "priority-auto", "messages": [{"role": "user", "content": "hi"}]},
            ),
            ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}),
        ):
            response = httpx.post(gateway.url + path, json=body, timeout=5)
            assert response.status_code == 503, response.text
            message = response.json()["error"]["message"]
            assert "No provider has an API key" in message
            assert all(var in message for var in enabled), message
        startup = next(
            line for line in gateway.logs().splitlines() if "No provider has an API key" in line
        )
        assert all(var in startup for var in enabled), startup
    finally:
        gateway.stop()
