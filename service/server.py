"""Running the gateway under uvicorn (uvloop + httptools), with a draining shutdown.

On SIGTERM/SIGINT a replica marks itself draining (``/ready`` answers 503), stops accepting
connections, lets running requests and streams finish for up to ``SHUTDOWN_GRACE_S``, then
exits.  With ``WEB_CONCURRENCY > 1`` uvicorn's supervisor runs that many workers, which share a
Prometheus multiprocess directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from types import FrameType
from typing import Any

import uvicorn

from service.app import App
from service.settings import Settings


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: App) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._app.gateway.draining = True
        super().handle_exit(sig, frame)


def _options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s),
        "timeout_keep_alive": 30,
        "backlog": 4096,
    }


def serve(settings: Settings) -> None:
    if settings.web_concurrency > 1:
        _serve_workers(settings)
        return
    from service.app import create_app

    app = create_app(settings)
    _DrainingServer(uvicorn.Config(app, **_options(settings)), app).run()


def _serve_workers(settings: Settings) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    owned = directory is None
    if directory is None:
        directory = tempfile.mkdtemp(prefix="best-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            workers=settings.web_concurrency,
            **_options(settings),
        )
    finally:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)
