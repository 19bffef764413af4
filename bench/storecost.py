"""What one gateway request costs Redis: commands, script calls, round trips, Redis CPU.

The store cost is part of the gateway's performance contract.  For each store topology (a standalone
``redis-server`` and a 3-master Cluster) and each kind of token (with limits, without), one
gateway worker runs on the core under test and wrk sends JSON requests at c=32, cycling through
``TOKENS`` bearer tokens (so a Cluster's masters each own some of them).  Everything is counted
at the Redis side, summed over the masters, and divided by the requests wrk completed:

- **commands run**: ``total_commands_processed`` (INFO stats); it includes the commands that
  scripts call, as the per-command ``calls`` of INFO commandstats do;
- **commands sent** and the split by name: a separate short run under ``MONITOR`` (written by
  ``redis-cli monitor``), where a command run by a script is logged as ``[db lua]``;
- **script calls**: the ``calls`` of ``EVALSHA``/``EVAL``/``FCALL`` (and their ``_RO`` forms);
- **round trips**: ``total_reads_processed`` (INFO stats), the read events Redis served on its
  client connections: one per network write of a client (a pipeline is one), approximate
  because a read may carry two writes that arrived together or half of a large one;
- **Redis CPU us**: the growth of ``used_cpu_sys + used_cpu_user`` (INFO cpu; the whole
  process, network I/O included), raw and less what Redis spent idle (the gateway connected,
  no requests) over as long a span; beside it the ``usec`` of INFO commandstats, the time
  inside the commands the gateway sent, scripts included (wall-clock time: on a shared core it
  grows when Redis is descheduled mid-command, so INFO cpu is the figure to size with);
- **fleet req/s per Redis core** = 1e6 / Redis CPU us per request, less idle;
- **in plain commands** (standalone): that CPU divided by what one pipelined ``HINCRBY`` costs
  the same Redis right after, a yardstick that a busy or slow machine inflates alike.

Background work of the gateway (the store probe, statistics flushes) is in the raw figures,
spread over the requests of the run; the idle run shows it per second.  The benchmark's own
``INFO`` calls are subtracted.
"""

from __future__ import annotations

import functools
import re
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.loadgen import render_script, request_body, run_wrk
from bench.procs import HELPER_CORE, Proc, free_port, pinned, wait_until
from bench.targets import ROOT, Target, check_target, start_gateway, start_redis

TOKENS = tuple(f"bench-token-{i:02d}-3f9c2a" for i in range(8))
SCRIPT_COMMANDS = frozenset({"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"})
CONNECTIONS = 32
IDLE_S = 3.0
NO_STORE_CALL = 0.1  # commands per request below which the background dominates
HOST = "127.0.0.1"


@dataclass
class Snapshot:
    commands: int
    reads: int
    connections: int  # connections accepted
    cpu_s: float
    calls: Counter[str]
    usec: Counter[str]


@dataclass
class StoreCost:
    topology: str  # "standalone" or "cluster (3 masters)"
    limited: bool
    commit: str
    requests: int = 0
    rps: float = 0.0
    errors: int = 0
    commands_run: float = 0.0
    commands_sent: float | None = None
    script_calls: float = 0.0
    round_trips: float = 0.0
    cpu_us: float = 0.0
    cpu_us_net: float = 0.0  # less what Redis spends idle over as long a span
    command_us: float = 0.0
    idle_cpu_us_per_s: float = 0.0
    idle_commands_per_s: float = 0.0
    plain_us: float | None = None  # Redis CPU us of one pipelined HINCRBY (standalone only)
    connections_per_s: float = 0.0  # new connections Redis accepted during the timed run
    # name -> calls per request, from the MONITOR run: sent by the gateway / run by scripts
    sent_by_name: dict[str, float] = field(default_factory=dict)
    in_scripts_by_name: dict[str, float] = field(default_factory=dict)
    script_share: list[float] = field(default_factory=list)  # per master
    failure: str | None = None

    @property
    def label(self) -> str:
        return f"{self.topology}, {'token with limits' if self.limited else 'token without limits'}"

    @property
    def plain_commands(self) -> float | None:
        """Redis CPU per request in plain pipelined commands: comparable across machines."""
        return round(self.cpu_us_net / self.plain_us, 1) if self.plain_us else None

    @property
    def fleet_rps_per_core(self) -> float | None:
        """None when requests make (next to) no store call: their cost is noise, not a rate."""
        if self.commands_run < NO_STORE_CALL or self.cpu_us_net <= 0:
            return None
        return 1e6 / self.cpu_us_net

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["label"] = self.label
        out["fleet_rps_per_core"] = self.fleet_rps_per_core
        out["plain_commands"] = self.plain_commands
        return out


