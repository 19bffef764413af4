"""REDIS_URL -> a redis-py asyncio client for the topology it names.

URL forms (docs/operations/redis.md):

- ``redis://[[user]:pass@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix://[[user]:pass@]/path``
  (``?db=N``): one server.  A ``redis://`` or ``rediss://`` server that turns out to be a
  Cluster node (``INFO cluster``: ``cluster_enabled:1``) is used as a Cluster.
- ``redis+sentinel://[user:pass@]host:port[,host:port...]/MASTER_NAME[/DB]`` and
  ``rediss+sentinel://`` (TLS to sentinels and master): the client asks the sentinels for the
  master on every new connection, so it follows a promotion.  The user/password are the
  master's; the sentinels use them too unless ``REDIS_SENTINEL_PASSWORD`` is given (an empty
  one means the sentinels need no password).
- ``redis+cluster://[user:pass@]host:port[,host:port...]`` (``rediss+cluster://`` with TLS):
  a Cluster from those startup nodes.

Query options, on every form: ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_cert_reqs`` (none/optional/required), ``ssl_check_hostname``, ``client_name`` (default
``best``, what ``CLIENT LIST`` shows), and for the
one-server forms ``db``, ``username`` and ``password``.  Anything else is refused, so a typo is a
start-up error and not a silently ignored setting.

Failures ridden through, and how:

- Sentinel: ``READONLY`` (the master we are connected to was demoted) and ``MASTERDOWN`` (we
  reached a replica cut off from its master) close that connection and raise ``ConnectionError``
  inside redis-py, whose retry reconnects to the master the sentinels name now and runs the
  command again.  Neither error reaches the caller: if the retries are spent it sees a
  ``ConnectionError``, i.e. "store unavailable", never "read-only".
- Cluster: redis-py's ``RedisCluster`` follows ``MOVED``/``ASK``, and on a connection error or
  ``CLUSTERDOWN`` refreshes its slot map and retries; a promoted replica is found that way.
- Every socket operation (connect, send, read) is bounded by ``STORE_TIMEOUT_MS``.  Timeouts are
  not retried (a stalled script may have run; running it again would count twice), connection
  errors are, a few times with a short backoff.  A caller that needs a hard bound on one call
  including those retries wraps it in ``asyncio.timeout``.

Pub/sub: ``RedisTopology.pubsub()`` works on each topology.  Classic ``PUBLISH`` is broadcast
over the Cluster bus to every node, so a subscriber on any node sees every message; redis-py
8.1's asyncio ``RedisCluster.pubsub()`` (``ClusterPubSub``) picks the node by the channel's
slot and is what ``pubsub()`` returns on a Cluster.  ``client.publish`` works on all three.

Pipelines on a Cluster (measured by ``tests/store/test_connection.py`` on a real 3-master
Cluster, redis-py 8.1, Redis 7.0): a non-transactional ``RedisCluster.pipeline()`` runs
``EVALSHA`` calls whose keys hash to different slots, on different masters, in one pipeline,
but only as ``pipe.execute_command("EVALSHA", sha, numkeys, *keys, *args)``: redis-py blocks the
``pipe.evalsha()`` method (and so ``Script`` objects) on Cluster pipelines.  It routes each call
by its first key's slot, sends one batch per node, and returns the results in call order.  Each
call's keys must share one slot (else redis-py raises ``RedisClusterException`` before sending).
A script missing on one node (e.g. a freshly promoted replica) fails only the calls on that node,
each with ``NoScriptError`` in its place (``raise_on_error=False``) or raised (default); the
caller loads the script (``SCRIPT LOAD`` on a Cluster client goes to every master) and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MasterDownError, RedisError

TopologyKind = Literal["standalone", "sentinel", "cluster"]

_SCHEMES: Mapping[str, tuple[TopologyKind, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "unix": ("standalone", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_DEFAULT_PORT = {"standalone": 6379, "sentinel": 26379, "cluster": 6379}
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_BOOL_WORDS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
# Connection errors are retried this many times, backing off 50, 100, 200 ms: enough to
# reconnect after a demotion; a longer outage is the store's degraded mode, not a wait here.
_RETRIES = 3
# The name every gateway connection gives itself (CLIENT LIST), unless the URL sets client_name.
DEFAULT_CLIENT_NAME = "best"


class RedisUrlError(ValueError):
    """REDIS_URL cannot be used; the message is one line and never contains the password."""


@dataclass(frozen=True)
class RedisTarget:
    """What a REDIS_URL names, checked, before anything connects."""

    kind: TopologyKind
    nodes: tuple[tuple[str, int], ...]  # the server, the sentinels, or the Cluster startup nodes
    unix_path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_options: Mapping[str, Any] = field(default_factory=dict)
    client_name: str | None = None
    master_name: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    timeout_s: float = 1.0

    def describe(self) -> str:
        """For logs: topology and addresses, no credentials."""
        where = self.unix_path or ",".join(f"{h}:{p}" for h, p in self.nodes)
        extra = f" master {self.master_name}" if self.master_name else ""
        return f"{self.kind}{' (TLS)' if self.tls else ''} {where}{extra}"


def _fail(message: str) -> RedisUrlError:
    return RedisUrlError(f"REDIS_URL {message}")


def _parse_hosts(hostlist: str, default_port: int, multiple: bool) -> tuple[tuple[str, int], ...]:
    hosts: list[tuple[str, int]] = []
    for raw in hostlist.split(","):
        item = raw.strip()
        if not item:
            raise _fail("has an empty host")
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else rest
            if rest and not rest.startswith(":"):
                raise _fail(f"has a malformed host {item!r}")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise _fail(f"has a malformed host {item!r}")
        port = default_port
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise _fail(f"has an invalid port in {item!r}")
            port = int(port_text)
        hosts.append((host, port))
    if len(hosts) > 1 and not multiple:
        raise _fail("names several hosts; use redis+sentinel:// or redis+cluster://")
    return tuple(hosts)


def _db(text: str) -> int:
    if not text.isdigit():
        raise _fail(f"has an invalid database number {text!r}")
    return int(text)


def parse_redis_url(
    url: str, *, sentinel_password: str | None = None, timeout_ms: int = 1000
) -> RedisTarget:
    """Check ``url`` without connecting; raises ``RedisUrlError`` with a one-line reason."""
    if timeout_ms <= 0:
        raise RedisUrlError(f"STORE_TIMEOUT_MS={timeout_ms} must be > 0")
    url = url.strip()
    scheme, sep, _rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        shown = scheme if sep else url[:20]
        raise _fail(
            f"has an unsupported scheme {shown!r}: use redis://, rediss://, unix://, "
            "redis+sentinel://, rediss+sentinel:// or redis+cluster://"
        )
    kind, tls = _SCHEMES[scheme]
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _fail(f"is malformed: {exc}") from None
    if parts.fragment:
        raise _fail("must not have a #fragment")
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user_text, colon, pass_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(pass_text) if colon else None
        if password is None and username is not None:
            password, username = username, None  # redis://secret@host: a bare password
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    allowed = {*_TLS_OPTIONS, "ssl_check_hostname", "client_name"}
    if kind == "standalone":
        allowed |= {"db", "username", "password"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise _fail(f"has unknown option(s) {', '.join(unknown)}")
    username = options.pop("username", None) or username
    password = options.pop("password", None) or password
    client_name = options.pop("client_name", None) or DEFAULT_CLIENT_NAME
    tls_options: dict[str, Any] = {k: options.pop(k) for k in _TLS_OPTIONS if k in options}
    if "ssl_cert_reqs" in tls_options and tls_options["ssl_cert_reqs"] not in (
        "none",
        "optional",
        "required",
    ):
        raise _fail("ssl_cert_reqs must be none, optional or required")
    if "ssl_check_hostname" in options:
        word = options.pop("ssl_check_hostname").lower()
        if word not in _BOOL_WORDS:
            raise _fail("ssl_check_hostname must be true or false")
        tls_options["ssl_check_hostname"] = _BOOL_WORDS[word]
    if tls_options and not tls:
        raise _fail("has ssl_* options but no TLS scheme (rediss...)")

    path = unquote(parts.path)
    db = _db(options.pop("db")) if "db" in options else 0
    master_name = None
    unix_path = None
    nodes: tuple[tuple[str, int], ...] = ()
    if scheme == "unix":
        if not path or path == "/":
            raise _fail("has no socket path")
        unix_path = path
    else:
        if not hostlist:
            raise _fail("has no host")
        nodes = _parse_hosts(hostlist, _DEFAULT_PORT[kind], multiple=kind != "standalone")
        segments = [s for s in path.split("/") if s]
        if kind == "standalone":
            if len(segments) > 1:
                raise _fail(f"has an unexpected path {path!r}")
            if segments:
                db = _db(segments[0])
        elif kind == "sentinel":
            if not segments:
                raise _fail("names no master: redis+sentinel://host:port/MASTER_NAME[/DB]")
            if len(segments) > 2:
                raise _fail(f"has an unexpected path {path!r}")
            master_name = segments[0]
            if len(segments) == 2:
                db = _db(segments[1])
        elif segments:
            raise _fail("must not name a database: a Cluster has only database 0")
    return RedisTarget(
        kind=kind,
        nodes=nodes,
        unix_path=unix_path,
        db=db,
        username=username,
        password=password,
        tls=tls,
        tls_options=tls_options,
        client_name=client_name,
        master_name=master_name,
        sentinel_password=sentinel_password,
        timeout_s=timeout_ms / 1000,
    )


class _FailoverConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that also takes ``MASTERDOWN`` as a sign to reconnect.

    redis-py already turns ``READONLY`` from a demoted master into a disconnect plus
    ``ConnectionError`` (retried against the master the sentinels name now); ``MASTERDOWN``
    means the same here: we reached a replica, not the master.
    """

    _resolved = False  # set while connect_to() is connecting to an address it just looked up

    async def connect_to(self, address: Any) -> None:
        self._resolved = True
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self._resolved = False

    async def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        # redis-py 8.1 reconnects a dropped connection inside a command's retry through this
        # method, to the address it had: after READONLY/MASTERDOWN that is the old master.
        # Ask the sentinels first, as a fresh connection does.
        if not self.is_connected and not self._resolved and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(*args, **kwargs)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except MasterDownError:
            await self.disconnect()
            raise RedisConnectionError("MASTERDOWN: reconnecting to the current master") from None


