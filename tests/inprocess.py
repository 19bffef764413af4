"""The gateway's ASGI app in this process, driven through ``httpx.ASGITransport``: for every
test that needs no second process (no server, no port, no start-up wait)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from service.app import App
from service.gateway import Gateway
from service.settings import Settings

USER_TOKEN = "sk-user-inprocess"
ADMIN_TOKEN = "sk-admin-inprocess"


def inprocess_settings(config_dir: Path, data_dir: Path, **overrides: object) -> Settings:
    """Embedded store, one static user token and one admin token; provider keys in ``env``."""
    values: dict[str, object] = {
        "config_dir": config_dir,
        "data_dir": data_dir,
        "auth_tokens": (USER_TOKEN,),
        "admin_tokens": (ADMIN_TOKEN,),
        **overrides,
    }
    return Settings.model_validate(values)


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[App]:
    """An ``App`` whose gateway is started (ASGITransport sends no lifespan events)."""
    app = App(Gateway.build(settings))
    await app.gateway.start()
    try:
        yield app
    finally:
        await app.gateway.close()


def client(app: App, token: str | None = USER_TOKEN) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway", headers=headers
    )


def provider_entry(name: str, base_url: str, priority: float, **extra: object) -> dict[str, object]:
    """A meta-providers.yaml entry for provider ``name`` (key in ``<NAME>_KEY``, value "k")."""
    return {
        "name": name,
        "api_key_env_var": f"{name.upper()}_KEY",
        "base_url": base_url,
        "base_priority": priority,
        **extra,
    }


def provider_keys(names: Sequence[str]) -> dict[str, str]:
    """The environment ``provider_entry`` expects: every key variable set to "k"."""
    return {f"{name.upper()}_KEY": "k" for name in names}


# Scoring that keeps the candidate order fixed by base_priority: no exploration.
FIXED_ORDER: dict[str, Any] = {"live": {"explore": 0.0}}


async def create_token(app: App, **fields: object) -> str:
    """A managed token made through ``POST /admin/tokens`` (limits as keyword arguments)."""
    async with client(app, ADMIN_TOKEN) as admin:
        created = await admin.post("/admin/tokens", json={"name": "limited", **fields})
    assert created.status_code == 201, created.text
    token: str = created.json()["token"]
    return token
