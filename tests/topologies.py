"""Real Redis topologies on loopback: a standalone node, a Cluster, a Sentinel group, TLS.

Every process runs from the Debian ``redis-server`` binary on free loopback ports, with its data
in a temporary folder, in its own process group; fixtures kill them at teardown, and those started
from the main thread are also told by the kernel to die with the test session
(``PR_SET_PDEATHSIG``), so a crashed pytest leaves nothing behind.  Start-up and failover
helpers poll the servers' own state (``cluster_state:ok``, ``role``, ``SENTINEL`` replies); none
sleeps a fixed time.

Fixtures (re-exported by ``tests/conftest.py``):

- ``redis_cluster`` (session): a 3-master + 3-replica ``RedisClusterGroup``; tests must leave it
  with three healthy masters (flush keys freely).
- ``disposable_redis_cluster`` (function): the same, for tests that fail nodes over or kill them.
- ``redis_sentinel_group`` (function): a ``SentinelGroup``: master + replica + 3 sentinels
  watching service ``mymaster``.
- ``tls_redis`` (session): a ``RedisNode`` serving only TLS with a certificate made by openssl at
  test time; ``tls_redis.tls`` holds the CA path.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from devkit.procs import eventually, free_port
from tests.tools import require_tool

T = TypeVar("T")

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


def _own_group() -> None:
    os.setpgrp()  # a process group of its own: a kill takes down nothing else


def _own_group_dying_with_parent() -> None:
    # Runs in the child between fork and exec: SIGKILL it when the test session dies.
    _own_group()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _preexec() -> Callable[[], None]:
    # The kernel's "parent died" is the forking *thread* exiting: only the main thread's
    # children can ask for it (a helper thread's children would die with the thread).
    if threading.current_thread() is threading.main_thread():
        return _own_group_dying_with_parent
    return _own_group


def wait_until(check: Callable[[], T | None], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll ``check`` (Redis and lookup errors count as not yet) until it returns a truthy
    value."""
    return eventually(check, what, timeout, ignore=(redis.RedisError, OSError, LookupError))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A free port whose +10000 neighbour (the Cluster bus port) is free too."""
    for _ in range(200):
        port = random.randint(20000, 30000)
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair found")


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1/localhost; it is its own CA."""
    openssl = require_tool("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return TlsFiles(ca=cert, cert=cert, key=key)


def redis_tls_built() -> bool:
    """Whether this redis-server was built with TLS (Debian's is)."""
    binary = require_tool("redis-server")
    done = subprocess.run(
        [binary, "--port", "0", "--tls-port", "1", "--loglevel", "warning"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    # A TLS build complains about the missing certificate; one without TLS about the option.
    return "not supported" not in (done.stdout + done.stderr).lower() and (
        "tls" in (done.stdout + done.stderr).lower()
    )


class RedisNode:
    """One ``redis-server`` (or ``--sentinel``) process on loopback."""

    def __init__(
        self,
        port: int,
        directory: Path,
        args: Sequence[str] = (),
        *,
        sentinel_conf: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.port = port
        self.dir = directory
        self.args = list(args)
        self.sentinel_conf = sentinel_conf
        self.password = password
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _command(self) -> list[str]:
        binary = require_tool("redis-server")
        if self.sentinel_conf is not None:
            conf = self.dir / "sentinel.conf"
            if not conf.exists():  # sentinels rewrite their file: keep it across restarts
                conf.write_text(self.sentinel_conf)
            return [binary, str(conf), "--sentinel"]
        port_args = ["--port", str(self.port)]
        if self.tls is not None:
            port_args = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls.cert),
                "--tls-key-file",
                str(self.tls.key),
                "--tls-ca-cert-file",
                str(self.tls.ca),
                "--tls-auth-clients",
                "no",
            ]
        return [
            binary,
            *port_args,
            "--bind",
            HOST,
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            # Replicas sync at once (the default waits 5 s for more replicas to share a sync).
            "--repl-diskless-sync-delay",
            "0",
            "--logfile",
            str(self.dir / "redis.log"),
            *self.args,
        ]

    def start(self, wait: bool = True) -> RedisNode:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            self._command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_preexec(),
        )
        if wait:
            wait_until(self.ping, timeout=10, what=f"redis on {self.address}")
        return self

    def client(self, **kwargs: Any) -> redis.Redis:
        """A plain (sync) client of this node, for set-up and assertions."""
        options: dict[str, Any] = {"socket_timeout": 2, "socket_connect_timeout": 2}
        if self.password is not None:
            options["password"] = self.password
        if self.tls is not None:
            options.update(ssl=True, ssl_ca_certs=str(self.tls.ca))
        return redis.Redis(host=HOST, port=self.port, **{**options, **kwargs})

    def ping(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis on {self.address} exited with {self.process.returncode}")
        with self.client(socket_timeout=0.5, socket_connect_timeout=0.5) as conn:
            return bool(conn.ping())

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as conn:
            info: dict[str, Any] = conn.info(section)
            return info

    def role(self) -> str:
        return str(self.info("replication")["role"])

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def restart_empty(self, wait: bool = True) -> RedisNode:
        """Kill and start again on the same port with no data (cluster/sentinel state kept)."""
        self.kill()
        for name in ("dump.rdb", "appendonlydir"):
            path = self.dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return self.start(wait=wait)

    def close(self) -> None:
        self.kill()


def _start_all(nodes: Sequence[RedisNode]) -> None:
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        wait_until(node.ping, timeout=10, what=f"redis on {node.address}")


class RedisClusterGroup:
    """3 masters + 3 replicas (``--cluster-replicas 1``), cluster bus on port + 10000."""

    def __init__(self, directory: Path, masters: int = 3, node_timeout_ms: int = 1500) -> None:
        self.dir = directory
        self.nodes = [
            RedisNode(
                port,
                directory / str(port),
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    # Keep serving the other slots while one master is being replaced.
                    "--cluster-require-full-coverage",
                    "no",
                ],
            )
            for port in (free_port_pair() for _ in range(masters * 2))
        ]
        self.masters_wanted = masters

    @property
    def startup_nodes(self) -> str:
        return ",".join(node.address for node in self.nodes)

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node."""
        return f"redis+cluster://{self.startup_nodes}"

    def node(self, port: int) -> RedisNode:
        return next(node for node in self.nodes if node.port == port)

    def start(self) -> RedisClusterGroup:
        # What ``redis-cli --cluster create --cluster-replicas 1`` does, minus its fixed sleeps
        # (7 s against about 2 s here): slots in three ranges, distinct epochs, MEET, REPLICATE.
        _start_all(self.nodes)
        masters, replicas = self.nodes[: self.masters_wanted], self.nodes[self.masters_wanted :]
        bounds = [16384 * i // len(masters) for i in range(len(masters) + 1)]
        for index, node in enumerate(masters):
            with node.client() as conn:
                conn.execute_command(
                    "CLUSTER", "ADDSLOTSRANGE", bounds[index], bounds[index + 1] - 1
                )
                conn.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
        for node in self.nodes:  # everyone meets everyone: no waiting on gossip rounds
            with node.client() as conn:
                for other in self.nodes:
                    if other is not node:
                        conn.execute_command("CLUSTER", "MEET", HOST, other.port)
        wait_until(self._all_known, what="every cluster node to know the others")
        for master, replica in zip(masters, replicas, strict=True):
            with replica.client() as conn:
                conn.execute_command("CLUSTER", "REPLICATE", self._node_id(master))
        self.wait_healthy()
        return self

    def _all_known(self) -> bool:
        for node in self.nodes:
            with node.client() as conn:
                text = _text(conn.execute_command("CLUSTER", "NODES"))
            rows = text.splitlines()
            if len(rows) != len(self.nodes) or "handshake" in text or "noaddr" in text:
                return False
        return True

    def running(self) -> list[RedisNode]:
        return [node for node in self.nodes if node.process is not None]

    def masters(self) -> list[RedisNode]:
        return [node for node in self.running() if node.role() == "master"]

    def replica_of(self, master: RedisNode) -> RedisNode:
        """The running replica of ``master`` (from the master's own INFO replication)."""
        info = master.info("replication")
        replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        for replica in replicas:
            node = self.node(int(replica["port"]))
            if node.process is not None:
                return node
        raise LookupError(f"no replica of {master.address}")

    def _node_id(self, node: RedisNode) -> str:
        with node.client() as conn:
            return _text(conn.execute_command("CLUSTER", "MYID"))

    def _healthy(self) -> bool:
        masters = 0
        for node in self.running():
            info = node.info("replication")
            with node.client() as conn:
                state = conn.execute_command("CLUSTER", "INFO")
            if "cluster_state:ok" not in _text(state):
                return False
            if info["role"] == "master":
                masters += 1
            elif info.get("master_link_status") != "up":
                return False
        return masters == self.masters_wanted

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Until every running node says ``cluster_state:ok``, three masters, replicas synced."""
        wait_until(self._healthy, timeout=timeout, what="cluster_state:ok on every node")

    def master_for_key(self, key: str) -> RedisNode:
        """The master serving ``key``'s slot now."""
        with self.masters()[0].client() as conn:
            slot = int(conn.execute_command("CLUSTER", "KEYSLOT", key))
            ranges = conn.execute_command("CLUSTER", "SLOTS")
        for start, end, owner, *_replicas in ranges:
            if int(start) <= slot <= int(end):
                return self.node(int(owner[1]))
        raise LookupError(f"no master serves {key!r}")

    def failover(self, master: RedisNode) -> RedisNode:
        """Manual failover: ``CLUSTER FAILOVER`` on ``master``'s replica; returns the new master."""
        replica = self.replica_of(master)
        with replica.client() as conn:
            conn.execute_command("CLUSTER", "FAILOVER")
        wait_until(lambda: replica.role() == "master", what=f"{replica.address} promoted")
        self.wait_healthy()
        return replica

    def kill_master(self, master: RedisNode) -> RedisNode:
        """SIGKILL ``master``; returns its replica once the cluster has promoted it."""
        replica = self.replica_of(master)
        master.kill()
        wait_until(
            lambda: replica.role() == "master", timeout=20, what=f"{replica.address} promoted"
        )
        self.wait_healthy()
        return replica

    def flush(self) -> None:
        for node in self.masters():
            with node.client() as conn:
                conn.flushall()

    def close(self) -> None:
        for node in self.nodes:
            node.close()


SENTINEL_SERVICE = "mymaster"


def lone_sentinel(directory: Path, master: RedisNode, epoch: int = 0) -> RedisNode:
    """A sentinel of its own watching ``master`` as ``mymaster`` (quorum 1) at config epoch
    ``epoch``: what one sentinel says, whatever any other says."""
    port = free_port()
    conf = [
        f"port {port}",
        f"bind {HOST}",
        f"dir {directory}",
        f"sentinel monitor {SENTINEL_SERVICE} {HOST} {master.port} 1",
        f"sentinel config-epoch {SENTINEL_SERVICE} {epoch}",
    ]
    return RedisNode(port, directory, sentinel_conf="\n".join(conf) + "\n").start()


class SentinelGroup:
    """A master, one replica and three sentinels (quorum 2) watching ``mymaster``."""

    def __init__(
        self, directory: Path, *, password: str | None = None, sentinel_password: str | None = None
    ) -> None:
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        master_port, replica_port = free_port(), free_port()
        self.master = RedisNode(master_port, directory / "a", auth, password=password)
        self.replica = RedisNode(
            replica_port,
            directory / "b",
            [*auth, "--replicaof", HOST, str(master_port)],
            password=password,
        )
        self.data_nodes = [self.master, self.replica]
        # Each sentinel is told its peers and the replica up front (the lines sentinels write
        # into their own files), so the group is ready at once instead of after rounds of hello
        # messages (2 s each) and INFO polls (10 s).
        ports = [free_port() for _ in range(3)]
        ids = [f"{index + 1:040x}" for index in range(3)]
        self.sentinels: list[RedisNode] = []
        for index, port in enumerate(ports):
            lines = [
                f"port {port}",
                f"bind {HOST}",
                f"dir {directory / f's{index}'}",
                f"sentinel myid {ids[index]}",
                f"sentinel monitor {SENTINEL_SERVICE} {HOST} {master_port} 2",
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000",
                f"sentinel failover-timeout {SENTINEL_SERVICE} 3000",
                f"sentinel parallel-syncs {SENTINEL_SERVICE} 1",
                f"sentinel known-replica {SENTINEL_SERVICE} {HOST} {replica_port}",
                *(
                    f"sentinel known-sentinel {SENTINEL_SERVICE} {HOST} {peer} {ids[other]}"
                    for other, peer in enumerate(ports)
                    if other != index
                ),
            ]
            if password:
                lines.append(f"sentinel auth-pass {SENTINEL_SERVICE} {password}")
            if sentinel_password:
                lines.append(f"requirepass {sentinel_password}")
            self.sentinels.append(
                RedisNode(
                    port,
                    directory / f"s{index}",
                    sentinel_conf="\n".join(lines) + "\n",
                    password=sentinel_password,
                )
            )

    def url(self, scheme: str = "redis+sentinel", userinfo: str = "") -> str:
        hosts = ",".join(sentinel.address for sentinel in self.sentinels)
        return f"{scheme}://{userinfo}{hosts}/{SENTINEL_SERVICE}"

    def start(self) -> SentinelGroup:
        _start_all(self.data_nodes)
        wait_until(
            lambda: self.replica.info("replication").get("master_link_status") == "up",
            what="replica in sync",
        )
        _start_all(self.sentinels)
        # Ready when every sentinel knows the replica and the two other sentinels (failover needs
        # both: a promotion target and a quorum of peers to elect a leader).
        wait_until(self._sentinels_ready, timeout=30, what="sentinels to discover each other")
        return self

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as conn:
                fields = conn.sentinel_master(SENTINEL_SERVICE)
            if int(fields["num-slaves"]) < 1 or int(fields["num-other-sentinels"]) < 2:
                return False
        return True

    def master_port(self) -> int:
        """The master's port according to the sentinels (all must agree)."""
        ports = set()
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            with sentinel.client() as conn:
                _host, port = conn.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
            ports.add(int(port))
        if len(ports) != 1:
            raise LookupError(f"sentinels disagree: {ports}")
        return ports.pop()

    def current_master(self) -> RedisNode:
        port = self.master_port()
        return next(node for node in self.data_nodes if node.port == port)

    def kill_master(self, timeout: float = 20.0) -> tuple[RedisNode, RedisNode]:
        """SIGKILL the master; returns (old, new) once the replica is promoted and announced."""
        old = self.current_master()
        new = next(node for node in self.data_nodes if node is not old)
        old.kill()
        wait_until(
            lambda: self.master_port() == new.port and new.role() == "master",
            timeout=timeout,
            what="sentinel promotion",
        )
        return old, new

    def manual_failover(self) -> RedisNode:
        """``SENTINEL FAILOVER``: the live master is demoted; returns the new master."""
        old = self.current_master()
        new = next(node for node in self.data_nodes if node is not old)
        with self.sentinels[0].client() as conn:
            conn.execute_command("SENTINEL", "FAILOVER", SENTINEL_SERVICE)
        wait_until(
            lambda: self.master_port() == new.port and new.role() == "master",
            what="sentinel manual failover",
        )
        return new

    def revive_as_replica(self, node: RedisNode, timeout: float = 20.0) -> None:
        """Start a killed ex-master (empty) and wait until the sentinels made it a replica."""
        if node.process is None:
            node.restart_empty(wait=True)
        wait_until(
            lambda: node.info("replication").get("master_link_status") == "up",
            timeout=timeout,
            what=f"{node.address} reconfigured as replica",
        )

    def close(self) -> None:
        for node in [*self.sentinels, *self.data_nodes]:
            node.close()


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


@contextlib.contextmanager
def _tempdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterGroup]:
    """A shared 3-master + 3-replica Cluster; leave it with its three masters healthy."""
    with _tempdir("best-cluster-") as directory:
        group = RedisClusterGroup(directory)
        try:
            yield group.start()
        finally:
            group.close()


@pytest.fixture
def disposable_redis_cluster() -> Iterator[RedisClusterGroup]:
    """A Cluster of this test's own, to fail over or kill nodes of."""
    with _tempdir("best-cluster-") as directory:
        group = RedisClusterGroup(directory)
        try:
            yield group.start()
        finally:
            group.close()


@pytest.fixture
def redis_sentinel_group() -> Iterator[SentinelGroup]:
    """Master + replica + 3 sentinels of this test's own (service ``mymaster``)."""
    with _tempdir("best-sentinel-") as directory:
        group = SentinelGroup(directory)
        try:
            yield group.start()
        finally:
            group.close()


@pytest.fixture(scope="session")
def tls_redis() -> Iterator[RedisNode]:
    """A TLS-only redis-server; its self-signed certificate is ``tls_redis.tls.ca``."""
    if not redis_tls_built():
        pytest.fail("redis-server was built without TLS")
    with _tempdir("best-tls-") as directory:
        node = RedisNode(free_port(), directory / "node", tls=make_tls_files(directory))
        try:
            yield node.start()
        finally:
            node.close()