class _FailoverSSLConnection(_FailoverConnection, SSLConnection):
    pass


class _NewestSentinel(Sentinel):
    """Sentinels that name the master announced last, not the one the first sentinel names.

    After a failover the sentinels that did not lead it learn of it from the leader within
    about 2 s; until then they still name the old master, which in a manual failover (or a
    partition) is alive and takes writes, all lost when it is demoted.  redis-py asks the
    sentinels in turn and takes the first answer; this asks them all at once and follows the
    answer with the highest ``config-epoch`` (each failover increments it).
    """

    async def master_states(self, service_name: str) -> list[dict[str, Any]]:
        """What each sentinel that answers says of the master (``SENTINEL MASTERS``)."""

        async def ask(sentinel: Any) -> dict[str, Any] | None:
            try:
                masters = await sentinel.sentinel_masters()
            except (RedisError, OSError):
                return None
            state: dict[str, Any] | None = masters.get(service_name)
            return state

        answers = await asyncio.gather(*(ask(sentinel) for sentinel in self.sentinels))
        return [state for state in answers if state is not None]

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        states = [
            state
            for state in await self.master_states(service_name)
            if self.check_master_state(state, service_name)
        ]
        if not states:
            raise MasterNotFoundError(f"no sentinel names a master for {service_name!r}")
        newest = max(states, key=lambda state: int(state.get("config-epoch", 0)))
        return newest["ip"], int(newest["port"])


