"""Teams through the admin API and `best teams`, on one replica with the embedded store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import GatewayProcess, run_cli

pytestmark = pytest.mark.slow  # the gateway runs as a process

ADMIN = "admin-secret"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def gateway(single_provider_config: Path) -> Iterator[GatewayProcess]:
    env = {"P_KEY": "k", "ADMIN_TOKENS": ADMIN}
    with GatewayProcess(single_provider_config, env) as process:
        yield process


def admin(gateway: GatewayProcess) -> httpx.Client:
    return httpx.Client(
        base_url=gateway.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    )


def chat(gateway: GatewayProcess, raw: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {raw}"},
        timeout=10,
    )


def test_team_crud_and_membership(gateway: GatewayProcess) -> None:
    with admin(gateway) as client:
        created = client.post("/admin/teams", json={"name": "Search", "id": "search", "rpm": 3})
        assert created.status_code == 201, created.text
        team = created.json()
        assert team == {
            "id": "search",
            "name": "Search",
            "rpm": 3,
            "tpm": None,
            "max_concurrency": None,
            "budget_usd": None,
            "budget_period": None,
            "cache_ttl_s": None,
            "created_at": team["created_at"],
        }
        assert (
            client.post("/admin/teams", json={"name": "again", "id": "search"}).status_code == 409
        )
        generated = client.post("/admin/teams", json={"name": "Other"}).json()
        assert generated["id"].startswith("team-")

        a = client.post("/admin/tokens", json={"name": "a", "team": "search"}).json()
        b = client.post("/admin/tokens", json={"name": "b"}).json()
        assert a["team"] == "search" and b["team"] is None
        moved = client.patch(f"/admin/tokens/{b['id']}", json={"team": "search"})
        assert moved.status_code == 200 and moved.json()["team"] == "search"

        # The team's rpm binds both tokens together.
        statuses = [chat(gateway, raw).status_code for raw in (a["token"], b["token"]) * 3]
        assert statuses == [200, 200, 200, 429, 429, 429]
        refused = chat(gateway, a["token"])
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "team" in refused.json()["error"]["message"]

        listed = client.get("/admin/teams").json()
        assert listed["object"] == "list"
        assert next(t for t in listed["data"] if t["id"] == "search")["tokens"] == 2

        # A team in use cannot be deleted; once its tokens left, it can.
        busy = client.delete("/admin/teams/search")
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "conflict"
        client.patch(f"/admin/tokens/{a['id']}", json={"team": None})
        client.delete(f"/admin/tokens/{b['id']}")
        assert client.delete("/admin/teams/search").status_code == 200
        assert client.get("/admin/teams/search").status_code == 404
        assert all(t["id"] != "search" for t in client.get("/admin/teams").json()["data"])
        # Without its team, the token has no limit left.
        assert [chat(gateway, a["token"]).status_code for _ in range(4)] == [200] * 4


def test_patch_changes_team_limits_at_once(gateway: GatewayProcess) -> None:
    with admin(gateway) as client:
        client.post("/admin/teams", json={"name": "Ops", "id": "ops"})
        raw = client.post("/admin/tokens", json={"name": "o", "team": "ops"}).json()["token"]
        assert chat(gateway, raw).status_code == 200
        patched = client.patch("/admin/teams/ops", json={"max_concurrency": 5, "rpm": 1})
        assert patched.json()["rpm"] == 1 and patched.json()["max_concurrency"] == 5
        assert chat(gateway, raw).status_code == 200  # the earlier request was not counted
        assert chat(gateway, raw).status_code == 429
        cleared = client.patch("/admin/teams/ops", json={"rpm": None})
        assert cleared.json()["rpm"] is None
        assert chat(gateway, raw).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/admin/teams", {}, "name"),
        ("/admin/teams", {"name": " "}, "name"),
        ("/admin/teams", {"name": "x", "id": "Has Space"}, "id"),
        ("/admin/teams", {"name": "x", "rpm": -2}, "rpm"),
        ("/admin/teams", {"name": "x", "tpm": 1.5}, "tpm"),
        ("/admin/teams", {"name": "x", "colour": "red"}, "colour"),
        ("/admin/teams", {"name": "x", "budget_usd": 5}, "budget_period"),
        ("/admin/teams", {"name": "x", "budget_usd": -1, "budget_period": "day"}, "budget_usd"),
        ("/admin/teams", {"name": "x", "budget_usd": "5", "budget_period": "day"}, "budget_usd"),
        ("/admin/teams", {"name": "x", "budget_usd": 5, "budget_period": "year"}, "budget_period"),
        ("/admin/teams", {"name": "x", "budget_period": "day"}, "budget_period"),
        ("/admin/tokens", {"name": "x", "team": 7}, "team"),
        ("/admin/tokens", {"name": "x", "budget_usd": True, "budget_period": "day"}, "budget_usd"),
    ],
)
def test_admin_body_errors_are_openai_400s(
    gateway: GatewayProcess, path: str, body: dict[str, object], param: str
) -> None:
    with admin(gateway) as client:
        response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_team_patch_errors_are_400s(gateway: GatewayProcess) -> None:
    with admin(gateway) as client:
        client.post("/admin/teams", json={"name": "P", "id": "patchy"})
        for body, param in [
            ({"id": "other"}, "id"),
            ({"name": None}, "name"),
            ({"budget_period": "week"}, "budget_period"),
            ({"max_concurrency": "3"}, "max_concurrency"),
        ]:
            response = client.patch("/admin/teams/patchy", json=body)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"]["param"] == param
        assert client.patch("/admin/teams/nobody", json={"rpm": 1}).status_code == 404
        assert client.post("/admin/teams", content=b"[1,").status_code == 400


def _cli(gateway: GatewayProcess, command: str, *args: str) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(run_cli(gateway.url, ADMIN, command, *args))
    return parsed


def test_cli_teams_round_trip(gateway: GatewayProcess) -> None:
    created = _cli(
        gateway,
        "teams",
        "create",
        "--name",
        "CLI",
        "--id",
        "cli",
        "--rpm",
        "4",
        "--budget-usd",
        "2.5",
        "--budget-period",
        "week",
    )
    assert created["id"] == "cli" and created["rpm"] == 4
    assert created["budget_usd"] == 2.5 and created["budget_period"] == "week"
    token = _cli(gateway, "tokens", "create", "--name", "member", "--team", "cli")
    assert token["team"] == "cli"
    updated = _cli(gateway, "teams", "update", "cli", "--rpm", "0", "--budget-usd", "none")
    assert updated["rpm"] is None and updated["budget_usd"] is None
    assert updated["budget_period"] is None
    listed = _cli(gateway, "teams", "list")
    assert any(t["id"] == "cli" for t in listed["data"])  # type: ignore[attr-defined]
    _cli(gateway, "tokens", "update", str(token["id"]), "--team", "none")
    deleted = _cli(gateway, "teams", "delete", "cli")
    assert deleted["deleted"] is True
