"""One side-by-side run: every target, JSON and SSE, a latency sweep each."""

from __future__ import annotations

import datetime as dt
import functools
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.capacity import run_capacity
from bench.loadgen import CACHE_KINDS, WrkResult, render_script, request_body, run_wrk
from bench.procs import HELPER_CORE, SUT_CORE, CpuMeter, Proc, free_port, tree_rss_bytes
from bench.storecost import StoreCost, run_store_cost
from bench.targets import (
    ROOT,
    Target,
    check_target,
    direct_target,
    litellm_binary,
    start_gateway,
    start_litellm,
    start_redis,
)
from bench.upstream import start_nginx

BASELINE = "baseline-"  # "baseline-embedded" is the baseline's "gateway-embedded"


@dataclass
class Settings:
    duration_s: float
    concurrencies: list[int]
    throughput_concurrency: int
    kinds: list[str]
    warmup_s: float
    validate_s: float
    litellm: bool
    mode: str
    quiet_wait_s: float = 60.0
    store_topologies: list[str] = field(default_factory=lambda: ["standalone", "cluster"])
    store_cost_s: float = 10.0  # the timed run of each store-cost point
    monitor_s: float = 1.0  # the run under MONITOR that counts commands by name
    gateway_root: Path = ROOT  # the checkout whose gateway is measured
    baseline_root: Path | None = None  # another checkout measured in the same run, for ratios


@dataclass
class KindResult:
    check: str | None = None
    validation: WrkResult | None = None
    sweep: list[WrkResult] = field(default_factory=list)
    crash: str | None = None

    def at(self, connections: int) -> WrkResult | None:
        for result in self.sweep:
            if result.connections == connections:
                return result
        return None

    @property
    def errors(self) -> int:
        runs = [*self.sweep, *([self.validation] if self.validation else [])]
        return sum(run.errors for run in runs)


@dataclass
class TargetResult:
    name: str
    label: str
    status: str  # "ok", "skipped" or "failed"
    message: str | None = None
    rss_bytes: int | None = None  # after the JSON and SSE load
    rss_cache_bytes: int | None = None  # after the response cache's rows too
    kinds: dict[str, KindResult] = field(default_factory=dict)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def git_commit(root: Path = ROOT) -> str:
    """HEAD, marked ``+dirty`` when service/ has uncommitted changes (what actually ran)."""
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root
    )
    commit = proc.stdout.strip() or "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "service"], capture_output=True, text=True, cwd=root
    )
    return commit + ("+dirty" if dirty.stdout.strip() else "")


def _describe(result: WrkResult) -> str:
    errors = f", {result.errors} errors" if result.errors else ""
    cpu = result.cpu or {}
    usage = f"  core0 {cpu['core_busy']:.0%}" if "core_busy" in cpu else ""
    if "proc_cpu" in cpu:
        usage += f" (target {cpu['proc_cpu']:.0%})"
    if "helper_core_busy" in cpu:
        usage += f", core1 {cpu['helper_core_busy']:.0%}"
    return (
        f"c={result.connections:<3} {result.rps:>10,.0f} req/s  p50 {result.p50_ms:.3f} "
        f"p90 {result.p90_ms:.3f} p99 {result.p99_ms:.3f} ms{usage}{errors}"
    )


def measure(target: Target, settings: Settings, scripts_dir: Path) -> TargetResult:
    """Check, warm up, validate and sweep one running target; RSS after the load (and again
    after the response cache's rows, which fill an embedded cache with answers)."""
    result = TargetResult(target.name, target.label, "ok")
    for kind in settings.kinds:
        if kind not in target.urls:
            continue  # the response cache's rows are the gateway's alone
        if kind in CACHE_KINDS and result.rss_bytes is None and target.proc is not None:
            result.rss_bytes = tree_rss_bytes(target.proc.pid)
        kind_result = KindResult()
        result.kinds[kind] = kind_result
        problem = check_target(target, kind, request_body(kind))
        if problem:
            kind_result.check = problem
            log(f"{target.name} {kind}: check failed, not measured: {problem}")
            continue
        url = target.urls[kind]
        script = scripts_dir / f"{target.name}-{kind}.lua"
        script.write_text(render_script(kind, target.token, api=target.api))
        checked = scripts_dir / f"{target.name}-{kind}-validate.lua"
        checked.write_text(render_script(kind, target.token, validate=True, api=target.api))
        top = settings.throughput_concurrency
        if settings.warmup_s > 0:
            run_wrk(url, script, top, settings.warmup_s)
        kind_result.validation = run_wrk(url, checked, top, settings.validate_s)
        if kind_result.validation.errors:
            log(
                f"{target.name} {kind}: {kind_result.validation.errors} wrong answers at "
                f"c={top}; first: {kind_result.validation.first_bad}"
            )
        for connections in settings.concurrencies:
            pid = target.proc.pid if target.proc else None
            _wait_quiet(pid, settings.quiet_wait_s)
            meter = CpuMeter(pid, SUT_CORE)
            helper = CpuMeter(None, HELPER_CORE)
            run = run_wrk(url, script, connections, settings.duration_s)
            run.cpu = meter.read()
            run.cpu["helper_core_busy"] = helper.read()["core_busy"]
            kind_result.sweep.append(run)
            log(f"{target.name:<16} {kind:<4} {_describe(run)}")
            if target.proc is not None and not target.proc.alive():
                kind_result.crash = (
                    f"{target.name} {target.proc.exit_description()} during the "
                    f"{kind} run at c={connections}; log {target.proc.log_path}:\n"
                    f"{target.proc.log_tail()}"
                )
                log(kind_result.crash)
                result.status = "failed"
                result.message = kind_result.crash
                return result
    if target.proc is not None:
        rss = tree_rss_bytes(target.proc.pid)
        if result.rss_bytes is None:
            result.rss_bytes = rss
        else:
            result.rss_cache_bytes = rss
        log(
            f"{target.name}: RSS {result.rss_bytes / 2**20:.1f} MiB after load, "
            f"{rss / 2**20:.1f} MiB at the end"
        )
    return result