# --- Redis-side counters ---------------------------------------------------------------------


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=5, decode_responses=True)


def _pings(port: int) -> bool:
    return bool(_client(port).ping())


def _cluster_ok(port: int) -> bool:
    info: Any = _client(port).execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
    return bool(info.get("cluster_state") == "ok") if isinstance(info, dict) else False


def _monitoring(port: int) -> bool:
    return any(entry.get("cmd") == "monitor" for entry in _client(port).client_list())


def snapshot(client: redis.Redis) -> Snapshot:
    info: dict[str, Any] = client.info("all")
    calls: Counter[str] = Counter()
    usec: Counter[str] = Counter()
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            name = key[len("cmdstat_") :]
            calls[name] = int(value["calls"])
            usec[name] = int(value["usec"])
    return Snapshot(
        commands=int(info["total_commands_processed"]),
        reads=int(info["total_reads_processed"]),
        connections=int(info["total_connections_received"]),
        cpu_s=float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        calls=calls,
        usec=usec,
    )


def delta(before: Snapshot, after: Snapshot) -> Snapshot:
    """What happened between two snapshots, less the benchmark's own INFO (one call, one read)."""
    calls = after.calls.copy()
    calls.subtract(before.calls)
    usec = after.usec.copy()
    usec.subtract(before.usec)
    calls["info"] -= 1
    return Snapshot(
        commands=after.commands - before.commands - 1,
        reads=after.reads - before.reads - 1,
        connections=after.connections - before.connections,
        cpu_s=after.cpu_s - before.cpu_s,
        calls=+calls,
        usec=+usec,
    )


_MONITOR_LINE = re.compile(r'^\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"')


def parse_monitor(text: str) -> tuple[Counter[str], Counter[str]]:
    """(sent by clients, run by scripts) command counts from ``redis-cli monitor`` output."""
    sent: Counter[str] = Counter()
    scripted: Counter[str] = Counter()
    for line in text.splitlines():
        match = _MONITOR_LINE.match(line)
        if not match:
            continue
        source, name = match.group(1), match.group(2).lower()
        if name == "client":  # the benchmark's own CLIENT LIST while it waits for MONITOR
            continue
        (scripted if source == "lua" else sent)[name] += 1
    return sent, scripted


