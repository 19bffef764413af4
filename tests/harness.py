"""Test harness: real gateway processes and real Redis servers on loopback.

``GatewayProcess`` runs ``python -m service`` with a config folder and environment of the
test's choosing and waits until it answers.  ``RedisServer`` runs ``redis-server`` on a free
port.  ``require_tool`` skips a test when a system tool is missing, but fails it in CI
(``CI=true``), so a green CI run means everything was checked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from devkit.procs import eventually
from devkit.procs import free_port as free_port
from tests.tools import REPO, require_tool


def write_config(
    directory: Path,
    providers: Sequence[Mapping[str, Any]],
    adjustments: Mapping[str, Any] | None = None,
    scoring: Mapping[str, Any] | None = None,
) -> Path:
    """Write a CONFIG_DIR; by default every model gets a positive adjustment (routable)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta-providers.yaml").write_text(yaml.safe_dump({"providers": list(providers)}))
    if adjustments is None:
        adjustments = {"all": {"priority": 1, "regex": ["."]}}
    (directory / "model-adjustments.yaml").write_text(
        yaml.safe_dump({"adjustments": dict(adjustments)})
    )
    if scoring is not None:
        (directory / "scoring.yaml").write_text(yaml.safe_dump(dict(scoring)))
    return directory


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self._dir = tempfile.mkdtemp(prefix="best-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = require_tool("redis-server")
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def pause(self) -> None:
        """SIGSTOP: the server stalls with its sockets open (a frozen VM, a long fork)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
            conn.sendall(b"FLUSHALL\r\n")
            conn.recv(16)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class GatewayProcess:
    """``python -m service`` as a subprocess on a free port."""

    def __init__(self, config_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.config_dir = config_dir
        self.log_path = Path(tempfile.mkstemp(prefix="best-gateway-", suffix=".log")[1])
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "AUTH_TOKENS")},
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "CONFIG_DIR": str(config_dir),
            "DATA_DIR": tempfile.mkdtemp(prefix="best-data-"),
            "LOG_LEVEL": "info",
            **(env or {}),
        }
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> GatewayProcess:
        """Start and wait until it answers (a loaded machine can take tens of seconds to
        import and fork workers); a gateway that does not come up is stopped, not leaked."""
        log = self.log_path.open("ab")
        # Its own process group: stop() also takes down workers (WEB_CONCURRENCY > 1).
        self._process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        process = self._process
        path = "/ready" if wait_ready else "/ok"

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"gateway exited {process.returncode}:\n{self.logs()}")
            return httpx.get(self.url + path, timeout=1).status_code == 200

        try:
            eventually(
                answers, f"gateway {path}", timeout, interval=0.05, ignore=(httpx.HTTPError,)
            )
        except BaseException as exc:
            self.stop()
            if isinstance(exc, TimeoutError):
                raise RuntimeError(f"{exc}:\n{self.logs()}") from None
            raise
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def terminate(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        return self._process.wait(timeout=60)

    def stop(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._process = None

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_cli(url: str, admin_token: str, command: str, *args: str) -> str:
    """``best COMMAND --url URL --admin-token TOKEN ARGS...`` in a subprocess, as an operator
    runs it; returns its stdout (a non-zero exit raises)."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from service.cli import main; sys.exit(main(sys.argv[1:]))",
            command,
            "--url",
            url,
            "--admin-token",
            admin_token,
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