def _foreign_load(pid: int | None, seconds: float = 0.5) -> float:
    """Share of the measured cores busy with processes other than the target (0..1)."""
    sut = CpuMeter(pid, SUT_CORE)
    helper = CpuMeter(None, HELPER_CORE)
    time.sleep(seconds)
    sut_use, helper_use = sut.read(), helper.read()
    return max(sut_use["core_busy"] - sut_use.get("proc_cpu", 0.0), helper_use["core_busy"])


def _wait_quiet(pid: int | None, max_wait_s: float, threshold: float = 0.1) -> None:
    """Hold the next run while something else keeps the cores busy (up to ``max_wait_s``)."""
    deadline = time.monotonic() + max_wait_s
    load = _foreign_load(pid)
    if load <= threshold:
        return
    log(f"other processes keep the cores {load:.0%} busy: waiting up to {max_wait_s:.0f}s")
    while time.monotonic() < deadline:
        load = _foreign_load(pid, 1.0)
        if load <= threshold:
            log("cores quiet again")
            return
    log(f"still {load:.0%} busy with other processes: measuring anyway (see the notes)")


@contextmanager
def running(start: Callable[[], Target]) -> Iterator[Target]:
    target = start()
    try:
        yield target
    finally:
        if target.proc is not None:
            target.proc.stop()


MESSAGES_LABEL = "BEST gateway, embedded store, Messages API"


def run_all(settings: Settings, workdir: Path) -> dict[str, object]:
    scripts = workdir / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    load_before = _loadavg()
    commit = git_commit(settings.gateway_root)
    results: list[TargetResult] = []
    store_cost: list[dict[str, object]] = []
    capacity: list[dict[str, object]] = []
    upstream_port = free_port()
    nginx = start_nginx(workdir / "nginx", upstream_port)
    redis: Proc | None = None
    try:
        log(f"upstream alone (nginx on port {upstream_port}, pinned with wrk)")
        direct = measure(direct_target(upstream_port), settings, scripts)
        results.append(direct)
        top = settings.throughput_concurrency
        alone = {
            kind: run.rps
            for kind, kind_result in direct.kinds.items()
            if (run := kind_result.at(top)) is not None
        }
        figures = ", ".join(f"{kind.upper()} {rps:,.0f} req/s" for kind, rps in alone.items())
        log(f"upstream alone at c={top}: {figures}; every other row must stay far below it")

        redis, redis_port = start_redis(workdir)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        # Tracing on (every request sampled, exported to nginx's OTLP receiver) beside off; the
        # JWT row right after the static-token row it is compared with (same store); the same
        # chat upstream through Anthropic's Messages API (translated both ways).
        otlp = f"http://127.0.0.1:{upstream_port}"
        gateways = [
            ("gateway-embedded", "BEST gateway, embedded store", None, None, False, "chat"),
            ("gateway-jwt", "BEST gateway, embedded store, JWT identity", None, None, True, "chat"),
            ("gateway-messages", MESSAGES_LABEL, None, None, False, "messages"),
            (
                "gateway-embedded-traced",
                "BEST gateway, embedded store, traced",
                None,
                otlp,
                False,
                "chat",
            ),
            ("gateway-redis", "BEST gateway, Redis store", redis_url, None, False, "chat"),
            (
                "gateway-redis-traced",
                "BEST gateway, Redis store, traced",
                redis_url,
                otlp,
                False,
                "chat",
            ),
        ]

        def gateway_row(
            root: Path,
            name: str,
            label: str,
            store_url: str | None,
            traces_to: str | None = None,
            identity: bool = False,
            api: str = "chat",
        ) -> None:
            start = functools.partial(
                start_gateway,
                workdir / name,
                upstream_port,
                store_url,
                name,
                label,
                root=root,
                otlp_endpoint=traces_to,
                identity=identity,
                api=api,
            )
            results.append(_measure_started(name, label, start, settings, scripts))

        for row in gateways:
            gateway_row(settings.gateway_root, *row)

        if settings.baseline_root is not None:
            # The same two rows of an older checkout, against the same upstream and Redis.
            base = git_commit(settings.baseline_root)
            for name, label, store_url in (
                (BASELINE + "embedded", f"BEST at {base}, embedded store", None),
                (BASELINE + "redis", f"BEST at {base}, Redis store", redis_url),
            ):
                gateway_row(settings.baseline_root, name, label, store_url)

        if not settings.litellm:
            results.append(TargetResult("litellm", "LiteLLM proxy", "skipped", "--skip-litellm"))
        elif litellm_binary() is None:
            message = "LiteLLM is not installed; run `uv run python -m bench --setup-litellm`"
            log(f"litellm: skipped: {message}")
            results.append(TargetResult("litellm", "LiteLLM proxy", "skipped", message))
        else:
            results.append(
                _measure_started(
                    "litellm",
                    "LiteLLM proxy",
                    lambda: start_litellm(workdir / "litellm", upstream_port),
                    settings,
                    scripts,
                )
            )
        if redis is not None:
            redis.stop()
            redis = None
        if settings.store_topologies and "json" in settings.kinds:
            store_cost = [
                row.to_dict() for row in store_cost_run(settings, workdir, upstream_port, commit)
            ]
            capacity = capacity_run(settings, workdir, commit)
    finally:
        if redis is not None:
            redis.stop()
        nginx.stop()
    return {
        "meta": {
            "started_at": started.isoformat(timespec="seconds"),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": commit,
            "mode": settings.mode,
            "duration_s": settings.duration_s,
            "concurrencies": settings.concurrencies,
            "throughput_concurrency": settings.throughput_concurrency,
            "kinds": settings.kinds,
            "machine": f"{platform.machine()}, {platform.system()} {platform.release()}",
            "cpu": _cpu_model(),
            "pinning": "system under test on core 0; nginx, redis, wrk (1 thread) on core 1",
            "loadavg_before": load_before,
            "loadavg_after": _loadavg(),
        },
        "targets": [_target_dict(result) for result in results],
        "store_cost": store_cost,
        "capacity": capacity,
    }


