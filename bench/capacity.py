"""What one Redis core sustains: the store client driven to saturation (capacity_driver.py).

The store-cost points (storecost.py) count what one gateway's requests cost Redis, but one
gateway keeps Redis under a tenth busy, and an idle core runs every request cold: the same
script costs more there than on a core that is busy, which is where sizing matters.  Here the
gateway's own store client (the checkout under test's ``RedisBackend``: batcher and
quota.lua) runs in one process on core 0 as several replicas with many admissions in flight,
and Redis alone on core 1 is kept as busy as that process can make it.  For each topology
and each number of tokens:

- **admissions/s** the driver got, and how busy the Redis core was (INFO cpu);
- **Redis CPU us per admission**, and so **fleet req/s per Redis core** (1e6 / that);
- **admissions per script call** (how many calls a batch carried) and **per windows read**
  (how many calls of one owner a batch carried: one HMGET per owner and batch).

With few tokens a batch carries several calls of each owner and shares its reads and writes;
with many, each call is its owner's only one in the batch, and a settlement rides with its
token's next admission on that replica within the wait for requests far from their limits
(SETTLE_PATIENT_S).  The last shape runs the many tokens with the short wait of requests near
a limit (SETTLE_DELAY_S), which is also what a fleet whose tokens come back to a replica only
after the long wait sees: every settlement travels alone, so a request costs two visits to its
owner's keys.  From few busy tenants to very many quiet ones, the shapes of a real fleet.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.procs import SUT_CORE, Proc, pinned
from bench.storecost import HOST, first_line, start_store
from bench.targets import ROOT

SHAPES = ((8, False), (1000, False), (20_000, False), (20_000, True))  # tokens, alone
REPLICAS = 4
CONCURRENCY = 32
BUSY_ENOUGH = 0.9  # share of its core Redis must use for a figure to size it


@dataclass
class CapacityPoint:
    topology: str
    tokens: int
    commit: str
    alone: bool = False  # every settlement travels alone (the short wait)
    admissions_per_s: float = 0.0
    busy: float = 0.0  # share of one core Redis used (summed over masters)
    cpu_us: float = 0.0
    per_script_call: float = 0.0
    per_windows_read: float = 0.0
    errors: int = 0
    failure: str | None = None

    @property
    def driver_bound(self) -> bool:
        """Redis was not kept busy: the driver's Python was the bottleneck, and Redis running
        cold costs more per request (bench/script_replay.py keeps it busy on such a core)."""
        return self.busy < BUSY_ENOUGH

    @property
    def fleet_rps_per_core(self) -> float | None:
        return 1e6 / self.cpu_us if self.cpu_us > 0 else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fleet_rps_per_core"] = self.fleet_rps_per_core
        out["driver_bound"] = self.driver_bound
        return out


def _python(root: Path) -> str:
    python = root / ".venv" / "bin" / "python"
    return str(python) if python.exists() else sys.executable


def measure(
    nodes: Sequence[int], kind: str, point: CapacityPoint, seconds: float, root: Path
) -> None:
    argv = [
        _python(root),
        str(Path(__file__).with_name("capacity_driver.py")),
        "--root",
        str(root),
        "--nodes",
        ",".join(f"{HOST}:{port}" for port in nodes),
        "--kind",
        kind,
        "--replicas",
        str(REPLICAS),
        "--concurrency",
        str(CONCURRENCY),
        "--tokens",
        str(point.tokens),
        "--seconds",
        str(seconds),
        *(["--alone"] if point.alone else []),
    ]
    done = subprocess.run(
        pinned(argv, SUT_CORE), capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        point.failure = (done.stderr.strip().splitlines() or ["driver failed"])[-1]
        return
    out = json.loads(done.stdout.strip().splitlines()[-1])
    admissions = max(int(out["admissions"]), 1)
    point.admissions_per_s = round(admissions / out["seconds"], 1)
    point.busy = round(out["cpu_s"] / out["seconds"], 3)
    point.cpu_us = round(out["cpu_s"] * 1e6 / admissions, 2)
    point.per_script_call = round(admissions / max(int(out["script_calls"]), 1), 1)
    point.per_windows_read = round(admissions / max(int(out["windows_reads"]), 1), 1)
    point.errors = int(out["errors"])


def run_capacity(
    workdir: Path,
    topologies: Sequence[str],
    seconds: float,
    commit: str,
    log: Callable[[str], None],
    root: Path = ROOT,
) -> list[CapacityPoint]:
    points: list[CapacityPoint] = []
    for topology in topologies:
        for tokens, alone in SHAPES:
            label = "cluster (3 masters)" if topology == "cluster" else "standalone"
            point = CapacityPoint(label, tokens, commit, alone)
            procs: list[Proc] = []
            try:
                name = f"capacity-{topology}-{tokens}{'-alone' if alone else ''}"
                procs, ports = start_store(topology, workdir / name)
                measure(ports, topology, point, seconds, root)
            except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as exc:
                point.failure = first_line(exc)
            finally:
                for proc in procs:
                    proc.stop()
            log(describe(point))
            points.append(point)
    return points


def shape(tokens: int, alone: bool) -> str:
    return f"{tokens} tokens{', every settlement alone' if alone else ''}"


def describe(point: CapacityPoint) -> str:
    what = f"capacity, {point.topology}, {shape(point.tokens, point.alone)}"
    if point.failure:
        return f"{what}: failed: {point.failure}"
    return (
        f"{what}: {point.admissions_per_s:,.0f} "
        f"admissions/s, Redis {point.busy:.0%} busy, {point.cpu_us:.1f} us per admission -> "
        f"{point.fleet_rps_per_core or 0:,.0f} fleet req/s per Redis core "
        f"({point.per_script_call:.1f} per script call, {point.per_windows_read:.1f} per "
        f"windows read)"
        + ("; Redis not kept busy: the figure is inflated" if point.driver_bound else "")
    )
