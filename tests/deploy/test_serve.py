"""`best serve` as a process: a busy port, Ctrl-C, and connections that never finish sending
their request."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.gateway_setup import GATEWAY_ENV, MODEL, TOKEN, write_config
from tests.fakes.upstream import FakeProvider
from tests.harness import GatewayProcess
from tests.tools import REPO

pytestmark = pytest.mark.slow

READ_TIMEOUT_S = 1.0


@pytest.fixture
def config_dir(tmp_path: Path) -> Iterator[Path]:
    with FakeProvider(models=[MODEL]) as fake:
        yield write_config(tmp_path / "config", fake.base_url)


def test_a_busy_port_ends_serve_at_once_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **{k: v for k, v in GatewayProcess(REPO / "config").env.items()},
            "PORT": str(port),
            "CONFIG_DIR": str(REPO / "config"),  # the shipped config, with its leaderboards
            "LOG_LEVEL": "info",
        }
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "service"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert time.monotonic() - started < 15  # the old gateway never exited
    assert done.returncode == 1, done
    errors = [line for line in done.stderr.splitlines() if line.startswith("best:")]
    assert errors == [f"best: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert "Traceback" not in done.stderr


def test_ctrl_c_shuts_down_without_a_traceback(config_dir: Path) -> None:
    gateway = GatewayProcess(config_dir, GATEWAY_ENV)
    # Started as a terminal starts it.  A shell's background job (a CI run started with `&`)
    # hands its children SIGINT ignored; uvicorn still catches the signal, but re-raises it
    # after shutdown under the disposition it found, so the gateway would exit 0, not 130.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        gateway.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        process = gateway._process
        assert process is not None
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    finally:
        gateway.stop()
    logs = gateway.logs()
    assert code == 130, logs
    assert "Traceback" not in logs and "KeyboardInterrupt" not in logs, logs


@pytest.fixture
def gateway(config_dir: Path) -> Iterator[GatewayProcess]:
    env = {**GATEWAY_ENV, "REQUEST_READ_TIMEOUT_S": str(READ_TIMEOUT_S)}
    with GatewayProcess(config_dir, env) as process:
        yield process


def _closed_within(conn: socket.socket, seconds: float) -> float:
    """Seconds until the server closed ``conn`` (reads nothing); fails after ``seconds``."""
    started = time.monotonic()
    conn.settimeout(seconds)
    try:
        data = conn.recv(4096)
    except TimeoutError:
        pytest.fail(f"the connection was still open after {seconds}s")
    except ConnectionResetError:
        data = b""
    assert data == b"", data
    return time.monotonic() - started


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="nothing"),
        pytest.param(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", id="half-headers"),
        pytest.param(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model": ',
            id="half-body",
        ),
    ],
)
def test_a_request_not_sent_in_time_is_closed(gateway: GatewayProcess, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as conn:
        if sent:
            conn.sendall(sent)
        waited = _closed_within(conn, READ_TIMEOUT_S + 4)
    assert waited >= READ_TIMEOUT_S - 0.2


def test_a_slow_but_timely_keep_alive_client_is_served(gateway: GatewayProcess) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as client:
        for _ in range(2):
            assert client.post("/v1/chat/completions", json=body).status_code == 200