# How often, while commands flow, the sentinels are asked again who the master is.
_SENTINEL_RECHECK_S = 0.5


class _FollowingPool(SentinelConnectionPool):
    """A Sentinel pool that notices a promotion even while its old master still answers.

    redis-py asks the sentinels only when it opens a connection.  After a failover in which
    the old master stays up (``SENTINEL FAILOVER``, a partition), pooled connections would keep
    writing to it, as a master, until the sentinels demote it, which takes up to 10 s; those
    writes are lost when it resyncs.  So at most every ``_SENTINEL_RECHECK_S`` a background
    check asks again, off the command's path.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._checked_at = 0.0
        self._check: asyncio.Task[None] | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now - self._checked_at >= _SENTINEL_RECHECK_S and (
            self._check is None or self._check.done()
        ):
            self._checked_at = now
            self._check = asyncio.create_task(self._recheck())
        return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]

    async def ensure_connection(self, connection: Any) -> None:
        """Never hand out a connection to a server that is no longer the master.

        redis-py closes the idle connections when a lookup finds a new master, but a
        connection busy at that moment goes back to the pool still connected to the old one,
        and was reused there for as long as the old master lived."""
        master = self.master_address
        if (
            master is not None
            and connection.is_connected
            and (connection.host, connection.port) != master
        ):
            await connection.disconnect()
        await super().ensure_connection(connection)

    async def _recheck(self) -> None:
        # Sentinels unreachable: commands will find out on their own.
        with contextlib.suppress(RedisError):
            await self.get_master_address()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        if self._check is not None:
            self._check.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await self._check
        await super().aclose()


def _retry() -> Retry:
    # Only connection errors: a timed-out call may have run on the server (see module doc).
    return Retry(ExponentialBackoff(cap=0.2, base=0.05), _RETRIES, (RedisConnectionError,))


def _common(target: RedisTarget) -> dict[str, Any]:
    options: dict[str, Any] = {
        "username": target.username,
        "password": target.password,
        "socket_timeout": target.timeout_s,
        "socket_connect_timeout": target.timeout_s,
        "client_name": target.client_name,
    }
    if target.tls:
        options.update(ssl=True, **target.tls_options)
    return options


@dataclass
class RedisTopology:
    """A connected client for the topology; ``client`` speaks to the master(s)."""

    kind: TopologyKind
    client: Redis | RedisCluster
    target: RedisTarget
    sentinel: Sentinel | None = None

    async def pubsub(self) -> PubSub:
        """A pub/sub object on this topology (a ``ClusterPubSub`` on a Cluster).

        Async because on a Cluster the slot map must be loaded first: ``ClusterPubSub`` picks
        its node from the channel's slot and fails on an uninitialised client.
        """
        if isinstance(self.client, RedisCluster):
            await self.client.initialize()
        return self.client.pubsub()

    def master_address(self) -> tuple[str, int] | None:
        """The master this replica's Sentinel pool writes to now (None: not yet known)."""
        pool = getattr(self.client, "connection_pool", None)
        address: tuple[str, int] | None = getattr(pool, "master_address", None)
        return address

    async def failing_over(self, written_to: tuple[str, int] | None) -> bool:
        """Whether a sentinel reports a failover of the master in progress, or the sentinels
        name another master than ``written_to`` (False on other topologies)."""
        if not isinstance(self.sentinel, _NewestSentinel) or self.target.master_name is None:
            return False
        states = await self.sentinel.master_states(self.target.master_name)
        for state in states:
            flags = state.get("flags", "")
            if "failover_in_progress" in (flags.split(",") if isinstance(flags, str) else flags):
                return True
        if not states or written_to is None:
            return False
        newest = max(states, key=lambda state: int(state.get("config-epoch", 0)))
        return (newest["ip"], int(newest["port"])) != written_to

    def on_master(self, pubsub: PubSub) -> bool:
        """False once ``pubsub``'s server is no longer the one the sentinels name as master
        (its subscription then misses what is published on the new master); always True on
        the other topologies, where a subscription sees every message."""
        if self.kind != "sentinel" or pubsub.connection is None:
            return True
        master = self.master_address()
        connection = pubsub.connection
        return master is None or (connection.host, connection.port) == master

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()


