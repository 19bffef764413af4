"""connection.py against real topologies on loopback: standalone (TCP, unix, ACL, TLS), Cluster
(explicit and detected, pub/sub, script pipelines, failovers) and Sentinel (promotions)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis
from redis.exceptions import (
    AuthenticationError,
    MasterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from service.store.connection import (
    RedisTopology,
    RedisUrlError,
    connect_url,
    parse_redis_url,
    sentinel_master_client,
)
from tests.harness import RedisServer
from tests.topologies import (
    HOST,
    RedisClusterGroup,
    RedisNode,
    SentinelGroup,
    free_port,
    lone_sentinel,
    wait_until,
)

T = TypeVar("T")

# A script that writes: the kind of call the store batches.
INCR_SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def run(url: str, body: Callable[[RedisTopology], Awaitable[T]], **options: Any) -> T:
    async def main() -> T:
        topology = await connect_url(url, **options)
        try:
            return await body(topology)
        finally:
            await topology.aclose()

    return asyncio.run(main())


async def roundtrip(topology: RedisTopology, key: str = "k") -> bytes | None:
    await topology.client.set(key, b"v")
    value: bytes | None = await topology.client.get(key)
    return value


async def pubsub_roundtrip(topology: RedisTopology, channel: str = "best:events") -> Any:
    pubsub = await topology.pubsub()
    await pubsub.subscribe(channel)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            await topology.client.publish(channel, b"hello")
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                return message["data"]
        return None
    finally:
        await pubsub.aclose()


# -- standalone -----------------------------------------------------------------------------


def test_standalone_tcp(redis_server: RedisServer) -> None:
    async def body(topology: RedisTopology) -> None:
        assert topology.kind == "standalone"
        assert await roundtrip(topology) == b"v"
        assert await pubsub_roundtrip(topology) == b"hello"

    run(redis_server.url, body)


def test_standalone_unix_socket_and_acl_user(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    node = RedisNode(
        free_port(),
        tmp_path / "node",
        [
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "700",
            "--requirepass",
            "root-pw",
            "--user",
            "gateway",
            "on",
            ">gw-pw",
            "~*",
            "&*",
            "+@all",
        ],
        password="root-pw",
    ).start()
    try:

        async def body(topology: RedisTopology) -> Any:
            await topology.client.set("x", b"1")
            return await topology.client.acl_whoami()

        assert run(f"unix://gateway:gw-pw@{socket_path}?db=3", body) in (b"gateway", "gateway")
        assert run(f"redis://gateway:gw-pw@{node.address}/0", body) in (b"gateway", "gateway")
        with node.client(db=3) as direct:
            assert direct.get("x") == b"1"
        with pytest.raises(AuthenticationError):
            run(f"redis://gateway:wrong@{node.address}/0", body)
    finally:
        node.close()


@pytest.mark.slow  # starts a TLS Redis server
def test_rediss_with_a_self_signed_certificate(tls_redis: RedisNode) -> None:
    assert tls_redis.tls is not None
    url = f"rediss://{tls_redis.address}/0?ssl_ca_certs={tls_redis.tls.ca}"

    async def body(topology: RedisTopology) -> bytes | None:
        assert topology.kind == "standalone" and topology.target.tls
        return await roundtrip(topology)

    assert run(url, body) == b"v"
    # The certificate is checked: without its CA the handshake fails.
    with pytest.raises(RedisConnectionError):
        run(f"rediss://{tls_redis.address}/0", body)
    # And a plain-text client cannot talk to a TLS port.
    with pytest.raises(RedisError):
        run(f"redis://{tls_redis.address}/0", body, timeout_ms=300)


def test_unreachable_server_is_a_connection_error_not_a_hang() -> None:
    started = time.monotonic()
    with pytest.raises(RedisConnectionError):
        run(f"redis://{HOST}:{free_port()}/0", roundtrip, timeout_ms=200)
    assert time.monotonic() - started < 3


# -- Cluster --------------------------------------------------------------------------------


@pytest.mark.slow  # starts a Redis Cluster
def test_cluster_url_spreads_keys_over_every_master(redis_cluster: RedisClusterGroup) -> None:
    keys = [f"{{owner-{i}}}:rpm" for i in range(60)]

    async def body(topology: RedisTopology) -> None:
        assert topology.kind == "cluster"
        for key in keys:
            await topology.client.set(key, key.encode())
        for key in keys:
            assert await topology.client.get(key) == key.encode()

    run(redis_cluster.url, body)
    owners = {redis_cluster.master_for_key(key).port for key in keys}
    assert len(owners) == 3
    redis_cluster.flush()


def test_plain_redis_url_to_any_cluster_node_is_detected(redis_cluster: RedisClusterGroup) -> None:
    async def body(topology: RedisTopology) -> str:
        for i in range(30):  # keys on every master: MOVED would fail a standalone client
            assert await roundtrip(topology, f"{{t{i}}}:k") == b"v"
        return topology.kind

    for node in redis_cluster.nodes:  # masters and replicas alike
        assert run(f"redis://{node.address}", body) == "cluster"
        assert run(f"redis://{node.address}/0", body) == "cluster"
    redis_cluster.flush()


def test_plain_url_naming_a_cluster_database_or_socket_is_refused(
    redis_cluster: RedisClusterGroup,
) -> None:
    node = redis_cluster.nodes[0]
    with pytest.raises(RedisUrlError, match="only database 0"):
        run(f"redis://{node.address}/2", roundtrip)


def test_cluster_pubsub_reaches_subscribers_on_any_node(redis_cluster: RedisClusterGroup) -> None:
    async def body(topology: RedisTopology) -> None:
        # Several channels: their slots sit on different masters.
        for channel in ("best:tokens", "best:cooldowns", "best:config"):
            assert await pubsub_roundtrip(topology, channel) == b"hello"
        # A subscriber on one node sees what is published through another.
        other = Redis(host=HOST, port=redis_cluster.nodes[-1].port)
        pubsub = await topology.pubsub()
        await pubsub.subscribe("best:x")
        try:
            received = None
            deadline = time.monotonic() + 5
            while received is None and time.monotonic() < deadline:
                await other.publish("best:x", b"across")
                received = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            assert received is not None and received["data"] == b"across"
        finally:
            await pubsub.aclose()
            await other.aclose()

    run(redis_cluster.url, body)


def test_cluster_pipeline_runs_evalsha_on_keys_of_different_slots(
    redis_cluster: RedisClusterGroup,
) -> None:
    """The answer documented in connection.py: yes through ``execute_command("EVALSHA", ...)``
    (redis-py blocks the ``evalsha()`` method on Cluster pipelines), results in call order,
    NOSCRIPT per call."""
    keys = [f"{{owner-{i}}}:n" for i in range(12)]
    assert len({redis_cluster.master_for_key(k).port for k in keys}) == 3

    async def body(topology: RedisTopology) -> None:
        client = topology.client
        sha = await client.script_load(INCR_SCRIPT)  # loaded on every master
        pipe = client.pipeline(transaction=False)
        with pytest.raises(RedisClusterException, match="evalsha is blocked"):
            pipe.evalsha(sha, 1, keys[0], 1)
        for index, key in enumerate(keys):
            pipe.execute_command("EVALSHA", sha, 1, key, index + 1)
        assert await pipe.execute() == [index + 1 for index in range(len(keys))]

        # One master forgets its scripts (as a freshly promoted replica may not have them):
        # only the calls on that master fail, each with NoScriptError in its place.
        forgetful = redis_cluster.master_for_key(keys[0])
        with forgetful.client() as direct:
            direct.script_flush()
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("EVALSHA", sha, 1, key, 100)
        results = await pipe.execute(raise_on_error=False)
        on_forgetful = [redis_cluster.master_for_key(k) is forgetful for k in keys]
        for result, lost in zip(results, on_forgetful, strict=True):
            if lost:
                assert isinstance(result, NoScriptError)
            else:
                assert isinstance(result, int) and result > 100
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("EVALSHA", sha, 1, keys[0], 1)
        with pytest.raises(NoScriptError):
            await pipe.execute()

        # A single call whose keys span slots is refused (by redis-py, before Redis would).
        with pytest.raises(RedisClusterException, match="same key slot"):
            await client.eval(INCR_SCRIPT, 2, keys[0], keys[1], 1)

    run(redis_cluster.url, body)
    redis_cluster.flush()


async def write_through(
    topology: RedisTopology, stop: asyncio.Event, log: list[tuple[float, str]]
) -> None:
    """Keep incrementing counters (with a script, as the store does); log every outcome."""
    index = 0
    while not stop.is_set():
        key = f"{{owner-{index % 30}}}:c"
        try:
            await topology.client.eval(INCR_SCRIPT, 1, key, 1)
            log.append((time.monotonic(), "ok"))
        except ReadOnlyError as exc:  # must never reach the caller
            log.append((time.monotonic(), f"READONLY {exc}"))
        except RedisError as exc:
            log.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
            await asyncio.sleep(0.01)
        index += 1


def outage(log: list[tuple[float, str]]) -> float:
    """Longest stretch without a successful write, in seconds."""
    last_ok = log[0][0]
    longest = 0.0
    for at, outcome in log:
        if outcome == "ok":
            longest = max(longest, at - last_ok)
            last_ok = at
    return longest


@pytest.mark.slow  # a Redis Cluster fails over
def test_cluster_client_rides_through_failovers(
    disposable_redis_cluster: RedisClusterGroup,
) -> None:
    cluster = disposable_redis_cluster

    async def body(topology: RedisTopology) -> list[tuple[float, str]]:
        stop, log = asyncio.Event(), []
        writer = asyncio.create_task(write_through(topology, stop, log))
        await asyncio.sleep(0.2)
        victim = cluster.master_for_key("{owner-0}:c")
        promoted = await asyncio.to_thread(cluster.failover, victim)  # manual, graceful
        await asyncio.sleep(0.3)
        assert cluster.master_for_key("{owner-0}:c") is promoted
        await asyncio.to_thread(cluster.kill_master, promoted)  # crash: SIGKILL
        await asyncio.sleep(0.5)
        stop.set()
        await writer
        return log

    log = run(cluster.url, body, timeout_ms=500)
    assert not [outcome for _, outcome in log if outcome.startswith("READONLY")]
    # The last writes, after both failovers, all succeed: the client found the new masters.
    assert [outcome for _, outcome in log[-20:]] == ["ok"] * 20
    # The graceful failover costs nothing visible; the crash costs about node-timeout + vote.
    assert outage(log) < 8
    ok = sum(1 for _, outcome in log if outcome == "ok")
    total = 0
    for node in cluster.masters():
        with node.client() as direct:
            for key in direct.keys("*"):
                total += int(direct.get(key) or 0)
    # Every acknowledged increment is stored (an unacknowledged one may have run too).
    assert total >= ok


# -- Sentinel -------------------------------------------------------------------------------


def test_sentinel_url_reaches_the_master(redis_sentinel_group: SentinelGroup) -> None:
    group = redis_sentinel_group

    async def body(topology: RedisTopology) -> None:
        assert topology.kind == "sentinel"
        assert await roundtrip(topology) == b"v"
        assert await pubsub_roundtrip(topology) == b"hello"

    run(group.url(), body)
    run(group.url() + "/2", body)
    with group.master.client() as direct:
        assert direct.get("k") == b"v"
    with group.master.client(db=2) as direct:
        assert direct.get("k") == b"v"


@pytest.mark.slow  # starts a Sentinel group
def test_sentinel_password_differs_from_the_masters(tmp_path: Path) -> None:
    group = SentinelGroup(tmp_path, password="data-pw", sentinel_password="sentinel-pw").start()
    try:
        url = group.url(userinfo=":data-pw@")
        assert run(url, roundtrip, sentinel_password="sentinel-pw") == b"v"
        with pytest.raises(RedisError):  # the sentinels refuse the master's password
            run(url, roundtrip)
    finally:
        group.close()


@pytest.mark.slow  # a Sentinel group fails over
def test_sentinel_manual_failover_never_relays_readonly(
    redis_sentinel_group: SentinelGroup,
) -> None:
    """SENTINEL FAILOVER demotes a live master: pooled connections to it then get READONLY."""
    group = redis_sentinel_group

    async def body(topology: RedisTopology) -> list[tuple[float, str]]:
        stop, log = asyncio.Event(), []
        writer = asyncio.create_task(write_through(topology, stop, log))
        await asyncio.sleep(0.2)
        old = group.current_master()
        await asyncio.to_thread(group.manual_failover)
        await asyncio.to_thread(
            wait_until, lambda: old.role() == "slave", 20.0, "old master demoted"
        )
        await asyncio.sleep(0.5)
        stop.set()
        await writer
        return log

    log = run(group.url(), body)
    assert not [outcome for _, outcome in log if outcome.startswith("READONLY")]
    assert [outcome for _, outcome in log[-20:]] == ["ok"] * 20


@pytest.mark.slow  # a Sentinel group promotes a replica
def test_sentinel_client_follows_a_killed_master(redis_sentinel_group: SentinelGroup) -> None:
    group = redis_sentinel_group

    async def body(topology: RedisTopology) -> list[tuple[float, str]]:
        stop, log = asyncio.Event(), []
        writer = asyncio.create_task(write_through(topology, stop, log))
        await asyncio.sleep(0.2)
        old, _new = await asyncio.to_thread(group.kill_master)
        promoted_at = time.monotonic()
        await asyncio.to_thread(
            wait_until,
            lambda: any(at > promoted_at and outcome == "ok" for at, outcome in log),
            5.0,
            "a write on the promoted master",
        )
        # The old master comes back empty, as a master, until the sentinels demote it; our
        # client must never write to it meanwhile.
        await asyncio.to_thread(group.revive_as_replica, old)
        await asyncio.sleep(0.3)
        stop.set()
        await writer
        return log

    log = run(group.url() + "?client_name=best-under-test", body)
    assert not [outcome for _, outcome in log if outcome.startswith("READONLY")]
    assert [outcome for _, outcome in log[-20:]] == ["ok"] * 20
    new = group.current_master()
    old = next(node for node in group.data_nodes if node is not new)
    assert old.role() == "slave"
    with old.client() as direct:
        names = [client.get("name") for client in direct.client_list()]
    assert "best-under-test" not in names


def test_sentinels_that_disagree_are_settled_by_the_newest_epoch(tmp_path: Path) -> None:
    """Just after a failover, a sentinel that has not heard of it yet still names the old
    master (alive after a manual failover, and taking writes); the client follows the sentinel
    that names the master of the latest failover, whichever it asks first."""
    old = RedisNode(free_port(), tmp_path / "old").start()
    new = RedisNode(free_port(), tmp_path / "new").start()
    lagging = lone_sentinel(tmp_path / "s-lagging", old, epoch=1)
    informed = lone_sentinel(tmp_path / "s-informed", new, epoch=2)
    try:
        for first, second in ((lagging, informed), (informed, lagging)):
            url = f"redis+sentinel://{first.address},{second.address}/mymaster"
            key = f"k-{first.port}"
            assert run(url, lambda topology, key=key: roundtrip(topology, key)) == b"v"
            with new.client() as on_new, old.client() as on_old:
                assert on_new.get(key) == b"v"
                assert on_old.get(key) is None
    finally:
        for node in (lagging, informed, old, new):
            node.close()


class _Sentinels:
    """A stand-in sentinel manager naming the given addresses in turn (then the last)."""

    def __init__(self, *addresses: tuple[str, int]) -> None:
        self.addresses = list(addresses)

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        return self.addresses.pop(0) if len(self.addresses) > 1 else self.addresses[0]


def test_masterdown_from_a_cut_off_replica_is_a_failover(tmp_path: Path) -> None:
    """A replica whose master is gone answers MASTERDOWN; the client reconnects, never relays."""
    master = RedisNode(free_port(), tmp_path / "m").start()
    orphan = RedisNode(
        free_port(),
        tmp_path / "r",
        ["--replicaof", HOST, str(free_port()), "--replica-serve-stale-data", "no"],
    ).start(wait=False)  # it answers even PING with MASTERDOWN
    wait_until(lambda: orphan.info("replication"), what="the orphan replica")
    try:
        with orphan.client() as direct, pytest.raises(MasterDownError):
            direct.get("k")

        async def main() -> Any:
            client = sentinel_master_client(
                parse_redis_url("redis+sentinel://unused/mymaster"),
                _Sentinels((HOST, orphan.port), (HOST, master.port)),
            )
            try:
                return await client.get("k")
            finally:
                await client.aclose()

        with master.client() as direct:
            direct.set("k", b"from-master")
        assert asyncio.run(main()) == b"from-master"
    finally:
        orphan.close()
        master.close()


class _Switchable:
    """A stand-in sentinel manager naming ``address`` (the test switches it)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        return self.address


