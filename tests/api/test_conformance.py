"""The OpenAPI document is true: ``schemathesis run --checks all`` against a served gateway
finds nothing (undeclared statuses, 405 without ``Allow``, schema-valid requests refused,
schema-violating ones accepted, answers off their schema, a deleted resource still there).
The rules it found broken are pinned in process below, each as a client sees it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.apis import Api
from service.app import App
from tests.fakes.upstream import FakeProvider
from tests.harness import GatewayProcess, write_config
from tests.inprocess import (
    ADMIN_TOKEN,
    USER_TOKEN,
    client,
    inprocess_settings,
    provider_entry,
    running_app,
)
from tests.tools import missing

# Per operation (33 operations), plus the stateful phase: about 20 s on a loaded 2-core machine.
MAX_EXAMPLES = 20
TOKEN = "sk-conformance"


def schemathesis_binary() -> Path:
    binary = Path(sys.executable).parent / "schemathesis"
    if not binary.exists():
        missing("schemathesis is not installed in this environment")
    return binary


@pytest.mark.slow
def test_schemathesis_finds_nothing(single_provider: FakeProvider, tmp_path: Path) -> None:
    binary = schemathesis_binary()
    # Every API served, so generated requests reach the provider and come back.
    apis = [str(api) for api in Api]
    entry = provider_entry("p", single_provider.base_url, 1.0, models=["m"], apis=apis)
    config = write_config(tmp_path / "config", [entry])
    # One token that is both a user and an admin token: every route is reachable.
    env = {"P_KEY": "k", "AUTH_TOKENS": TOKEN, "ADMIN_TOKENS": TOKEN}
    with GatewayProcess(config, env) as gateway:
        done = subprocess.run(
            [
                str(binary),
                "run",
                f"{gateway.url}/openapi.json",
                "--checks",
                "all",
                "--header",
                f"Authorization: Bearer {TOKEN}",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--seed",
                "20260101",
                "--no-color",
                "--output-sanitize",
                "false",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-20000:]
    assert "33/33" in report, report[-5000:]  # every operation was tested


# -- the rules, in process ---------------------------------------------------------------------


@pytest.fixture
async def app(single_provider_config: Path, tmp_path: Path) -> AsyncIterator[App]:
    settings = inprocess_settings(single_provider_config, tmp_path, env={"P_KEY": "k"})
    async with running_app(settings) as app:
        yield app


@pytest.fixture
async def admin(app: App) -> AsyncIterator[httpx.AsyncClient]:
    async with client(app, ADMIN_TOKEN) as http:
        yield http


pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("TRACE", "/v1/embeddings", "POST"),
        ("PUT", "/admin/tokens", "GET, POST"),
        ("POST", "/admin/tokens/0123456789abcdef", "DELETE, GET, PATCH"),
        ("DELETE", "/health", "GET"),
        ("OPTIONS", "/metrics", "GET"),
    ],
)
async def test_a_method_a_path_does_not_answer_is_405_with_allow(
    admin: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    answer = await admin.request(method, path)
    assert answer.status_code == 405, answer.text
    assert answer.headers["allow"] == allowed
    assert answer.json()["error"]["code"] == "method_not_allowed"


async def test_a_revoked_token_is_gone_by_id_and_kept_in_the_list(
    app: App, admin: httpx.AsyncClient
) -> None:
    created = (await admin.post("/admin/tokens", json={"name": "short-lived"})).json()
    path = f"/admin/tokens/{created['id']}"
    revoked = await admin.delete(path)
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    for answer in (
        await admin.get(path),
        await admin.patch(path, json={"rpm": 5}),
        await admin.delete(path),
    ):
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "token_revoked"
    listed = (await admin.get("/admin/tokens")).json()["data"]
    assert [t["revoked"] for t in listed if t["id"] == created["id"]] == [True]
    async with client(app, created["token"]) as user:
        assert (await user.get("/v1/models")).status_code == 401


async def test_an_expiry_in_the_past_expires_the_token_at_once(
    app: App, admin: httpx.AsyncClient
) -> None:
    created = (await admin.post("/admin/tokens", json={"name": "ending"})).json()
    async with client(app, created["token"]) as user:
        assert (await user.get("/v1/models")).status_code == 200
        ended = await admin.patch(
            f"/admin/tokens/{created['id']}", json={"expires_at": "2001-01-01T00:00:00Z"}
        )
        assert ended.status_code == 200, ended.text
        assert ended.json()["expires_at"] == "2001-01-01T00:00:00Z"
        refused = await user.get("/v1/models")
    assert refused.status_code == 401
    assert "expired" in refused.json()["error"]["message"]


async def test_a_team_that_does_not_exist_is_a_409_naming_it(admin: httpx.AsyncClient) -> None:
    answer = await admin.post("/admin/tokens", json={"name": "x", "team": "no-such-team"})
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["param"] == "team" and error["code"] == "team_not_found"
    assert "no-such-team" in error["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x", "budget_usd": 5}, "budget_period is required with budget_usd"),
        ({"name": "x", "budget_period": "day"}, "budget_period needs a budget_usd"),
    ],
)
async def test_a_budget_and_its_period_come_together(
    admin: httpx.AsyncClient, body: dict[str, object], message: str
) -> None:
    answer = await admin.post("/admin/teams", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "budget_period"
    assert message in answer.json()["error"]["message"]


async def test_an_update_clears_a_period_only_with_its_budget(admin: httpx.AsyncClient) -> None:
    team = await admin.post(
        "/admin/teams", json={"name": "t", "budget_usd": 5, "budget_period": "day"}
    )
    path = f"/admin/teams/{team.json()['id']}"
    refused = await admin.patch(path, json={"budget_period": None})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "budget_period"
    cleared = await admin.patch(path, json={"budget_usd": None})
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["budget_usd"] is None and cleared.json()["budget_period"] is None


@pytest.mark.parametrize("name", ["  ", "\u00a0", "a\x1bb", "\x1d"])
async def test_a_name_is_not_blank_and_holds_no_control_character(
    admin: httpx.AsyncClient, name: str
) -> None:
    answer = await admin.post("/admin/tokens", json={"name": name})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "name"


async def test_a_name_is_stored_without_surrounding_whitespace(admin: httpx.AsyncClient) -> None:
    answer = await admin.post("/admin/tokens", json={"name": "\ufeff  ops bot  "})
    assert answer.status_code == 201, answer.text
    assert answer.json()["name"] == "ops bot"


async def test_a_usage_range_is_answered_whatever_its_bounds(admin: httpx.AsyncClient) -> None:
    for query in (
        {"from": "2026-02-01", "to": "2026-01-01"},  # empty: no day in it
        {"from": "0001-01-01", "to": "9999-12-31"},  # read only where days can hold rows
    ):
        answer = await admin.get("/admin/usage", params=query)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"object": "list", "data": []}
    for bad in ({"from": "20260101"}, {"to": ""}, {"group_by": "colour"}):
        answer = await admin.get("/admin/usage", params=bad)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == next(iter(bad))


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2**53},
            "max_tokens",
        ),
        ("/v1/chat/completions", {"messages": [{"content": "no role"}]}, "messages"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user"}], "stream_options": {"include_usage": {}}},
            "stream_options",
        ),
        ("/v1/completions", {"prompt": [True]}, "prompt"),
        ("/v1/completions", {"prompt": [[1, "a"]]}, "prompt"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/responses", {"input": None}, "input"),
        ("/v1/responses", {"prompt": "not an object"}, "prompt"),
    ],
)
async def test_hot_route_bodies_are_checked_as_documented(
    app: App, path: str, body: dict[str, object], param: str
) -> None:
    async with client(app, USER_TOKEN) as user:
        answer = await user.post(path, json={"model": "m", **body})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


async def test_integral_floats_are_integers(app: App, single_provider: FakeProvider) -> None:
    """JSON does not tell 7 from 7.0; the provider gets 7."""
    single_provider.clear()
    async with client(app, USER_TOKEN) as user:
        answer = await user.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 7.0},
        )
    assert answer.status_code == 200, answer.text
    [sent] = single_provider.requests
    assert b'"max_tokens":7,' in sent.raw or b'"max_tokens":7}' in sent.raw, sent.raw
