"""Redis CPU per request of quota.lua alone, with Redis kept fully busy on any machine.

The capacity driver (capacity_driver.py) runs the gateway's own store client, and on a slow
core its Python cannot keep Redis busy: Redis then runs cold and every figure grows (seen at
35% busy, 2.5x its saturated cost).  Here the batches are built and encoded in plain Python,
sent over one socket with a few in flight, so Redis is the bottleneck.  The calls are the
capacity driver's "riding" shape: each settles its token's previous request (43 tokens
reserved, 19 used: every settlement corrects a bucket) and admits a new one, with rpm, tpm and
concurrency far from binding; tokens take turns; 32 calls per script call, as 4 replicas x 32
in flight gave.  ``--alone``: half of each batch is admissions, half lone settlements of
earlier requests, so a request costs two visits to its keys.

Checkouts are measured alternately on a fresh Redis each (their own ``.venv``, their own
``quota.lua`` and key names), and the means printed side by side:

    uv run python -m bench.script_replay --tokens 20000 --warmup 65 --rounds 4 . ../other

The batch layout is lua/quota.lua's (ARGV: undeclared keys, owners and their key counts,
calls); it is written out here, not taken from service/store/batching.py, so that a checkout
with another batcher is measured with the same calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

BATCH = 32  # calls per script call
IN_FLIGHT = 4  # script calls sent ahead
RESERVED, USED = 43, 19
LIMITS = "1000000000,1000000000,100000,0,0,0,-1,0,-1,0"  # rpm, tpm, concurrency; no team, budget
NO_BUDGET = -2


def _encode(args: list[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Worker:
    """One connection replaying batches; runs under the measured checkout's interpreter."""

    def __init__(self, root: Path, port: int, tokens: int, alone: bool) -> None:
        import hiredis

        sys.path.insert(0, str(root))
        from service.store.keys import Keys

        self.source = (root / "service/store/lua/quota.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        keys = Keys("best")
        self.owners = [keys.quota(f"replay-{t:05d}", None).as_list() for t in range(tokens)]
        self.alone = alone
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        self.previous: dict[int, tuple[str, int]] = {}  # token -> its request not settled
        self.unsettled: deque[tuple[int, str, int]] = deque()  # --alone: in admission order
        self.sent = 0
        self.turn = 0

    def reply(self) -> Any:
        while True:
            answer = self.reader.gets()
            if answer is not False:
                return answer
            self.reader.feed(self.sock.recv(1 << 20))

    def command(self, *args: Any) -> Any:
        self.sock.sendall(_encode(list(args)))
        return self.reply()

    def _batch(self) -> bytes:
        second = int(time.time())
        keys: list[str] = []
        calls: list[Any] = []
        for i in range(BATCH):
            if self.alone and i % 2 == 1 and self.unsettled:
                token, entry, at = self.unsettled.popleft()
                keys += self.owners[token]
                calls += [i + 1, 6, 1, entry, at, RESERVED, USED, NO_BUDGET]
                continue
            token = self.turn
            self.turn = (self.turn + 1) % len(self.owners)
            keys += self.owners[token]
            self.sent += 1
            entry = f"r{self.sent}"
            settle: list[Any] = [0]
            if self.alone:
                self.unsettled.append((token, entry, second))
            else:
                held = self.previous.pop(token, None)
                if held is not None:
                    settle = [1, held[0], held[1], RESERVED, USED, NO_BUDGET]
                self.previous[token] = (entry, second)
            admit = [entry, RESERVED, 10_000, 0, LIMITS]
            calls += [i + 1, len(settle) + len(admit), *settle, *admit]
        sizes = [len(self.owners[0])] * BATCH
        return _encode(["EVALSHA", self.sha, len(keys), *keys, 0, BATCH, *sizes, BATCH, *calls])

    def cpu_s(self) -> float:
        info = self.command("INFO", "cpu").decode()
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])

    def run(self, seconds: float) -> int:
        """Replay for ``seconds``; the admissions sent."""
        start = self.sent
        for _ in range(IN_FLIGHT):
            self.sock.sendall(self._batch())
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            answer = self.reply()
            if not isinstance(answer, list) or any(call[0] != 0 for call in answer):
                # every call settles, or is admitted: its limits are far from binding
                raise RuntimeError(f"script call failed or refused: {answer}")
            self.sock.sendall(self._batch())
        for _ in range(IN_FLIGHT):
            self.reply()
        return self.sent - start


def _work(args: argparse.Namespace) -> None:
    worker = _Worker(Path(args.root), args.port, args.tokens, args.alone)
    if worker.command("SCRIPT", "LOAD", worker.source) != worker.sha.encode():
        raise RuntimeError("SCRIPT LOAD answered another digest")
    worker.run(args.warmup)
    cpu, started = worker.cpu_s(), time.monotonic()
    admissions = worker.run(args.seconds)
    cpu, elapsed = worker.cpu_s() - cpu, time.monotonic() - started
    print(json.dumps({"admissions": admissions, "seconds": elapsed, "cpu_s": cpu}))


def _measure(root: Path, args: argparse.Namespace) -> dict[str, float]:
    from bench.procs import SUT_CORE, pinned
    from bench.targets import start_redis

    python = root / ".venv" / "bin" / "python"
    with tempfile.TemporaryDirectory() as workdir:
        proc, port = start_redis(Path(workdir))
        try:
            argv = [
                str(python if python.exists() else sys.executable),
                __file__,
                "--work",
                "--root",
                str(root),
                "--port",
                str(port),
                "--tokens",
                str(args.tokens),
                "--warmup",
                str(args.warmup),
                "--seconds",
                str(args.seconds),
                *(["--alone"] if args.alone else []),
            ]
            done = subprocess.run(
                pinned(argv, SUT_CORE), capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(done.stderr.strip().splitlines()[-1])
            out = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
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
    parser.add_argument("--work", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
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