def capacity_run(settings: Settings, workdir: Path, commit: str) -> list[dict[str, object]]:
    """Redis driven to saturation through the store client (capacity.py)."""
    _wait_quiet(None, settings.quiet_wait_s)
    points = run_capacity(
        workdir / "capacity",
        settings.store_topologies,
        settings.store_cost_s,
        commit,
        log,
        settings.gateway_root,
    )
    return [point.to_dict() for point in points]


def store_cost_run(
    settings: Settings, workdir: Path, upstream_port: int, commit: str
) -> list[StoreCost]:
    """Store commands, script calls, round trips and Redis CPU per request (storecost.py)."""
    return run_store_cost(
        workdir / "store-cost",
        upstream_port,
        settings.store_topologies,
        settings.store_cost_s,
        settings.monitor_s,
        commit,
        lambda pid: _wait_quiet(pid, settings.quiet_wait_s),
        log,
        settings.gateway_root,
    )


def run_store_cost_only(settings: Settings, workdir: Path) -> dict[str, Any]:
    """Only the store-cost points (``--store-cost``), against the same nginx upstream."""
    started = dt.datetime.now(dt.UTC)
    commit = git_commit(settings.gateway_root)
    upstream_port = free_port()
    nginx = start_nginx(workdir / "nginx", upstream_port)
    try:
        rows = store_cost_run(settings, workdir, upstream_port, commit)
    finally:
        nginx.stop()
    capacity = capacity_run(settings, workdir, commit)
    return {
        "meta": {
            "started_at": started.isoformat(timespec="seconds"),
            "commit": commit,
            "duration_s": settings.store_cost_s,
            "cpu": _cpu_model(),
            "pinning": "gateway on core 0; nginx, redis, wrk (1 thread) on core 1",
            "loadavg": _loadavg(),
        },
        "store_cost": [row.to_dict() for row in rows],
        "capacity": capacity,
    }


def _measure_started(
    name: str,
    label: str,
    start: Callable[[], Target],
    settings: Settings,
    scripts: Path,
) -> TargetResult:
    log(f"starting {name}")
    try:
        with running(start) as target:
            return measure(target, settings, scripts)
    except RuntimeError as exc:
        log(f"{name}: failed: {exc}")
        return TargetResult(name, label, "failed", str(exc))


def _loadavg() -> str:
    """1, 5 and 15 minute load averages: anything else running skews the figures."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _target_dict(result: TargetResult) -> dict[str, object]:
    return {
        "name": result.name,
        "label": result.label,
        "status": result.status,
        "message": result.message,
        "rss_bytes": result.rss_bytes,
        "rss_cache_bytes": result.rss_cache_bytes,
        "kinds": {
            kind: {
                "check": kind_result.check,
                "crash": kind_result.crash,
                "errors": kind_result.errors,
                "validation": kind_result.validation.to_dict() if kind_result.validation else None,
                "sweep": [run.to_dict() for run in kind_result.sweep],
            }
            for kind, kind_result in result.kinds.items()
        },
    }