def plain_command_us(port: int, calls: int = 20_000, batch: int = 32) -> float:
    """Redis CPU us of one plain pipelined ``HINCRBY``: the machine's yardstick.

    On a shared or slow core every figure above grows alike; a request's cost in plain
    commands does not, and scales to any core (1e6 / its own plain-command us).
    """
    client = _client(port)
    key = "bench:{yardstick}"
    try:
        before = snapshot(client)
        for _ in range(calls // batch):
            pipe = client.pipeline(transaction=False)
            for _ in range(batch):
                pipe.hincrby(key, "n", 1)
            pipe.execute()
        after = snapshot(client)
        client.delete(key)
    finally:
        client.close()
    return round((after.cpu_s - before.cpu_s) * 1e6 / (calls // batch * batch), 3)


# --- a 3-master Cluster ------------------------------------------------------------------------


def _free_port_pair() -> int:
    """A free port whose +10000 neighbour (the Cluster bus port) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as sock:
                try:
                    sock.bind((HOST, port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair for a Cluster node")


def start_cluster(workdir: Path, masters: int = 3) -> tuple[list[Proc], list[int]]:
    """``masters`` Cluster nodes (no replicas) on loopback, pinned with the other helpers."""
    procs: list[Proc] = []
    ports: list[int] = []
    try:
        for _ in range(masters):
            port = _free_port_pair()
            directory = workdir / f"cluster-{port}"
            directory.mkdir(parents=True)
            argv = [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(directory / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
            ]
            proc = Proc(f"redis-{port}", pinned(argv, HELPER_CORE), directory / "redis.log")
            procs.append(proc)
            ports.append(port)
            wait_until(functools.partial(_pings, port), 10, f"redis on {port}", proc)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *[f"{HOST}:{port}" for port in ports],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in ports:
            wait_until(
                functools.partial(_cluster_ok, port),
                30,
                f"cluster_state:ok on {port}",
            )
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return procs, ports


# --- one measurement ---------------------------------------------------------------------------


def _monitor(
    ports: Sequence[int], workdir: Path, run: Callable[[], int]
) -> tuple[Counter[str], Counter[str], int]:
    """Run ``run`` while ``redis-cli monitor`` logs every node; its requests and the counts."""
    monitors: list[tuple[subprocess.Popen[bytes], Path]] = []
    sent: Counter[str] = Counter()
    scripted: Counter[str] = Counter()
    try:
        for port in ports:
            path = workdir / f"monitor-{port}.txt"
            with path.open("wb") as out:
                popen = subprocess.Popen(
                    pinned(["redis-cli", "-h", HOST, "-p", str(port), "monitor"], HELPER_CORE),
                    stdout=out,
                    stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL,
                )
            monitors.append((popen, path))
            wait_until(
                functools.partial(_monitoring, port),
                10,
                f"MONITOR on {port}",
            )
        requests = run()
    finally:
        for popen, _ in monitors:
            popen.terminate()
            popen.wait(10)
    for _, path in monitors:
        node_sent, node_scripted = parse_monitor(path.read_text(errors="replace"))
        sent.update(node_sent)
        scripted.update(node_scripted)
    return sent, scripted, requests


def measure_store_cost(
    target: Target,
    ports: Sequence[int],
    result: StoreCost,
    duration_s: float,
    monitor_s: float,
    workdir: Path,
    wait_quiet: Callable[[int | None], None],
) -> StoreCost:
    """Warm up, count by name under MONITOR, then the timed run with INFO before and after."""
    problem = check_target(target, "json", request_body("json"))
    if problem:
        result.failure = problem
        return result
    script = workdir / f"storecost-{target.name}.lua"
    script.write_text(render_script("json", None, tokens=TOKENS))
    url = target.urls["json"]
    run_wrk(url, script, CONNECTIONS, 2.0)  # warm-up: caches filled, connections open

    sent, scripted, monitored = _monitor(
        ports, workdir, lambda: run_wrk(url, script, CONNECTIONS, monitor_s).requests
    )
    if monitored:
        result.commands_sent = round(sum(sent.values()) / monitored, 3)
        result.sent_by_name = {k: round(v / monitored, 3) for k, v in sent.most_common()}
        result.in_scripts_by_name = {k: round(v / monitored, 3) for k, v in scripted.most_common()}

    clients = [_client(port) for port in ports]
    wait_quiet(target.proc.pid if target.proc else None)
    # Idle first: what Redis spends per second with the gateway connected and no requests
    # (its own cron, the gateway's probe and flushes) is not a cost per request.
    idle_start = time.monotonic()
    idle_before = [snapshot(client) for client in clients]
    time.sleep(IDLE_S)
    idle_after = [snapshot(client) for client in clients]
    idle_span = time.monotonic() - idle_start
    idle = [delta(b, a) for b, a in zip(idle_before, idle_after, strict=True)]
    idle_cpu_per_s = sum(d.cpu_s for d in idle) / idle_span
    result.idle_cpu_us_per_s = round(idle_cpu_per_s * 1e6, 1)
    result.idle_commands_per_s = round(sum(d.commands for d in idle) / idle_span, 1)

    before = [snapshot(client) for client in clients]
    run = run_wrk(url, script, CONNECTIONS, duration_s)
    after = [snapshot(client) for client in clients]
    for client in clients:
        client.close()
    deltas = [delta(b, a) for b, a in zip(before, after, strict=True)]

    requests = max(run.requests, 1)
    result.requests, result.rps, result.errors = run.requests, run.rps, run.errors
    result.commands_run = round(sum(d.commands for d in deltas) / requests, 3)
    scripts_per_node = [sum(d.calls[n] for n in SCRIPT_COMMANDS) for d in deltas]
    result.script_calls = round(sum(scripts_per_node) / requests, 3)
    total_scripts = sum(scripts_per_node)
    result.script_share = [
        round(n / total_scripts, 3) if total_scripts else 0.0 for n in scripts_per_node
    ]
    result.round_trips = round(sum(d.reads for d in deltas) / requests, 3)
    result.connections_per_s = round(sum(d.connections for d in deltas) / run.duration_s, 2)
    cpu_s = sum(d.cpu_s for d in deltas)
    result.cpu_us = round(cpu_s * 1e6 / requests, 2)
    idle_share = idle_cpu_per_s * run.duration_s
    result.cpu_us_net = round(max(0.0, cpu_s - idle_share) * 1e6 / requests, 2)
    # commandstats time of what the gateway sent: a script's usec already holds the commands it
    # ran, so those are weighed by the share of their calls that came from clients (MONITOR).
    command_us = 0.0
    for d in deltas:
        for name, usec in d.usec.items():
            base = name.split("|", 1)[0]
            if base == "info" and not sent.get("info"):
                continue  # only the benchmark's own INFO
            from_clients, from_scripts = sent.get(base, 0), scripted.get(base, 0)
            share = (
                1.0
                if from_clients + from_scripts == 0
                else from_clients / (from_clients + from_scripts)
            )
            command_us += usec * share
    result.command_us = round(command_us / requests, 2)
    if len(ports) == 1:
        result.plain_us = plain_command_us(ports[0])
    return result


def run_store_cost(
    workdir: Path,
    upstream_port: int,
    topologies: Sequence[str],
    duration_s: float,
    monitor_s: float,
    commit: str,
    wait_quiet: Callable[[int | None], None],
    log: Callable[[str], None],
    root: Path = ROOT,
) -> list[StoreCost]:
    """Every topology x (with limits, without): a fresh store and gateway for each."""
    results: list[StoreCost] = []
    for topology in topologies:
        for limited in (True, False):
            kind = "limited" if limited else "unlimited"
            name = f"storecost-{topology}-{kind}"
            label = "cluster (3 masters)" if topology == "cluster" else "standalone"
            result = StoreCost(label, limited, commit)
            procs: list[Proc] = []
            gateway: Target | None = None
            try:
                procs, ports = start_store(topology, workdir / name)
                nodes = ",".join(f"{HOST}:{p}" for p in ports)
                url = f"redis+cluster://{nodes}" if topology == "cluster" else f"redis://{nodes}/0"
                log(f"store cost: {result.label} ({url})")
                gateway = start_gateway(
                    workdir / name / "gateway",
                    upstream_port,
                    url,
                    name,
                    name,
                    limited=limited,
                    tokens=TOKENS,
                    root=root,
                )
                measure_store_cost(
                    gateway, ports, result, duration_s, monitor_s, workdir / name, wait_quiet
                )
            except (RuntimeError, subprocess.SubprocessError, redis.RedisError, OSError) as exc:
                result.failure = first_line(exc)
            finally:
                if gateway is not None and gateway.proc is not None:
                    gateway.proc.stop()
                for proc in procs:
                    proc.stop()
            log(describe(result))
            results.append(result)
    return results


def start_store(topology: str, directory: Path) -> tuple[list[Proc], list[int]]:
    """A fresh store of ``topology`` ("standalone" or "cluster"): its processes and ports."""
    directory.mkdir(parents=True, exist_ok=True)
    if topology == "cluster":
        return start_cluster(directory)
    proc, port = start_redis(directory)
    return [proc], [port]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def describe(result: StoreCost) -> str:
    if result.failure:
        return f"{result.label}: failed: {result.failure}"
    fleet = result.fleet_rps_per_core
    return (
        f"{result.label}: {result.rps:,.0f} req/s, per request {result.commands_run:.2f} "
        f"commands run ({result.commands_sent if result.commands_sent is not None else 'n/a'} "
        f"sent), {result.script_calls:.2f} script calls, {result.round_trips:.2f} round trips, "
        f"Redis CPU {result.cpu_us:.1f} us ({result.cpu_us_net:.1f} us less idle; commands "
        f"{result.command_us:.1f} us) -> "
        f"{'no store call' if fleet is None else f'{fleet:,.0f}'} fleet req/s per Redis core"
    )
