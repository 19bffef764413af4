"""The admin and operations routes that FastAPI serves, in process (httpx.ASGITransport):
one OpenAI error body on every route, validation errors as 400 naming the field, auth before
the body, and the same request ids and metrics as the hot routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import App
from tests.inprocess import ADMIN_TOKEN, USER_TOKEN, client, inprocess_settings, running_app

pytestmark = pytest.mark.anyio


@pytest.fixture
async def app(single_provider_config: Path, tmp_path: Path) -> AsyncIterator[App]:
    settings = inprocess_settings(single_provider_config, tmp_path, env={"P_KEY": "k"})
    async with running_app(settings) as app:
        yield app


@pytest.fixture
async def admin(app: App) -> AsyncIterator[httpx.AsyncClient]:
    async with client(app, ADMIN_TOKEN) as http:
        yield http


def openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({}, "name", "name: required key is missing"),
        ({"name": "  "}, "name", "name: String should have at least 1 character"),
        ({"name": "x", "rpm": -1}, "rpm", "rpm: Input should be greater than or equal to 0"),
        ({"name": "x", "tpm": "many"}, "tpm", "tpm: must be an integer"),
        ({"name": "x", "max_concurrency": True}, "max_concurrency", "must be an integer"),
        (
            {"name": "x", "expires_at": "tomorrow"},
            "expires_at",
            "expires_at: 'tomorrow' is not an ISO",
        ),
        ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at", "in the past"),
        ({"name": "x", "expires_at": "9999-12-31T23:59:59-01:00"}, "expires_at", "range"),
        ({"name": "x", "team": "a"}, "team", "no team with id 'a'"),
        ({"name": "x", "owner": "a"}, "owner", "owner: unknown key"),
    ],
)
async def test_invalid_admin_body_is_a_400_naming_the_field(
    admin: httpx.AsyncClient, body: dict[str, Any], param: str, fragment: str
) -> None:
    error = openai_error(await admin.post("/admin/tokens", json=body), 400)
    assert error["param"] == param
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"


async def test_every_problem_of_a_body_is_listed(admin: httpx.AsyncClient) -> None:
    body = {"rpm": -1, "tpm": 1.5, "colour": "red"}
    error = openai_error(await admin.post("/admin/tokens", json=body), 400)
    assert error["param"] == "name"
    for where in ("name:", "rpm:", "tpm:", "colour: unknown key"):
        assert where in error["message"]


async def test_patch_changes_only_the_keys_sent_and_refuses_unknown_ones(
    admin: httpx.AsyncClient,
) -> None:
    created = (await admin.post("/admin/tokens", json={"name": "a", "rpm": 5, "tpm": 9})).json()
    path = f"/admin/tokens/{created['id']}"
    patched = await admin.patch(path, json={"rpm": None, "expires_at": "2031-01-02T03:04:05"})
    assert patched.status_code == 200
    record = patched.json()
    assert (record["rpm"], record["tpm"], record["name"]) == (None, 9, "a")
    assert record["expires_at"] == "2031-01-02T03:04:05Z"
    assert openai_error(await admin.patch(path, json={"kind": "static"}), 400)["param"] == "kind"
    assert openai_error(await admin.patch(path, json={"name": None}), 400)["param"] == "name"
    assert (await admin.get(path)).json()["name"] == "a"


async def test_bodies_that_are_not_json_objects(admin: httpx.AsyncClient) -> None:
    error = openai_error(await admin.post("/admin/tokens", content=b"{nope"), 400)
    assert error["code"] == "invalid_json"
    openai_error(await admin.post("/admin/tokens", content=b"[1]"), 400)
    openai_error(await admin.post("/admin/tokens", content=b""), 400)
    big = b'{"name": "' + b"x" * 70_000 + b'"}'
    assert openai_error(await admin.post("/admin/tokens", content=big), 413)["code"]


async def test_auth_is_checked_before_the_body(app: App) -> None:
    async with client(app, token=None) as anonymous:
        response = await anonymous.post("/admin/tokens", content=b"{nope")
        assert openai_error(response, 401)["type"] == "authentication_error"
        assert response.headers["www-authenticate"] == "Bearer"
        openai_error(await anonymous.get("/v1/models"), 401)
        openai_error(await anonymous.get("/stats"), 401)
        assert (await anonymous.get("/health")).status_code == 200
    async with client(app, USER_TOKEN) as user:
        # A user token is not an admin token, whatever the body.
        openai_error(await user.post("/admin/tokens", json={"name": "x"}), 401)
        assert (await user.get("/v1/models")).status_code == 200


async def test_unknown_routes_methods_and_ids_are_openai_errors(admin: httpx.AsyncClient) -> None:
    assert openai_error(await admin.get("/nowhere"), 404)["code"] == "not_found"
    assert openai_error(await admin.put("/admin/tokens"), 405)["code"] == "method_not_allowed"
    assert openai_error(await admin.delete("/health"), 405)["code"] == "method_not_allowed"
    missing = await admin.get("/admin/tokens/0123456789abcdef")
    assert openai_error(missing, 404)["code"] == "token_not_found"
    assert openai_error(await admin.get("/admin/tokens/NOT-HEX"), 400)["param"] == "token_id"
    # The hot routes keep their own plain-ASGI answers, the same shape.
    assert openai_error(await admin.get("/v1/chat/completions"), 405)["code"] == (
        "method_not_allowed"
    )


async def test_admin_api_is_off_without_admin_tokens(
    single_provider_config: Path, tmp_path: Path
) -> None:
    settings = inprocess_settings(single_provider_config, tmp_path, admin_tokens=())
    async with running_app(settings) as app, client(app, USER_TOKEN) as http:
        openai_error(await http.get("/admin/tokens"), 404)


async def test_request_ids_and_metrics_cover_the_fastapi_routes(admin: httpx.AsyncClient) -> None:
    sent = await admin.get("/health", headers={"x-request-id": "trace-42"})
    assert sent.headers["x-request-id"] == "trace-42"
    assert (await admin.get("/nowhere")).headers["x-request-id"]
    await admin.post("/admin/tokens", json={})
    scrape = (await admin.get("/metrics")).text
    assert 'best_requests_total{model="",provider="",route="health",status="200"}' in scrape
    assert 'best_requests_total{model="",provider="",route="other",status="404"}' in scrape
    assert 'best_requests_total{model="",provider="",route="admin",status="400"}' in scrape
