"""The docker-compose topology as plain processes on loopback, for machines without Docker.

Redis (no persistence), N gateway replicas sharing it, nginx in front of them with the
compose load-balancer config (``deploy/nginx/nginx.conf``), and Prometheus scraping every
replica with the compose scrape config and alert rules (``deploy/prometheus/``). Every port
is free-picked on 127.0.0.1 unless given; everything is written to one temporary folder.

From Python (tests)::

    with LocalFleet(config_dir, env={"AUTH_TOKENS": "t"}) as fleet:
        httpx.get(f"{fleet.lb_url}/v1/models", headers=...)
        fleet.prometheus_query("sum(best_requests_total)")

From a shell::

    uv run python deploy/local_fleet.py --config-dir config --lb-port 8080

The gateway replicas run ``python -m service`` with this interpreter; pass ``command`` to run
something else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

# Run as a script, this file sees only its own folder: the shared helpers live at the root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from devkit.procs import free_port

DEPLOY_DIR = Path(__file__).resolve().parent
NGINX_CONF = DEPLOY_DIR / "nginx" / "nginx.conf"
PROMETHEUS_CONF = DEPLOY_DIR / "prometheus" / "prometheus.yml"
ALERT_RULES = DEPLOY_DIR / "prometheus" / "alerts.yml"

# The compose config names its replicas gateway-1..N on port 12345 and listens on 8080.
_COMPOSE_SERVER = re.compile(r"^([ \t]*)server\s+gateway-\d+:\d+(.*);[ \t]*$", re.MULTILINE)
_COMPOSE_LISTEN = re.compile(r"^([ \t]*)listen\s+8080;[ \t]*$", re.MULTILINE)


class FleetError(RuntimeError):
    """A process of the fleet did not start or is missing."""


def find_binary(name: str) -> str | None:
    """``name`` on PATH, or in /usr/sbin (nginx lives there and is often not on PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    return found


def render_nginx_conf(replica_ports: Sequence[int], listen_port: int, workdir: Path) -> str:
    """A complete nginx.conf for an unprivileged nginx: the compose server block, with the
    replicas and the listen address moved to loopback, and every path inside ``workdir``."""
    compose = NGINX_CONF.read_text()
    matches = list(_COMPOSE_SERVER.finditer(compose))
    if not matches:
        raise FleetError(f"no 'server gateway-N:PORT' lines in {NGINX_CONF}")
    indent, options = matches[0].group(1), matches[0].group(2)
    servers = "".join(f"{indent}server 127.0.0.1:{port}{options};\n" for port in replica_ports)
    start, end = matches[0].start(), matches[-1].end()
    site = compose[:start] + servers.rstrip("\n") + compose[end:]
    site, listens = _COMPOSE_LISTEN.subn(rf"\1listen 127.0.0.1:{listen_port};", site)
    if listens != 1:
        raise FleetError(f"expected one 'listen 8080;' in {NGINX_CONF}")
    temp = workdir / "nginx-temp"
    temp_paths = "\n".join(
        f"    {kind}_temp_path {temp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "daemon off;\n"
        "worker_processes 1;\n"
        f"pid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'nginx-error.log'} warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"    access_log {workdir / 'nginx-access.log'};\n"
        f"{temp_paths}\n"
        f"{site}\n"
        "}\n"
    )


def render_prometheus_conf(
    replica_ports: Sequence[int], scrape_interval: str = "1s", rules: Path = ALERT_RULES
) -> dict[str, Any]:
    """The compose Prometheus config, scraping the loopback replicas every ``scrape_interval``."""
    conf: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONF.read_text())
    conf["global"]["scrape_interval"] = scrape_interval
    conf["global"]["evaluation_interval"] = scrape_interval
    conf["rule_files"] = [str(rules)]
    (job,) = conf["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}" for port in replica_ports]}]
    return conf


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body of a GET; (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, TimeoutError):
        return 0, b""


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LocalFleet:
    """Redis, gateway replicas, nginx and Prometheus on loopback; ``stop()`` ends them all."""

    def __init__(
        self,
        config_dir: Path | str,
        *,
        replicas: int = 3,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        workdir: Path | str | None = None,
        cwd: Path | str | None = None,
        lb_port: int = 0,
        prometheus_port: int = 0,
        prometheus: bool = True,
        scrape_interval: str = "1s",
        startup_timeout: float = 60.0,
    ) -> None:
        self.config_dir = Path(config_dir).resolve()
        self.replicas = replicas
        self.env = dict(env or {})
        self.command = list(command or [sys.executable, "-m", "service"])
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="best-fleet-")).resolve()
        self.cwd = Path(cwd).resolve() if cwd else self.workdir
        self.with_prometheus = prometheus
        self.scrape_interval = scrape_interval
        self.startup_timeout = startup_timeout
        self.redis_port = free_port()
        self.replica_ports = [free_port() for _ in range(replicas)]
        self.lb_port = lb_port or free_port()
        self.prometheus_port = prometheus_port or free_port()
        self._processes: list[_Process] = []

    # ------------------------------------------------------------------ addresses

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def replica_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.replica_ports]

    @property
    def lb_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Start every process and wait until each answers; on failure, stop what started."""
        try:
            self._start_redis()
            self._start_replicas()
            self._start_nginx()
            if self.with_prometheus:
                self._start_prometheus()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop in reverse order: SIGTERM (replicas drain), then SIGKILL after ``timeout``."""
        while self._processes:
            process = self._processes.pop()
            if process.popen.poll() is None:
                self._signal(process, signal.SIGTERM)
                try:
                    process.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._signal(process, signal.SIGKILL)
                    process.popen.wait()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ Prometheus

    def prometheus_query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        status, body = http_get(url, timeout=5.0)
        if status != 200:
            raise FleetError(f"Prometheus answered {status} to {promql!r}: {body[:300]!r}")
        result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
        return result

    def wait_for_targets(self, timeout: float = 30.0) -> None:
        """Wait until Prometheus has scraped every replica successfully."""
        expected = self.replicas

        def all_up() -> bool:
            samples = self.prometheus_query('up{job="best"} == 1')
            return len(samples) == expected

        self._wait("Prometheus scraping every replica", all_up, timeout)

    # ------------------------------------------------------------------ processes

    def _start_redis(self) -> None:
        binary = self._require("redis-server")
        self._spawn(
            "redis",
            [
                *(binary, "--port", str(self.redis_port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
            ],
        )
        self._wait("redis", self._redis_pings, self.startup_timeout)

    def _start_replicas(self) -> None:
        for index, port in enumerate(self.replica_ports, start=1):
            data_dir = self.workdir / f"gateway-{index}" / "data"
            data_dir.mkdir(parents=True, exist_ok=True)
            env = {
                **os.environ,
                **self.env,
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "REDIS_URL": self.redis_url,
                "CONFIG_DIR": str(self.config_dir),
                "DATA_DIR": str(data_dir),
            }
            self._spawn(f"gateway-{index}", self.command, env=env, cwd=self.cwd)
        for index, url in enumerate(self.replica_urls, start=1):
            self._wait(f"gateway-{index} /ready", self._answers(f"{url}/ready"))

    def _start_nginx(self) -> None:
        binary = self._require("nginx")
        conf = self.workdir / "nginx.conf"
        conf.write_text(render_nginx_conf(self.replica_ports, self.lb_port, self.workdir))
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "nginx-temp" / kind).mkdir(parents=True, exist_ok=True)
        # -e: the error log before the config is read, which defaults to a root-owned file.
        error_log = str(self.workdir / "nginx-error.log")
        self._spawn("nginx", [binary, "-p", str(self.workdir), "-c", str(conf), "-e", error_log])
        self._wait("nginx", self._answers(f"{self.lb_url}/health"))

    def _start_prometheus(self) -> None:
        binary = self._require("prometheus")
        conf = self.workdir / "prometheus.yml"
        rendered = render_prometheus_conf(self.replica_ports, self.scrape_interval)
        conf.write_text(yaml.safe_dump(rendered, sort_keys=False))
        self._spawn(
            "prometheus",
            [
                binary,
                f"--config.file={conf}",
                f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
                "--log.level=warn",
            ],
        )
        self._wait("prometheus", self._answers(f"{self.prometheus_url}/-/ready"))

    def _spawn(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            # Own session: Ctrl-C in the CLI reaches only us, and we stop children in order.
            popen = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd or self.workdir,
                start_new_session=True,
            )
        self._processes.append(_Process(name, popen, log))

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while time.monotonic() < deadline:
            for process in self._processes:
                if process.popen.poll() is not None:
                    raise FleetError(
                        f"{process.name} exited with {process.popen.returncode} while waiting "
                        f"for {what}; its log:\n{process.tail()}"
                    )
            if ready():
                return
            time.sleep(0.1)
        logs = "\n".join(f"--- {p.name}\n{p.tail(10)}" for p in self._processes)
        raise FleetError(f"timed out waiting for {what}\n{logs}")

    def _redis_pings(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @staticmethod
    def _answers(url: str) -> Callable[[], bool]:
        return lambda: http_get(url)[0] == 200

    @staticmethod
    def _require(name: str) -> str:
        binary = find_binary(name)
        if binary is None:
            raise FleetError(f"{name} is not installed (needed by the local fleet)")
        return binary

    @staticmethod
    def _signal(process: _Process, signum: signal.Signals) -> None:
        # The whole session: `uv run` or a worker supervisor may have children of its own.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-dir", default="config", help="CONFIG_DIR of every replica")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--lb-port", type=int, default=8080, help="nginx port (0 = any free)")
    parser.add_argument("--prometheus-port", type=int, default=9090, help="0 = any free")
    parser.add_argument("--no-prometheus", action="store_true")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra gateway env"
    )
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    fleet = LocalFleet(
        args.config_dir,
        replicas=args.replicas,
        env=env,
        cwd=Path.cwd(),  # so a .env here (provider keys, tokens) reaches the replicas
        lb_port=args.lb_port,
        prometheus_port=args.prometheus_port,
        prometheus=not args.no_prometheus,
        scrape_interval="5s",
    )
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    with fleet:
        print(f"redis       {fleet.redis_url}")
        for index, url in enumerate(fleet.replica_urls, start=1):
            print(f"gateway-{index}   {url}")
        print(f"nginx (LB)  {fleet.lb_url}")
        if fleet.with_prometheus:
            print(f"prometheus  {fleet.prometheus_url}")
        print(f"logs        {fleet.workdir}\nCtrl-C stops everything.", flush=True)
        stopped.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
