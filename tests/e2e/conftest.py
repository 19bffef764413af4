"""Shared pieces of the end-to-end API tests: a running gateway in front of fake providers.

Each test module builds one ``Fleet`` (fake providers + one gateway) per module; tests reset
the fakes' behaviours between them. Cooldowns live in the gateway's store, so tests that cool
something use providers or models of their own.  The gateway is a process (``GatewayProcess``:
a start costs about a second, and such modules are ``slow``), or, for modules that need no
process of its own (no signals, no logs of a process, no timing of bytes on a socket), the
same app in this process (``inprocess=True``: ``BackgroundApp``, reached by the same clients).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from devkit.procs import eventually
from service.settings import settings_from_env
from tests.fakes.upstream import FakeProvider
from tests.harness import GatewayProcess, write_config
from tests.inprocess import BackgroundApp

TOKEN = "sk-best-client-token"

# Failures, latency and exploration must not reorder candidates behind a test's back: live
# routing is off by default.
STABLE_SCORING: dict[str, Any] = {
    "weights": {"health_penalty": 0},
    "live": {"latency_weight": 0, "explore": 0},
}


def provider_key(name: str) -> str:
    """The upstream key the gateway holds for provider ``name``."""
    return f"sk-upstream-{name}"


def key_env_var(name: str) -> str:
    return f"{name.upper().replace('-', '_')}_KEY"


@dataclass
class ProviderSpec:
    """One provider of a fleet: a fake server and how the gateway's config names it."""

    name: str
    models: Sequence[str]
    priority: float = 1.0
    timeout_s: float | None = None
    fixed_models: bool = True  # False: the gateway discovers them at GET /models
    apis: Sequence[str] | None = None  # apis: in the gateway's config (None: its default)

    def entry(self, fake: FakeProvider) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "api_key_env_var": key_env_var(self.name),
            "base_url": fake.base_url,
            "base_priority": self.priority,
        }
        if self.fixed_models:
            entry["models"] = list(self.models)
        if self.timeout_s is not None:
            entry["timeout_s"] = self.timeout_s
        if self.apis is not None:
            entry["apis"] = list(self.apis)
        return entry


@dataclass
class Fleet:
    """Fake providers by name and the gateway in front of them."""

    gateway: GatewayProcess | BackgroundApp
    fakes: dict[str, FakeProvider]
    config_dir: Path
    specs: list[ProviderSpec] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.url if isinstance(self.gateway, GatewayProcess) else "http://gateway"

    def __getitem__(self, name: str) -> FakeProvider:
        return self.fakes[name]

    def reset(self) -> None:
        for fake in self.fakes.values():
            fake.release()
            fake.clear_behaviors()
            fake.clear()

    def client(self, token: str = TOKEN, **kwargs: Any) -> openai.OpenAI:
        if isinstance(self.gateway, BackgroundApp):
            kwargs.setdefault("http_client", self.gateway.client(token=None))
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key=token, max_retries=0, timeout=20, **kwargs
        )

    def http(self, token: str | None = TOKEN) -> httpx.Client:
        if isinstance(self.gateway, BackgroundApp):
            return self.gateway.client(token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=20)

    def stop(self) -> None:
        if isinstance(self.gateway, BackgroundApp):
            self.gateway.__exit__(None, None, None)
        else:
            self.gateway.stop()
        for fake in self.fakes.values():
            fake.stop()


def start_fleet(
    directory: Path,
    specs: Sequence[ProviderSpec],
    *,
    env: Mapping[str, str] | None = None,
    adjustments: Mapping[str, Any] | None = None,
    scoring: Mapping[str, Any] | None = STABLE_SCORING,
    wait_ready: bool = True,
    inprocess: bool = False,
) -> Fleet:
    """Start one fake per spec (each checking its own key) and a gateway routing to them: a
    process, or with ``inprocess`` the app in this process, built from the same variables."""
    fakes = {s.name: FakeProvider(s.models, api_key=provider_key(s.name)).start() for s in specs}
    config_dir = write_config(
        directory,
        [s.entry(fakes[s.name]) for s in specs],
        adjustments=adjustments,
        scoring=scoring,
    )
    gateway_env = {key_env_var(s.name): provider_key(s.name) for s in specs}
    gateway_env["AUTH_TOKENS"] = TOKEN
    gateway_env.update(env or {})
    gateway: GatewayProcess | BackgroundApp
    try:
        if inprocess:
            data_dir = directory.parent / f"{directory.name}-data"
            variables = {"CONFIG_DIR": str(config_dir), "DATA_DIR": str(data_dir)}
            settings = settings_from_env({**gateway_env, **variables})
            gateway = BackgroundApp(settings).__enter__()
            if wait_ready:
                with gateway.client(token=None) as http:
                    eventually(lambda: http.get("/ready").status_code == 200, "ready", 30)
        else:
            gateway = GatewayProcess(config_dir, gateway_env)
            gateway.start(wait_ready=wait_ready)
    except Exception:
        for fake in fakes.values():
            fake.stop()
        raise
    return Fleet(gateway, fakes, config_dir, list(specs))


@pytest.fixture
def fleet_guard() -> Iterator[list[Fleet]]:
    """Fleets started inside one test, stopped at its end (append them here)."""
    fleets: list[Fleet] = []
    yield fleets
    for fleet in fleets:
        fleet.stop()


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """The response has ``status`` and an OpenAI error body; returns its ``error`` object."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    if code is not None:
        assert error["code"] == code, error
    return error


def chat_body(model: str | None = None, text: str = "hello there", **extra: Any) -> dict:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], **extra}
    if model is not None:
        body["model"] = model
    return body
