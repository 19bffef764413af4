"""The gateway's ASGI app in this process, driven through ``httpx.ASGITransport``: for every
test that needs no second process (no server, no port, no start-up wait).  Async tests use
``running_app`` and ``client``; sync tests use ``BackgroundApp``, the same app on an event
loop of its own thread, reached by a sync ``httpx.Client``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

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


T = TypeVar("T")


class BackgroundApp:
    """An ``App`` with its gateway started, on an event loop in a thread of its own, for sync
    tests: ``client()`` is a sync ``httpx.Client`` whose every request the app serves in this
    process (a body sent in chunks arrives in those chunks, without a Content-Length)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="inprocess-app", daemon=True
        )
        self._app: App | None = None

    @property
    def app(self) -> App:
        if self._app is None:
            raise RuntimeError("BackgroundApp is not started")
        return self._app

    def __enter__(self) -> Self:
        self._thread.start()
        self._app = self.run(self._start())
        return self

    async def _start(self) -> App:
        app = App(Gateway.build(self._settings))
        await app.gateway.start()
        return app

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._app is not None:
            self.run(self._app.gateway.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the app's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=60)

    def client(
        self, token: str | None = USER_TOKEN, headers: dict[str, str] | None = None
    ) -> httpx.Client:
        sent = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            transport=_ToBackground(self),
            base_url="http://gateway",
            headers={**sent, **(headers or {})},
        )


class _ToBackground(httpx.BaseTransport):
    def __init__(self, background: BackgroundApp) -> None:
        self._background = background

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        chunks = [bytes(chunk) for chunk in request.stream]  # type: ignore[union-attr]
        sized = "content-length" in request.headers or not chunks
        headers = [
            (name, value)
            for name, value in request.headers.raw
            if name.lower() not in (b"content-length", b"transfer-encoding")
        ]
        app = self._background.app

        async def send() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            forwarded = httpx.Request(
                request.method,
                request.url,
                headers=headers,
                content=b"".join(chunks) if sized else _in_chunks(chunks),
            )
            response = await httpx.ASGITransport(app=app).handle_async_request(forwarded)
            body = await response.aread()
            return response.status_code, response.headers.raw, body

        status, raw, body = self._background.run(send())
        return httpx.Response(status, headers=raw, content=body, request=request)


async def _in_chunks(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
