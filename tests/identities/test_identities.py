"""JWTs of a trusted issuer at the gateway's edge, in process: a JWKS server on loopback, a
fake provider, the App driven through httpx."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.auth import require_token
from service.api.http import Request
from service.app import App
from service.errors import Unauthorized
from service.identities.identities import identity_id
from tests.identities.issuer import (
    ISSUER,
    JwksServer,
    Key,
    claims,
    hs256_with_public_key,
    issuer_entry,
    sign,
    unsigned,
    write_auth,
)
from tests.inprocess import ADMIN_TOKEN, client, inprocess_settings, running_app

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {"rsa": Key("rsa-1"), "ec": Key("ec-1", "EC"), "stranger": Key("rsa-1")}


@pytest.fixture(scope="module")
def jwks(keys: dict[str, Key]) -> Iterator[JwksServer]:
    server = JwksServer([keys["rsa"], keys["ec"]]).start()
    yield server
    server.stop()


def _config(tmp_path: Path, source: Path, *entries: dict[str, Any]) -> Path:
    config = tmp_path / "config"
    config.mkdir()
    for name in ("meta-providers.yaml", "model-adjustments.yaml"):
        (config / name).write_text((source / name).read_text())
    write_auth(config, *entries)
    return config


@pytest.fixture
async def app(tmp_path: Path, single_provider_config: Path, jwks: JwksServer) -> AsyncIterator[App]:
    entry = issuer_entry(
        jwks.url,
        team_claim="team",
        required_claims={"tenant": "acme"},
        limits={"rpm": 3},
    )
    config = _config(tmp_path, single_provider_config, entry)
    settings = inprocess_settings(config, tmp_path / "data", env={"P_KEY": "k"})
    async with running_app(settings) as started:
        yield started


def _claims(sub: str, **extra: Any) -> dict[str, Any]:
    return claims(sub, tenant="acme", **extra)


async def _chat(app: App, token: str | None, path: str = "/v1/chat/completions") -> httpx.Response:
    async with client(app, token) as http:
        return await http.post(path, json=CHAT)


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- valid tokens ------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["rsa", "ec"])
async def test_a_valid_token_calls_like_a_token(app: App, keys: dict[str, Key], kind: str) -> None:
    token = sign(keys[kind], _claims(f"valid-{kind}"))
    response = await _chat(app, token)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    async with client(app, token) as http:
        assert (await http.get("/v1/models")).status_code == 200


@pytest.mark.anyio
async def test_static_tokens_still_work_beside_identities(app: App) -> None:
    assert (await _chat(app, "sk-user-inprocess")).status_code == 200


@pytest.mark.anyio
async def test_a_remembered_token_skips_the_signature_check(app: App, keys: dict[str, Key]) -> None:
    token = sign(keys["rsa"], _claims("cached"))
    verifier = app.gateway.identities.verifier("corp")
    assert verifier is not None
    before = verifier.verifications
    for _ in range(2):  # the issuer's rpm is 3
        assert (await _chat(app, token)).status_code == 200
    assert verifier.verifications - before == 1
    async with client(app, ADMIN_TOKEN) as http:
        text = (await http.get("/metrics")).text
    assert _metric(text, "best_identity_verifications_total", issuer="corp", result="ok") >= 1
    # A second token of the same subject is verified once too, and is the same identity.
    other = sign(keys["ec"], _claims("cached", jti="another"))
    assert (await _chat(app, other)).status_code == 200
    assert verifier.verifications - before == 2


# -- refusals, one per cause -------------------------------------------------------------------


def _expired(keys: dict[str, Key]) -> str:
    now = int(time.time())
    return sign(keys["rsa"], _claims("late", iat=now - 7200, exp=now - 3600))


def _not_yet_valid(keys: dict[str, Key]) -> str:
    return sign(keys["rsa"], _claims("early", nbf=int(time.time()) + 3600))


def _issued_in_the_future(keys: dict[str, Key]) -> str:
    return sign(keys["rsa"], _claims("early", iat=int(time.time()) + 3600))


def _wrong_signature(keys: dict[str, Key]) -> str:
    # Signed by a key that is not the issuer's, under the issuer's kid.
    return sign(keys["stranger"], _claims("mallory"), kid="rsa-1")


def _alg_none(keys: dict[str, Key]) -> str:
    return unsigned(_claims("mallory"), kid="rsa-1")


def _hs256_public_key(keys: dict[str, Key]) -> str:
    return hs256_with_public_key(keys["rsa"], _claims("mallory"))


def _rsa_alg_on_ec_key(keys: dict[str, Key]) -> str:
    return sign(keys["rsa"], _claims("mallory"), kid="ec-1")


def _forged_kid(keys: dict[str, Key]) -> str:
    return sign(keys["stranger"], _claims("mallory"), kid="forged")


def _wrong_audience(keys: dict[str, Key]) -> str:
    return sign(keys["rsa"], _claims("bob", aud="another-service"))


def _missing_required_claim(keys: dict[str, Key]) -> str:
    return sign(keys["rsa"], claims("bob"))  # no tenant


def _wrong_required_claim(keys: dict[str, Key]) -> str:
    return sign(keys["rsa"], claims("bob", tenant="umbrella"))


def _missing_subject(keys: dict[str, Key]) -> str:
    payload = _claims("bob")
    del payload["sub"]
    return sign(keys["rsa"], payload)


def _missing_exp(keys: dict[str, Key]) -> str:
    payload = _claims("bob")
    del payload["exp"]
    return sign(keys["rsa"], payload)


def _team_not_a_name(keys: dict[str, Key]) -> str:
    return sign(keys["rsa"], _claims("bob", team=["a", "b"]))


REFUSALS = [
    (_expired, "token_expired"),
    (_not_yet_valid, "token_not_yet_valid"),
    (_issued_in_the_future, "token_not_yet_valid"),
    (_wrong_signature, "invalid_signature"),
    (_alg_none, "invalid_algorithm"),
    (_hs256_public_key, "invalid_algorithm"),
    (_rsa_alg_on_ec_key, "invalid_algorithm"),
    (_forged_kid, "unknown_key"),
    (_wrong_audience, "invalid_audience"),
    (_missing_required_claim, "missing_claim"),
    (_missing_subject, "missing_claim"),
    (_missing_exp, "missing_claim"),
    (_wrong_required_claim, "invalid_claim"),
    (_team_not_a_name, "invalid_claim"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("make", "code"), REFUSALS, ids=[m.__name__[1:] for m, _ in REFUSALS])
async def test_each_refusal_is_a_401_naming_its_cause(
    app: App, keys: dict[str, Key], make: Any, code: str
) -> None:
    token = make(keys)
    for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/completions"):
        response = await _chat(app, token, path)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        error = response.json()["error"]
        assert error["type"] == "authentication_error" and error["code"] == code, error
        assert "corp" in error["message"]
        for part in token.split("."):
            if part:
                assert part not in response.text
    async with client(app, token) as http:
        models = await http.get("/v1/models")
    assert models.status_code == 401 and models.json()["error"]["code"] == code


@pytest.mark.anyio
async def test_a_jwt_of_another_issuer_is_answered_as_an_unknown_token(
    app: App, keys: dict[str, Key]
) -> None:
    foreign = sign(keys["rsa"], {**_claims("eve"), "iss": "https://elsewhere.test"})
    unknown = await _chat(app, "sk-never-issued")
    answered = await _chat(app, foreign)
    assert answered.status_code == unknown.status_code == 401
    assert answered.json() == unknown.json()
    assert answered.headers["www-authenticate"] == unknown.headers["www-authenticate"]


# -- identities as quota owners ----------------------------------------------------------------


@pytest.mark.anyio
async def test_an_identity_has_the_issuers_rpm(app: App, keys: dict[str, Key]) -> None:
    token = sign(keys["rsa"], _claims("busy"))
    statuses = [(await _chat(app, token)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    # Another token of the same subject is the same identity: the same window.
    again = sign(keys["ec"], _claims("busy", jti="second"))
    assert (await _chat(app, again)).status_code == 429
    # Another subject has its own.
    assert (await _chat(app, sign(keys["rsa"], _claims("idle")))).status_code == 200


@pytest.mark.anyio
async def test_the_team_claim_names_a_team_and_an_unknown_team_is_403(
    app: App, keys: dict[str, Key]
) -> None:
    denied = await _chat(app, sign(keys["rsa"], _claims("carol", team="platform")))
    assert denied.status_code == 403
    error = denied.json()["error"]
    assert error["type"] == "permission_error" and error["code"] == "unknown_team"
    async with client(app, ADMIN_TOKEN) as admin:
        created = await admin.post(
            "/admin/teams", json={"id": "team-ml", "name": "platform", "rpm": 2}
        )
        assert created.status_code == 201, created.text
    # By name; the team's rpm is shared by its two subjects.
    carol = sign(keys["rsa"], _claims("carol", team="platform"))
    dave = sign(keys["rsa"], _claims("dave", team="team-ml"))  # by id
    statuses = [(await _chat(app, t)).status_code for t in (carol, dave, carol, dave)]
    assert statuses == [200, 200, 429, 429]
    async with client(app, ADMIN_TOKEN) as admin:
        listed = (await admin.get("/admin/tokens")).json()["data"]
        # The team can go: its identities follow their claims, they do not hold it.
        assert (await admin.delete("/admin/teams/team-ml")).status_code == 200
    carols = [t for t in listed if t["name"] == "corp:carol"]
    assert carols and carols[0]["team"] == "team-ml" and carols[0]["kind"] == "identity"
    gone = await _chat(app, carol)
    assert gone.status_code == 403 and gone.json()["error"]["code"] == "unknown_team"


@pytest.mark.anyio
async def test_admin_lists_an_identity_with_usage_and_a_delete_blocks_it(
    app: App, keys: dict[str, Key]
) -> None:
    token = sign(keys["rsa"], _claims("erin"))
    assert (await _chat(app, token)).status_code == 200
    expected = identity_id(ISSUER, "erin")
    async with client(app, ADMIN_TOKEN) as admin:
        rows = {t["id"]: t for t in (await admin.get("/admin/tokens")).json()["data"]}
        assert rows[expected]["name"] == "corp:erin"
        assert rows[expected]["kind"] == "identity"
        assert rows[expected]["rpm"] == 3
        assert rows[expected]["usage"]["requests_last_minute"] == 1
        usage = (await admin.get("/admin/usage", params={"group_by": "token"})).json()["data"]
        assert {"token": expected, "name": "corp:erin"}.items() <= next(
            r for r in usage if r["token"] == expected
        ).items()
        assert (await admin.delete(f"/admin/tokens/{expected}")).status_code == 200
    blocked = await _chat(app, token)
    assert blocked.status_code == 401
    assert "revoked" in blocked.json()["error"]["message"]
    # A fresh token of the same subject is the same, blocked, identity.
    fresh = await _chat(app, sign(keys["ec"], _claims("erin", jti="new")))
    assert fresh.status_code == 401


@pytest.mark.anyio
async def test_the_raw_token_reaches_no_log_line_and_no_metric(
    app: App, keys: dict[str, Key], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = sign(keys["rsa"], _claims("quiet"))
    bad = _wrong_signature(keys)
    expired = _expired(keys)
    for token in (good, good, bad, expired, _forged_kid(keys)):
        await _chat(app, token)
    async with client(app, ADMIN_TOKEN) as admin:
        text = (await admin.get("/metrics")).text
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    for token in (good, bad, expired):
        for part in token.split("."):
            assert part not in logged
            assert part not in text
    assert re.search(r'best_auth_failures_total\{reason="invalid_signature"\} [1-9]', text)


# -- the JWKS server away ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_cached_keys_keep_serving_while_the_jwks_server_is_down(
    app: App, keys: dict[str, Key], jwks: JwksServer
) -> None:
    assert (await _chat(app, sign(keys["rsa"], _claims("first")))).status_code == 200
    jwks.down = True
    try:
        # A token never seen, signed by a cached key: verified with the cached keys.
        fresh = await _chat(app, sign(keys["ec"], _claims("second")))
        assert fresh.status_code == 200
        unknown = await _chat(app, sign(keys["stranger"], _claims("third"), kid="new-kid"))
        assert unknown.json()["error"]["code"] == "unknown_key"
    finally:
        jwks.down = False


# -- auth without static tokens ----------------------------------------------------------------


@pytest.mark.anyio
async def test_trusted_issuers_turn_auth_on_without_static_tokens(
    tmp_path: Path, single_provider_config: Path, jwks: JwksServer, keys: dict[str, Key]
) -> None:
    config = _config(tmp_path, single_provider_config, issuer_entry(jwks.url))
    settings = inprocess_settings(
        config, tmp_path / "data", env={"P_KEY": "k"}, auth_tokens=(), admin_tokens=()
    )
    async with running_app(settings) as app:
        missing = await _chat(app, None)
        other = await _chat(app, "sk-anything")
        valid = await _chat(app, sign(keys["rsa"], claims("frank")))
    assert missing.status_code == 401 and other.status_code == 401
    assert valid.status_code == 200, valid.text


@pytest.mark.anyio
async def test_an_identitys_id_preimage_is_not_a_token(app: App, keys: dict[str, Key]) -> None:
    # The identity exists; its id is the token id of "<issuer> NUL <subject>".
    assert (await _chat(app, sign(keys["rsa"], _claims("olga")))).status_code == 200
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"authorization", f"Bearer {ISSUER}\0olga".encode())],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    with pytest.raises(Unauthorized, match="The API token is unknown"):
        await require_token(app.gateway, Request(scope, receive))


MESSAGE = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.anyio
async def test_an_identity_calls_the_messages_api_in_x_api_key_or_as_a_bearer(
    app: App, keys: dict[str, Key]
) -> None:
    token = sign(keys["rsa"], _claims("claude-user"))
    async with client(app, None) as http:
        by_key = await http.post("/v1/messages", json=MESSAGE, headers={"x-api-key": token})
        by_bearer = await http.post(
            "/v1/messages", json=MESSAGE, headers={"Authorization": f"Bearer {token}"}
        )
    assert by_key.status_code == 200, by_key.text
    assert by_key.json()["type"] == "message"
    assert by_bearer.status_code == 200, by_bearer.text


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("make", "code"), REFUSALS[:3], ids=[m.__name__[1:] for m, _ in REFUSALS[:3]]
)
async def test_a_refused_jwt_on_the_messages_api_is_an_anthropic_401_naming_its_cause(
    app: App, keys: dict[str, Key], make: Any, code: str
) -> None:
    token = make(keys)
    async with client(app, None) as http:
        response = await http.post("/v1/messages", json=MESSAGE, headers={"x-api-key": token})
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert body["error"]["code"] == code, body
    for part in token.split("."):
        if part:
            assert part not in response.text
