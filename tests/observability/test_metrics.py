"""/metrics after real traffic, in process: the series a dashboard reads are there with the
right counts, labels stay bounded whatever clients send, no raw token ever becomes a label,
and promtool accepts the scrape."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from service.app import App
from service.quotas.tokens import token_id
from tests.fakes.upstream import Behavior, FakeProvider
from tests.harness import write_config
from tests.inprocess import (
    ADMIN_TOKEN,
    FIXED_ORDER,
    USER_TOKEN,
    client,
    create_token,
    inprocess_settings,
    provider_entry,
    provider_keys,
    running_app,
)
from tests.tools import require_tool, run

pytestmark = pytest.mark.anyio

CHAT = {"model": "m", "messages": [{"role": "user", "content": "three little words"}]}
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Fleet:
    app: App
    p1: FakeProvider
    p2: FakeProvider


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with AsyncExitStack() as stack:
        p1, p2 = (stack.enter_context(FakeProvider(["m"], api_key="k")) for _ in range(2))
        entries = [
            provider_entry("p1", p1.base_url, 1.0, models=["m"]),
            provider_entry("p2", p2.base_url, 0.5, models=["m"]),
        ]
        config = write_config(tmp_path / "config", entries, scoring=FIXED_ORDER)
        # Priced, so served requests cost something and the spend series have samples.
        (config / "prices.yaml").write_text(
            yaml.safe_dump({"models": {"m": {"input": 2, "output": 3}}})
        )
        settings = inprocess_settings(
            config, tmp_path / "data", env=provider_keys(["p1", "p2"]), metrics_per_token=True
        )
        app = await stack.enter_async_context(running_app(settings))
        yield Fleet(app, p1, p2)


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of an exposition text."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match is not None, line
        name, labels, value = match.groups()
        out.append((name, dict(LABEL.findall(labels or "")), float(value)))
    return out


def value(text: str, name: str, **labels: str) -> float:
    found = [v for n, ls, v in samples(text) if n == name and labels.items() <= ls.items()]
    assert found, f"no {name} with {labels}"
    return sum(found)


async def scrape(app: App) -> str:
    async with client(app, token=None) as http:
        answer = await http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return answer.text


async def test_requests_failovers_tokens_and_refusals_are_counted(fleet: Fleet) -> None:
    limited = await create_token(fleet.app, rpm=1)
    async with client(fleet.app) as http:
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        fleet.p1.queue(Behavior.server_error(503))
        failed_over = await http.post("/v1/chat/completions", json=CHAT)
        assert failed_over.headers["x-best-provider"] == "p2"
    async with client(fleet.app, limited) as http:
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 429
    async with client(fleet.app, "sk-nobody-knows-this") as http:
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 401
    text = await scrape(fleet.app)
    ok = "best_requests_total"
    assert value(text, ok, route="chat", status="200", model="m", provider="p1") == 2
    assert value(text, ok, route="chat", status="200", model="m", provider="p2") == 1
    assert value(text, ok, route="chat", status="429") == 1
    assert value(text, ok, route="chat", status="401") == 1
    assert value(text, "best_failovers_total", provider="p1") == 1
    assert value(text, "best_quota_rejections_total", limit="rpm") == 1
    assert value(text, "best_auth_failures_total", reason="unknown") == 1
    # Three answers, each with its usage: input and output tokens of every one.
    tokens = "gen_ai_client_token_usage_count"
    assert value(text, tokens, gen_ai_token_type="input", gen_ai_request_model="m") == 3
    assert value(text, tokens, gen_ai_token_type="output", gen_ai_request_model="m") == 3
    attempts = "gen_ai_client_operation_duration_seconds_count"
    assert value(text, attempts, gen_ai_provider_name="p1", outcome="ok") == 2
    assert value(text, attempts, gen_ai_provider_name="p2", outcome="ok") == 1
    assert value(text, "best_request_duration_seconds_count", route="chat") == 5
    assert value(text, "best_requests_in_flight", route="chat") == 0


async def test_labels_stay_bounded_whatever_clients_send(fleet: Fleet) -> None:
    async with client(fleet.app) as http:
        for i in range(40):
            headers = {"x-request-id": f"req-{i:04d}-unique"}
            body = {**CHAT, "model": f"made-up-model-{i}"}
            assert (
                await http.post("/v1/chat/completions", json=body, headers=headers)
            ).status_code == 404
            assert (await http.get(f"/v1/models/made-up-{i}")).status_code == 404
            assert (await http.get(f"/no/such/path/{i}")).status_code == 404
            assert (await http.get(f"/admin/tokens/{i:016x}")).status_code == 401
    text = await scrape(fleet.app)
    assert "made-up" not in text and "req-0" not in text and "/no/such" not in text
    series = [(n, ls) for n, ls, _ in samples(text)]
    routes = {ls["route"] for n, ls in series if "route" in ls}
    assert routes <= {
        "chat",
        "embeddings",
        "responses",
        "completions",
        "messages",
        "models",
        "health",
        "ready",
        "metrics",
        "stats",
        "admin",
        "other",
    }
    models = {ls[k] for _, ls in series for k in ("model", "gen_ai_request_model") if k in ls}
    assert models <= {"", "m"}
    requests = [ls for n, ls in series if n == "best_requests_total"]
    # One series per (route, status, model, provider) seen: 160 requests made a handful.
    assert len(requests) <= 6, requests


async def test_no_raw_token_in_any_label_or_log_line(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    managed = await create_token(fleet.app, name="ci", rpm=100)
    unknown = "sk-unknown-0123456789abcdef"
    raw_tokens = [USER_TOKEN, ADMIN_TOKEN, managed, unknown]
    for token in (USER_TOKEN, managed, unknown):
        async with client(fleet.app, token) as http:
            await http.post("/v1/chat/completions", json=CHAT)
            fleet.p1.queue(Behavior.server_error(500))
            await http.post("/v1/chat/completions", json=CHAT)
    async with client(fleet.app, ADMIN_TOKEN) as admin:
        await admin.get("/admin/tokens")
        await admin.post("/admin/tokens", json={"name": "x", "team": "nope"})
    text = await scrape(fleet.app)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert logged, "nothing was logged: the check below would prove nothing"
    for raw in raw_tokens:
        assert raw not in text
        assert raw not in logged
    # Per-token series (opted in here) name a token by its id, never by itself.
    spenders = {ls["token"] for n, ls, _ in samples(text) if n == "best_token_spend_usd_total"}
    assert spenders == {token_id(USER_TOKEN), token_id(managed)}


async def test_promtool_accepts_a_scrape_after_traffic(fleet: Fleet) -> None:
    promtool = require_tool("promtool")
    async with client(fleet.app) as http:
        await http.post("/v1/chat/completions", json=CHAT)
        await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
        await http.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    text = await scrape(fleet.app)
    output = run([promtool, "check", "metrics"], stdin=text)
    assert output.strip() == "", output
