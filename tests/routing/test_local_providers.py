"""Local servers without a key (Ollama, vLLM, llama.cpp's): a provider with no
``api_key_env_var`` is discovered and served without an Authorization header while it
answers, skipped quietly while it does not (one log line, not one per discovery retry), and
``best check-config`` says which answered. A fake provider plays Ollama on a free port."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.app import App
from service.cli import main
from service.gateway import Gateway
from service.routing import catalog
from tests.fakes.upstream import FakeProvider
from tests.harness import free_port, write_config
from tests.inprocess import client, inprocess_settings, running_app
from tests.tools import REPO

# What `ollama pull llama3.2` serves, by the id Ollama gives it.
OLLAMA_MODEL = "llama3.2:latest"
CHAT = {"messages": [{"role": "user", "content": "hello there"}]}  # priority-auto


def local(name: str, base_url: str) -> dict[str, Any]:
    """A provider entry as the shipped config writes a local server: no api_key_env_var."""
    return {"name": name, "base_url": base_url, "base_priority": 0.4, "apis": ["chat"]}


def config_dir(directory: Path, providers: list[dict[str, Any]], **scoring: Any) -> Path:
    """The providers, with the shipped model adjustments (they make ``NAME:latest`` routable)."""
    write_config(directory, providers, scoring=scoring or None)
    shutil.copy(REPO / "config" / "model-adjustments.yaml", directory / "model-adjustments.yaml")
    return directory


@pytest.fixture
def ollama() -> Iterator[FakeProvider]:
    with FakeProvider([OLLAMA_MODEL], owned_by="library") as fake:
        yield fake


async def discovered(app: App, model: str) -> None:
    async with client(app) as http:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            listed = (await http.get("/v1/models")).json()["data"]
            if any(m["id"] == model for m in listed):
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"{model} was never discovered")


@pytest.mark.anyio
async def test_a_local_server_is_discovered_and_served_without_a_key(
    ollama: FakeProvider, tmp_path: Path
) -> None:
    config = config_dir(tmp_path / "config", [local("ollama", ollama.base_url)])
    async with running_app(inprocess_settings(config, tmp_path / "data")) as app:
        await discovered(app, OLLAMA_MODEL)
        async with client(app) as http:
            answer = await http.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-best-provider"] == "ollama"
    assert answer.headers["x-best-model"] == OLLAMA_MODEL
    assert answer.json()["choices"][0]["message"]["content"]
    sent = [r for r in ollama.requests if r.path in ("/v1/models", "/v1/chat/completions")]
    assert {r.path for r in sent} == {"/v1/models", "/v1/chat/completions"}
    assert all("Authorization" not in r.headers for r in sent), "a key was sent to a keyless server"


@pytest.mark.anyio
async def test_with_no_key_and_no_local_server_the_503_says_what_to_do(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    keyed = {"name": "cloud", "api_key_env_var": "CLOUD_API_KEY", "base_url": "https://x/v1"}
    config = config_dir(
        tmp_path / "config", [{**keyed, "base_priority": 1}, local("ollama", closed)]
    )
    settings = inprocess_settings(config, tmp_path / "data")
    async with running_app(settings) as app, client(app) as http:
        answer = await http.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 503, answer.text
    message = answer.json()["error"]["message"]
    assert "CLOUD_API_KEY" in message and "(ollama)" in message


@pytest.mark.slow  # three discovery rounds, each after the previous one's lock expires (~1 s)
@pytest.mark.anyio
async def test_a_closed_port_is_skipped_with_one_log_line_over_many_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(catalog, "RETRY_S", 0.05)
    closed = f"http://127.0.0.1:{free_port()}/v1"
    # A short discovery timeout: the store lock of one attempt lasts timeout + 1 s.
    config = config_dir(
        tmp_path / "config", [local("ollama", closed)], discovery={"timeout_s": 0.05}
    )
    app = App(Gateway.build(inprocess_settings(config, tmp_path / "data")))
    attempts: list[str] = []
    get_json = app.gateway.client.get_json

    async def counted(url: str, headers: Any, timeout_s: float) -> Any:
        attempts.append(url)
        return await get_json(url, headers, timeout_s)

    monkeypatch.setattr(app.gateway.client, "get_json", counted)
    caplog.set_level(logging.DEBUG, logger="best")
    await app.gateway.start()
    try:
        deadline = time.monotonic() + 15
        while attempts.count(f"{closed}/models") < 3 and time.monotonic() < deadline:  # noqa: ASYNC110  (polls a count)
            await asyncio.sleep(0.05)
    finally:
        await app.gateway.close()
    assert attempts.count(f"{closed}/models") >= 3
    logged = [r for r in caplog.records if r.levelno >= logging.INFO]
    # One line says where it did not answer; no other line names the place, and discovery
    # says nothing else about the provider.
    about = [r.getMessage() for r in logged if closed in r.getMessage()]
    assert about == [
        f"local provider ollama: no server answers at {closed} (nothing listens there); "
        "used once one does"
    ]
    discovery = [r for r in logged if r.name == "best.catalog" and "ollama" in r.getMessage()]
    assert len(discovery) == 1


def test_check_config_says_which_local_servers_answered(
    ollama: FakeProvider,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    config = config_dir(
        tmp_path / "config", [local("ollama", ollama.base_url), local("vllm", closed)]
    )
    monkeypatch.chdir(tmp_path)  # no developer .env
    monkeypatch.setenv("CONFIG_DIR", str(config))
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["check-config", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    states = {p["name"]: p["state"] for p in document["providers"]}
    assert states["ollama"] == "ok: local server answered"
    assert states["vllm"].startswith("local server, no key: did not answer")
    assert closed in states["vllm"]
    assert [(r["provider"], r["model"]) for r in document["pairs"]] == [("ollama", OLLAMA_MODEL)]
    assert document["routable"] == 1


def test_a_provider_without_a_key_needs_a_name_and_names_still_default(tmp_path: Path) -> None:
    from service.config import ConfigError, load_config

    write_config(
        tmp_path,
        [
            {"api_key_env_var": "GROQ_API_KEY", "base_url": "https://g/v1", "base_priority": 1},
            local("ollama", "http://localhost:11434/v1"),
        ],
    )
    loaded = load_config(tmp_path)
    assert [(p.name, p.keyless) for p in loaded.providers] == [
        ("groq", False),
        ("ollama", True),
    ]
    write_config(tmp_path, [{"base_url": "http://localhost:8000/v1", "base_priority": 1}])
    with pytest.raises(ConfigError, match="give a name, or an api_key_env_var"):
        load_config(tmp_path)
