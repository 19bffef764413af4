"""The gateway's ASGI app in this process, driven through ``httpx.ASGITransport``: for every
test that needs no second process (no server, no port, no start-up wait)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

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
