"""A real OpenID provider (npm oauth2-mock-server) issues client_credentials access tokens; the
gateway, configured from the provider's discovery document, takes them as identities."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import eventually, free_port
from tests.identities.issuer import write_auth
from tests.inprocess import ADMIN_TOKEN, client, inprocess_settings, running_app
from tests.tools import require_tool

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("oidc_provider.mjs")
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def provider() -> Iterator[dict[str, Any]]:
    """The provider's discovery document."""
    bin_path = Path(require_tool("oauth2-mock-server")).resolve()
    # node_modules/.bin/oauth2-mock-server -> node_modules/oauth2-mock-server/dist/...
    package = next(p for p in bin_path.parents if p.name == "oauth2-mock-server")
    node = require_tool("node")
    port = free_port()
    process = subprocess.Popen(
        [node, str(SCRIPT), str(package / "dist" / "index.mjs"), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    issuer = f"http://127.0.0.1:{port}"
    try:
        eventually(
            lambda: httpx.get(f"{issuer}/.well-known/openid-configuration").status_code == 200,
            "oauth2-mock-server's discovery document",
            30,
            ignore=(httpx.HTTPError,),
        )
        document: dict[str, Any] = httpx.get(f"{issuer}/.well-known/openid-configuration").json()
        yield document
    finally:
        process.terminate()
        process.wait(10)


def _access_token(token_endpoint: str, client_id: str, audience: str) -> str:
    response = httpx.post(
        token_endpoint,
        data={"grant_type": "client_credentials", "client_id": client_id, "aud": audience},
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@pytest.mark.anyio
async def test_the_providers_access_tokens_are_identities(
    provider: dict[str, Any], tmp_path: Path, single_provider_config: Path
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    for name in ("meta-providers.yaml", "model-adjustments.yaml"):
        (config / name).write_text((single_provider_config / name).read_text())
    write_auth(
        config,
        {
            "name": "mock",
            "issuer": provider["issuer"],
            "audiences": ["best"],
            "jwks_url": provider["jwks_uri"],
            "algorithms": ["RS256"],
            "limits": {"rpm": 2},
        },
    )
    settings = inprocess_settings(config, tmp_path / "data", env={"P_KEY": "k"})
    reporter = _access_token(provider["token_endpoint"], "reporter", "best")
    elsewhere = _access_token(provider["token_endpoint"], "reporter", "another-api")
    async with running_app(settings) as app:
        async with client(app, reporter) as http:
            statuses = [(await http.post("/v1/chat/completions", json=CHAT)).status_code]
            statuses.append((await http.post("/v1/chat/completions", json=CHAT)).status_code)
            statuses.append((await http.post("/v1/chat/completions", json=CHAT)).status_code)
        async with client(app, elsewhere) as http:
            refused = await http.post("/v1/chat/completions", json=CHAT)
        async with client(app, ADMIN_TOKEN) as admin:
            names = [t["name"] for t in (await admin.get("/admin/tokens")).json()["data"]]
    assert statuses == [200, 200, 429]
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_audience"
    assert "mock:reporter" in names