def test_a_connection_busy_when_the_master_changes_never_writes_to_the_old_one(
    tmp_path: Path,
) -> None:
    """The switch is found by another connection's lookup while one connection is busy: that
    one reconnects when its command returns, instead of going back to the pool still
    connected to the old master (alive after a manual failover, and taking writes)."""
    old = RedisNode(free_port(), tmp_path / "old").start()
    new = RedisNode(free_port(), tmp_path / "new").start()
    sentinels = _Switchable((HOST, old.port))

    async def main() -> None:
        client = sentinel_master_client(
            parse_redis_url("redis+sentinel://unused/mymaster"), sentinels
        )
        try:
            busy = asyncio.create_task(client.blpop(["nothing"], timeout=0.5))
            await asyncio.sleep(0.1)  # connected to the old master, blocked
            sentinels.address = (HOST, new.port)
            await client.set("k", b"v")  # a second connection, which finds the new master
            await busy
            for _ in range(20):
                await client.incr("counter")
        finally:
            await client.aclose()

    try:
        asyncio.run(main())
        with old.client() as on_old, new.client() as on_new:
            assert on_old.keys("*") == []
            assert on_new.get("counter") == b"20"
    finally:
        old.close()
        new.close()


def test_parse_only_for_rediss_sentinel_and_cluster() -> None:
    # TLS to sentinels / cluster nodes uses the same options as rediss:// (tested live above).
    assert parse_redis_url("rediss+sentinel://s1:26379/m?ssl_ca_certs=/ca").tls_options == {
        "ssl_ca_certs": "/ca"
    }
    assert parse_redis_url("rediss+cluster://n1:7000?ssl_cert_reqs=none").tls
