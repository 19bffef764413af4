"""Running the gateway under uvicorn (uvloop + httptools), with a draining shutdown.

The listening socket is bound before anything else starts, so a port in use ends
``best serve`` at once with one line.  On SIGTERM/SIGINT a replica marks itself draining
(``/ready`` answers 503), stops accepting connections, lets running requests and streams
finish for up to ``SHUTDOWN_GRACE_S``, then exits.  With ``WEB_CONCURRENCY > 1`` a supervisor
runs that many workers on the shared socket (and a shared Prometheus multiprocess directory);
it closes its own copy of the socket first, so new connections are refused while the workers
drain instead of waiting in a backlog nobody reads.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess, multiprocess
from uvicorn.supervisors.multiprocess import Process

from service.protocol import GatewayProtocol, ServerConfig, mark_draining
from service.settings import Settings

log = logging.getLogger("best")


class ServeError(Exception):
    """The server cannot start (the port is taken, the address is unusable)."""


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM/SIGINT at once marks the app draining (``/ready``
    answers 503) and stops accepting connections.  uvicorn alone notices the signal only at
    its next tick (up to 0.1 s later, more on a busy loop) and meanwhile answers new
    connections as if nothing happened."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        mark_draining(getattr(self.config, "loaded_app", None))
        if self.started:
            for server in self.servers:
                server.close()  # idempotent: uvicorn's shutdown closes them again
        super().handle_exit(sig, frame)


class _Worker(Process):
    """A supervised worker process that runs the draining server."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = _DrainingServer(config=self.config)
        return self._server


class _Supervisor(Multiprocess):
    """uvicorn's worker supervisor, closing its copy of the listening socket as soon as it is
    told to stop: once the workers close theirs, new connections are refused."""

    def _stop_listening(self) -> None:
        for sock in self.sockets:
            sock.close()

    def handle_term(self) -> None:
        self._stop_listening()
        super().handle_term()

    def handle_int(self) -> None:
        self._stop_listening()
        super().handle_int()


WORKER_START_S = 30


def _config(app: Any, settings: Settings, **extra: Any) -> ServerConfig:
    config = ServerConfig(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=GatewayProtocol,
        lifespan="on",
        access_log=False,
        # The gateway reads no client address or scheme: X-Forwarded-* need no rewriting.
        proxy_headers=False,
        server_header=False,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        timeout_keep_alive=30,
        backlog=4096,
        **extra,
    )
    config.read_timeout_s = settings.request_read_timeout_s
    return config


def _bind(settings: Settings) -> socket.socket:
    """The listening socket, bound before anything starts; ServeError when it cannot be."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise ServeError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None
    sock.set_inheritable(True)
    log.info("listening on %s:%d", settings.host, settings.port)
    return sock


def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; raises ServeError when the address cannot be bound."""
    sock = _bind(settings)
    if settings.web_concurrency > 1:
        _serve_workers(settings, sock)
        return
    from service.app import create_app

    _DrainingServer(_config(create_app(settings), settings)).run(sockets=[sock])


def _serve_workers(settings: Settings, sock: socket.socket) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    owned = directory is None
    if directory is None:
        directory = tempfile.mkdtemp(prefix="best-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:
        config = _config(
            "service.app:create_app",
            settings,
            factory=True,
            workers=settings.web_concurrency,
            # uvicorn's default (5 s) kills a worker still importing on a busy node and starts
            # another, which is as slow: a loop in which the replica never becomes ready.
            timeout_worker_healthcheck=WORKER_START_S,
        )
        # uvicorn's supervisor makes its workers from this module-level name; ours drain.
        multiprocess.Process = _Worker  # type: ignore[misc]
        _Supervisor(config, sockets=[sock]).run()
    finally:
        sock.close()
        if owned:
            shutil.rmtree(directory, ignore_errors=True)
