"""Graceful shutdown, as the chart's preStop/terminationGracePeriodSeconds assume it: on SIGTERM
a replica stops taking requests but lets a stream in flight finish, then exits cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.gateway_setup import GATEWAY_ENV, MODEL, TOKEN, write_config
from tests.fakes.behaviors import Behavior
from tests.fakes.upstream import FakeProvider
from tests.harness import GatewayProcess, RedisServer
from tests.tools import load_local_fleet

pytestmark = pytest.mark.slow


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with FakeProvider(models=[MODEL]) as fake:
        yield fake


@pytest.fixture
def gateway(
    provider: FakeProvider, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = load_local_fleet().free_port()
    env = {
        **os.environ,
        **GATEWAY_ENV,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "CONFIG_DIR": str(write_config(tmp_path / "config", provider.base_url)),
        "DATA_DIR": str(tmp_path / "data"),
        "SHUTDOWN_GRACE_S": "30",
    }
    env.pop("REDIS_URL", None)
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service"], env=env, cwd=tmp_path, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _ready(url):
            assert process.poll() is None, (tmp_path / "gateway.log").read_text()
            assert time.monotonic() < deadline, "gateway never became ready"
            time.sleep(0.1)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_sigterm_lets_a_running_stream_finish(
    provider: FakeProvider, gateway: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, url = gateway
    # ~9 events, 0.3 s apart: the stream is still running for seconds after SIGTERM.
    provider.set_behavior(Behavior.slow_stream(chunk_delay_s=0.3))
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "a b c d e"}]}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with (
        httpx.Client(base_url=url, headers=headers, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as stream,
    ):
        assert stream.status_code == 200
        lines = stream.iter_lines()
        events = [next(line for line in lines if line.startswith("data: "))]
        process.send_signal(signal.SIGTERM)

        # The replica takes nothing new while it drains: refused, or 503 from /ready.
        with contextlib.suppress(httpx.TransportError):
            assert httpx.get(f"{url}/ready", timeout=2).status_code == 503

        after_sigterm = [line for line in lines if line.startswith("data: ")]
    events += after_sigterm
    assert len(after_sigterm) >= 5, "the stream was not in flight when SIGTERM arrived"
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo: a b c d e"
    # uvicorn re-raises the signal it handled once it has shut down cleanly.
    assert process.wait(timeout=30) in (0, -signal.SIGTERM)


def _stream_body(words: int) -> dict[str, object]:
    text = " ".join(f"w{i}" for i in range(words))
    return {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": text}]}


def test_a_stream_cut_by_the_grace_period_ends_with_an_error_event(
    provider: FakeProvider, tmp_path: Path
) -> None:
    provider.set_behavior(Behavior.slow_stream(chunk_delay_s=0.3))  # ~12 s of events
    env = {**GATEWAY_ENV, "SHUTDOWN_GRACE_S": "1"}
    gateway = GatewayProcess(write_config(tmp_path / "config", provider.base_url), env)
    try:
        gateway.start()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with (
            httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as client,
            client.stream("POST", "/v1/chat/completions", json=_stream_body(40)) as stream,
        ):
            assert stream.status_code == 200
            lines = stream.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            os.kill(gateway.pid, signal.SIGTERM)
            # The old gateway cut the chunked body: httpx raised RemoteProtocolError here.
            events = [line for line in lines if line.startswith("data: ")]
        last = json.loads(events[-1].removeprefix("data: "))
        assert last["error"]["code"] == "shutting_down", events[-3:]
    finally:
        gateway.stop()


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    redis_server.flush()
    return redis_server


def _ready_status(url: str) -> int:
    """``/ready``'s status, or 0 when the connection is refused, closed or reset (one that
    reached the backlog of the socket as it closed is reset by the kernel: refusal too)."""
    try:
        return httpx.get(f"{url}/ready", timeout=3).status_code
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
        return 0


def test_two_workers_refuse_new_connections_at_once_on_sigterm(
    provider: FakeProvider, tmp_path: Path, redis: RedisServer
) -> None:
    provider.set_behavior(Behavior.slow_stream(chunk_delay_s=0.3))
    env = {
        **GATEWAY_ENV,
        "LOG_LEVEL": "info",
        "WEB_CONCURRENCY": "2",
        "REDIS_URL": redis.url,
        "SHUTDOWN_GRACE_S": "30",
    }
    # Two workers importing everything at once start slowly on a busy machine.
    gateway = GatewayProcess(write_config(tmp_path / "config", provider.base_url), env)
    try:
        gateway.start()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with (
            httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as client,
            client.stream("POST", "/v1/chat/completions", json=_stream_body(12)) as stream,
        ):
            assert stream.status_code == 200
            lines = stream.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            os.kill(gateway.pid, signal.SIGTERM)
            # The supervisor has told both workers to stop (it logs one line per worker).
            deadline = time.monotonic() + 5
            while gateway.logs().count("Terminated child process") < 2:
                assert time.monotonic() < deadline, gateway.logs()
                time.sleep(0.05)
            # While the stream drains, new connections are refused or told 503, never left
            # hanging (the old supervisor kept the socket open: accepted, never answered) and
            # never served as if nothing happened (uvicorn alone notices the signal only at
            # its next tick).  Probed for half a second, from the first moment.
            statuses = []
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                started = time.monotonic()
                statuses.append(_ready_status(gateway.url))
                assert time.monotonic() - started < 2.5  # never left waiting
            assert set(statuses) <= {0, 503}, statuses
            events = [line for line in lines if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"  # the running stream still finished
    finally:
        gateway.stop()