def _standalone(target: RedisTarget) -> Redis:
    options = _common(target)
    if target.unix_path is not None:
        options.pop("socket_connect_timeout")
        return Redis(unix_socket_path=target.unix_path, db=target.db, retry=_retry(), **options)
    host, port = target.nodes[0]
    return Redis(host=host, port=port, db=target.db, retry=_retry(), **options)


def _cluster(target: RedisTarget) -> RedisCluster:
    if target.unix_path is not None:
        raise _fail("reaches a Cluster node over a unix socket: use redis+cluster://host:port")
    if target.db != 0:
        raise _fail(f"names database {target.db}, but a Cluster has only database 0")
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        # Serve the slots that are up while one master is being replaced.
        require_full_coverage=False,
        retry=_retry(),
        **_common(target),
    )


def _sentinel(target: RedisTarget) -> tuple[Sentinel, Redis]:
    assert target.master_name is not None
    common = _common(target)
    sentinel_options = {
        k: v for k, v in common.items() if k.startswith(("socket_", "ssl")) or k == "client_name"
    }
    # Discovery already walks the sentinels in turn: a dead one is skipped, not retried.
    sentinel_options["retry"] = Retry(NoBackoff(), 0)
    if target.sentinel_password is None:
        sentinel_options.update(username=target.username, password=target.password)
    elif target.sentinel_password:
        sentinel_options["password"] = target.sentinel_password
    sentinel = _NewestSentinel(list(target.nodes), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    return sentinel, sentinel_master_client(target, sentinel)


def sentinel_master_client(target: RedisTarget, sentinels: Any) -> Redis:
    """A client of the master ``sentinels`` name (anything with ``discover_master``)."""
    assert target.master_name is not None
    connection_class = _FailoverSSLConnection if target.tls else _FailoverConnection
    master_options = {k: v for k, v in _common(target).items() if k != "ssl"}
    pool = _FollowingPool(
        target.master_name,
        sentinels,
        connection_class=connection_class,
        db=target.db,
        retry=_retry(),
        **master_options,
    )
    return Redis.from_pool(pool)


async def is_cluster_node(client: Redis, timeout_s: float) -> bool:
    """Whether the server behind ``client`` runs with ``cluster-enabled yes``."""
    async with asyncio.timeout(timeout_s * (_RETRIES + 1)):
        info = await client.info("cluster")
    return bool(int(info.get("cluster_enabled", 0)))


async def connect(target: RedisTarget) -> RedisTopology:
    """A client for ``target``.

    For ``redis://``/``rediss://`` this asks the server whether it is a Cluster node (one
    ``INFO cluster``), so it needs the server up: it raises redis-py's ``ConnectionError`` or
    ``TimeoutError`` if not (the caller retries later), and ``RedisUrlError`` if the server is
    a Cluster node the URL cannot address as one (unix socket, database other than 0).  The
    Sentinel and Cluster forms connect lazily, on the first command.
    """
    if target.kind == "sentinel":
        sentinel, client = _sentinel(target)
        return RedisTopology("sentinel", client, target, sentinel)
    if target.kind == "cluster":
        return RedisTopology("cluster", _cluster(target), target)
    # The probe selects no database: a Cluster node refuses SELECT, and INFO needs none.
    probe = _standalone(replace(target, db=0))
    try:
        clustered = await is_cluster_node(probe, target.timeout_s)
    finally:
        await probe.aclose()
    if clustered:
        return RedisTopology("cluster", _cluster(target), target)
    return RedisTopology("standalone", _standalone(target), target)


async def connect_url(
    url: str, *, sentinel_password: str | None = None, timeout_ms: int = 1000
) -> RedisTopology:
    """``connect(parse_redis_url(...))``."""
    return await connect(
        parse_redis_url(url, sentinel_password=sentinel_password, timeout_ms=timeout_ms)
    )
