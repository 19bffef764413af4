"""Redis CPU per request of quota.lua alone, with Redis kept fully busy on any machine.

The capacity driver (capacity_driver.py) runs the gateway's own store client, and on a slow
core its Python cannot keep Redis busy: Redis then runs cold and every figure grows.  Here the
batches are built and encoded in plain Python, sent over one socket per server with a few in
flight, so Redis is the bottleneck.  The calls are the capacity driver's "riding" shape: each
settles its token's previous request (43 tokens reserved, 19 used: every settlement corrects a
bucket) and admits a new one, with rpm, tpm and concurrency far from binding; tokens take
turns; 32 calls per script call, as 4 replicas x 32 in flight gave.  ``--alone``: half of each
batch is admissions, half lone settlements of earlier requests, so a request costs two visits
to its keys.  ``--cluster``: a 3-master Cluster, each master sent batches of 11 calls of the
tokens whose slots it holds (10.7 per script call with the capacity driver), only the first
owner's keys declared; its masters share one core here.  ``--one-master``: the same Cluster,
only the first master's tokens sent (about a third of ``--tokens``), so that master has a core
of its own, as in production.

Checkouts are measured alternately on a fresh store each (their own ``.venv``, their own
``quota.lua`` and key names), and the means printed side by side:

    uv run python -m bench.script_replay --tokens 20000 --warmup 65 --rounds 4 . ../other

The batch layout is lua/quota.lua's (ARGV: undeclared keys, the owners that are a team's
token, calls); it is written out here, not taken from service/store/batching.py.  Each
checkout is replayed by its own copy of this file (when it has one), so a checkout whose
script takes other arguments is sent the same requests in its own layout.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BATCH = 32  # calls per script call
OWNER_BASE = 1024  # a call's head: its shape * OWNER_BASE + its owner (lua/quota.lua)
CLUSTER_BATCH = 11  # per master's script call: 10.7 with the capacity driver's 4 x 32
IN_FLIGHT = 4  # script calls sent ahead
RESERVED, USED = 43, 19
# rpm, tpm, concurrency; no team, no budget; the lease ms
TERMS = "1000000000,1000000000,100000,0,0,0,-1,0,-1,0,10000"
NO_BUDGET = -2


def _encode(args: list[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Server:
    """One Redis server (a master) and the tokens whose keys it holds: its batches, sent over
    one connection."""

    def __init__(self, port: int, owners: list[list[str]], batch: int, spread: bool) -> None:
        import hiredis

        self.owners = owners
        self.batch = batch
        self.spread = spread  # a Cluster: only the first owner's keys are declared
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        self.previous: dict[int, tuple[str, int]] = {}  # token -> its request not settled
        # --alone: the admissions of each batch in flight, then, once its answer is read (as a
        # request settles only after its admission was answered), those to settle, in order
        self.in_flight: deque[list[tuple[int, str, int]]] = deque()
        self.unsettled: deque[tuple[int, str, int]] = deque()
        self.turn = 0

    def reply(self) -> Any:
        while True:
            answer = self.reader.gets()
            if answer is not False:
                return answer
            self.reader.feed(self.sock.recv(1 << 20))

    def answered(self) -> Any:
        """The answer of the oldest script call in flight; its admissions may now settle."""
        answer = self.reply()
        self.unsettled.extend(self.in_flight.popleft())
        return answer

    def command(self, *args: Any) -> Any:
        self.sock.sendall(_encode(list(args)))
        return self.reply()

    def cpu_s(self) -> float:
        info = self.command("INFO", "cpu").decode()
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])

    def send_batch(self, sha: str, alone: bool, entries: Iterator[str]) -> int:
        """Send one script call; the admissions it carries."""
        second = int(time.time())
        keys: list[str] = []
        calls: list[Any] = []
        admitted = 0
        mine: list[tuple[int, str, int]] = []
        for i in range(self.batch):
            if alone and i % 2 == 1 and self.unsettled:
                token, entry, at = self.unsettled.popleft()
                keys += self.owners[token]
                # one settlement, no admission: shape 4 * 1 + 0
                calls += [4 * OWNER_BASE + i + 1, entry, at, USED - RESERVED, NO_BUDGET]
                continue
            token = self.turn
            self.turn = (self.turn + 1) % len(self.owners)
            keys += self.owners[token]
            admitted += 1
            entry = next(entries)
            settle: list[Any] = []
            if alone:
                mine.append((token, entry, second))
            else:
                held = self.previous.pop(token, None)
                if held is not None:
                    settle = [held[0], held[1], USED - RESERVED, NO_BUDGET]
                self.previous[token] = (entry, second)
            admit = [entry, RESERVED, TERMS]
            shape = (4 if settle else 0) + 1  # its settlement (if any), and it admits
            calls += [shape * OWNER_BASE + i + 1, *settle, *admit]
        self.in_flight.append(mine)
        size = len(self.owners[0])
        declared, hidden = (keys[:size], keys[size:]) if self.spread else (keys, [])
        self.sock.sendall(
            _encode(
                [
                    "EVALSHA",
                    sha,
                    len(declared),
                    *declared,
                    len(hidden),
                    *hidden,
                    0,  # no owner is a team's token
                    self.batch,
                    *calls,
                ]
            )
        )
        return admitted


class _Replay:
    """The replay of one checkout's script on one store; runs under that checkout's own
    interpreter, with its key names."""

    def __init__(
        self, root: Path, ports: list[int], tokens: int, alone: bool, one_master: bool
    ) -> None:
        sys.path.insert(0, str(root))
        from redis.crc import key_slot

        from service.store.keys import Keys

        self.source = (root / "service/store/lua/quota.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        self.alone = alone
        keys = Keys("best")
        owners = [keys.quota(f"replay-{t:05d}", None).as_list() for t in range(tokens)]
        if len(ports) == 1:
            self.servers = [_Server(ports[0], owners, BATCH, spread=False)]
        else:
            # Each master's tokens, by the slot of their hash tag; a batch per master the
            # size a Cluster batch had with 4 replicas x 32 in flight over 3 masters.
            probe = _Server(ports[0], owners, 0, spread=True)
            by_port: dict[int, list[list[str]]] = {port: [] for port in ports}
            ranges = [
                (int(r[0]), int(r[1]), int(r[2][1])) for r in probe.command("CLUSTER", "SLOTS")
            ]
            probe.sock.close()
            for owner in owners:
                slot = key_slot(owner[0].encode())
                port = next(port for low, high, port in ranges if low <= slot <= high)
                by_port[port].append(owner)
            self.servers = [
                _Server(port, mine, CLUSTER_BATCH, spread=True) for port, mine in by_port.items()
            ]
            if one_master:  # the others idle: this one has a core of its own
                self.servers = self.servers[:1]
        for server in self.servers:
            if server.command("SCRIPT", "LOAD", self.source) != self.sha.encode():
                raise RuntimeError("SCRIPT LOAD answered another digest")
        self.entries = (f"r{n}" for n in itertools.count())

    def cpu_s(self) -> float:
        return sum(server.cpu_s() for server in self.servers)

    def check_leases(self) -> None:
        """Fail if the store holds more leases than requests are left unsettled: a settlement
        that missed its lease (say, one sent before its admission ran) corrected nothing and
        left its lease behind, and the figures would not be of the shape described."""
        for server in self.servers:
            held = 0
            for owner in server.owners:
                server.sock.sendall(_encode(["ZCARD", owner[1]]))
            for _ in server.owners:
                held += max(0, server.reply() - 1)  # LIVE is not a lease
            unsettled = len(server.unsettled) + len(server.previous)
            if held > unsettled:
                raise RuntimeError(f"{held} leases held for {unsettled} requests unsettled")

    def run(self, seconds: float) -> int:
        """Replay for ``seconds``; the admissions sent."""
        admitted = 0
        for server in self.servers:
            for _ in range(IN_FLIGHT):
                admitted += server.send_batch(self.sha, self.alone, self.entries)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for server in self.servers:
                answer = server.answered()
                if not isinstance(answer, list) or any(_refused(call) for call in answer):
                    # every call settles, or is admitted: its limits are far from binding
                    raise RuntimeError(f"script call failed or refused: {answer}")
                admitted += server.send_batch(self.sha, self.alone, self.entries)
        for server in self.servers:
            for _ in range(IN_FLIGHT):
                server.answered()
        return admitted


def _refused(answer: Any) -> bool:
    """Was a call refused?  One that only settles answers 0, one that admits a list."""
    return answer != 0 if isinstance(answer, int) else answer[0] != 0


def _work(args: argparse.Namespace) -> None:
    replay = _Replay(
        Path(args.root),
        [int(p) for p in args.ports.split(",")],
        args.tokens,
        args.alone,
        args.one_master,
    )
    replay.run(args.warmup)
    cpu, started = replay.cpu_s(), time.monotonic()
    admissions = replay.run(args.seconds)
    cpu, elapsed = replay.cpu_s() - cpu, time.monotonic() - started
    replay.check_leases()
    print(json.dumps({"admissions": admissions, "seconds": elapsed, "cpu_s": cpu}))


def _measure(root: Path, args: argparse.Namespace) -> dict[str, float]:
    from bench.procs import SUT_CORE, pinned
    from bench.storecost import start_store

    python = root / ".venv" / "bin" / "python"
    replay = root / "bench" / "script_replay.py"
    with tempfile.TemporaryDirectory() as workdir:
        cluster = args.cluster or args.one_master
        procs, ports = start_store("cluster" if cluster else "standalone", Path(workdir))
        try:
            argv = [
                str(python if python.exists() else sys.executable),
                str(replay if replay.exists() else __file__),
                "--work",
                "--root",
                str(root),
                "--ports",
                ",".join(str(port) for port in ports),
                "--tokens",
                str(args.tokens),
                "--warmup",
                str(args.warmup),
                "--seconds",
                str(args.seconds),
                *(["--alone"] if args.alone else []),
                *(["--one-master"] if args.one_master else []),
            ]
            done = subprocess.run(
                pinned(argv, SUT_CORE), capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(done.stderr.strip().splitlines()[-1])
            out = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            for proc in procs:
                proc.stop()
    return {
        "us": out["cpu_s"] * 1e6 / out["admissions"],
        "per_s": out["admissions"] / out["seconds"],
        "busy": out["cpu_s"] / out["seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", default=["."], help="checkouts, measured in turn")
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--warmup", type=float, default=2.0, help="65: windows a minute old")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2, help="each round runs every checkout")
    parser.add_argument("--alone", action="store_true", help="every settlement alone")
    parser.add_argument("--cluster", action="store_true", help="a 3-master Cluster")
    parser.add_argument(
        "--one-master",
        action="store_true",
        help="a 3-master Cluster, only the first master's tokens sent (a core of its own)",
    )
    parser.add_argument("--work", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.work:
        _work(args)
        return 0
    roots = [Path(r).resolve() for r in args.roots]
    runs: dict[Path, list[float]] = {root: [] for root in roots}
    for turn in range(args.rounds):
        for root in roots if turn % 2 == 0 else roots[::-1]:  # each goes first in turn
            point = _measure(root, args)
            runs[root].append(point["us"])
            print(
                f"{root}: {point['us']:.2f} us of Redis CPU per request, "
                f"{point['per_s']:,.0f} requests/s, Redis {point['busy']:.0%} busy",
                flush=True,
            )
    first = sum(runs[roots[0]]) / len(runs[roots[0]])
    for root, values in runs.items():
        mean = sum(values) / len(values)
        print(
            f"{root}: mean {mean:.2f} us ({', '.join(f'{v:.1f}' for v in values)}), "
            f"{mean / first:.3f} of the first"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
