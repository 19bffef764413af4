"""The admin API and `best tokens` on one replica with the embedded store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from service.quotas.tokens import iso_utc, token_id
from tests.harness import GatewayProcess, run_cli

pytestmark = pytest.mark.slow  # the gateway runs as a process

ADMIN = "admin-secret"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def gateway(single_provider_config: Path) -> Iterator[GatewayProcess]:
    env = {"P_KEY": "k", "ADMIN_TOKENS": f" ,{ADMIN}", "AUTH_TOKENS": "static-one"}
    with GatewayProcess(single_provider_config, env) as process:
        yield process


def admin(gateway: GatewayProcess, token: str = ADMIN) -> httpx.Client:
    return httpx.Client(
        base_url=gateway.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def test_create_list_update_revoke(gateway: GatewayProcess) -> None:
    with admin(gateway) as client:
        created = client.post(
            "/admin/tokens",
            json={"name": "team-a", "rpm": 5, "tpm": None, "expires_at": "2099-01-01T00:00:00Z"},
        )
        assert created.status_code == 201
        record = created.json()
        raw = record["token"]
        assert record["id"] == token_id(raw) and len(record["id"]) == 16
        assert record["kind"] == "managed" and record["rpm"] == 5 and record["tpm"] is None
        assert record["expires_at"] == "2099-01-01T00:00:00Z" and record["revoked"] is False

        chat = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {raw}"},
        )
        assert chat.status_code == 200
        assert chat.headers["x-ratelimit-remaining-requests"] == "4"

        listed = client.get("/admin/tokens").json()
        assert listed["object"] == "list"
        mine = next(t for t in listed["data"] if t["id"] == record["id"])
        assert mine["usage"]["requests_last_minute"] == 1
        assert "token" not in mine
        assert any(t["kind"] == "static" for t in listed["data"])

        patched = client.patch(f"/admin/tokens/{record['id']}", json={"rpm": 1, "tpm": 500})
        assert patched.status_code == 200
        assert patched.json()["rpm"] == 1 and patched.json()["tpm"] == 500
        refused = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {raw}"},
        )
        assert refused.status_code == 429

        revoked = client.delete(f"/admin/tokens/{record['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked"] is True
        gone = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {raw}"},
        )
        assert gone.status_code == 401
    # The raw token never appears in the logs.
    assert raw not in gateway.logs()


@pytest.mark.parametrize(
    ("body", "param_hint"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x", "rpm": -1}, "rpm"),
        ({"name": "x", "tpm": "many"}, "tpm"),
        ({"name": "x", "max_concurrency": True}, "max_concurrency"),
        ({"name": "x", "expires_at": "tomorrow"}, "expires_at"),
        ({"name": "x", "expires_at": "0001-01-01T00:00:00+01:00"}, "out of the supported range"),
        ({"name": "x", "expires_at": "9999-12-31T23:59:59-01:00"}, "out of the supported range"),
    ],
)
def test_invalid_create_is_a_400(
    gateway: GatewayProcess, body: dict[str, object], param_hint: str
) -> None:
    with admin(gateway) as client:
        response = client.post("/admin/tokens", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert param_hint in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "expires_at",
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"],
)
def test_update_with_an_unusable_expiry_is_a_400(gateway: GatewayProcess, expires_at: str) -> None:
    with admin(gateway) as client:
        created = client.post("/admin/tokens", json={"name": "dates"}).json()
        response = client.patch(f"/admin/tokens/{created['id']}", json={"expires_at": expires_at})
        assert response.status_code == 400, response.text
        assert "expires_at" in response.json()["error"]["message"]
        # The token is unchanged: it still never expires.
        assert client.get(f"/admin/tokens/{created['id']}").json()["expires_at"] is None


def test_far_expiry_round_trips_in_iso_8601(gateway: GatewayProcess) -> None:
    with admin(gateway) as client:
        created = client.post(
            "/admin/tokens", json={"name": "far", "expires_at": "9999-12-31T23:59:59Z"}
        )
    assert created.status_code == 201, created.text
    assert created.json()["expires_at"] == "9999-12-31T23:59:59Z"


def test_year_one_is_rendered_with_four_digits() -> None:
    assert iso_utc(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00Z"


def test_admin_auth_and_unknown_ids(gateway: GatewayProcess) -> None:
    assert httpx.get(f"{gateway.url}/admin/tokens").status_code == 401
    with admin(gateway, token="static-one") as client:
        # A client token is not an admin token.
        assert client.get("/admin/tokens").status_code == 401
    with admin(gateway) as client:
        missing = client.patch("/admin/tokens/0123456789abcdef", json={"rpm": 1})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "token_not_found"
        assert client.post("/admin/tokens", content=b"{nope").status_code == 400
        assert client.put("/admin/tokens/0123456789abcdef").status_code == 405
        bad_field = client.patch(
            f"/admin/tokens/{token_id('static-one')}", json={"kind": "managed"}
        )
        assert bad_field.status_code == 400


def test_admin_api_is_off_without_admin_tokens(single_provider_config: Path) -> None:
    with GatewayProcess(single_provider_config, {"P_KEY": "k", "AUTH_TOKENS": "t"}) as process:
        response = httpx.get(f"{process.url}/admin/tokens", headers={"Authorization": "Bearer t"})
    assert response.status_code == 404


def _cli(gateway: GatewayProcess, *args: str) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(run_cli(gateway.url, ADMIN, "tokens", *args))
    return parsed


def test_cli_tokens_round_trip(gateway: GatewayProcess) -> None:
    created = _cli(gateway, "create", "--name", "cli-team", "--rpm", "3", "--max-concurrency", "2")
    tid = str(created["id"])
    assert created["rpm"] == 3 and created["max_concurrency"] == 2
    assert str(created["token"]).startswith("sk-best-")
    listed = _cli(gateway, "list")
    assert any(t["id"] == tid for t in listed["data"])  # type: ignore[attr-defined]
    updated = _cli(gateway, "update", tid, "--rpm", "9")
    assert updated["rpm"] == 9
    revoked = _cli(gateway, "revoke", tid)
    assert revoked["revoked"] is True


def test_registry_survives_a_restart_with_the_embedded_store(
    single_provider_config: Path, tmp_path: Path
) -> None:
    env = {"P_KEY": "k", "ADMIN_TOKENS": ADMIN, "DATA_DIR": str(tmp_path / "data")}
    with GatewayProcess(single_provider_config, env) as first, admin(first) as client:
        raw = client.post("/admin/tokens", json={"name": "durable", "rpm": 7}).json()["token"]
    assert (tmp_path / "data" / "registry.json").exists()
    assert raw not in (tmp_path / "data" / "registry.json").read_text()
    with GatewayProcess(single_provider_config, env) as second:
        response = httpx.post(
            f"{second.url}/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {raw}"},
        )
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "7"
