"""Where a proxied request's CPU goes, by stage: measured with a profiler and with counters.

``uv run python -m bench.breakdown [--gateway-root PATH] [--store embedded|redis]
[--kind json|sse] [--seconds N] [--write]``

1. The profiler: the benchmark's nginx upstream and one gateway worker on the core under
   test (a token with limits, so admission runs on every request); wrk at c=32 on the helper
   core drives it twice, first alone, then with py-spy sampling the gateway (from the helper
   core too, without pausing it).  Each sample's self time goes to a stage
   (``bench/stages.py``); a stage's CPU per request is its share of the samples times the
   gateway's CPU seconds (``/proc``) over the requests wrk completed.
2. The counters: ``bench/stage_counters.py`` calls each stage's own code in a loop, in one
   process with the interpreter and ``service`` package of the measured checkout.

It prints the breakdown as markdown and writes ``bench/results/breakdown.json``; with
``--write`` it also replaces the section "Where a request's CPU goes" of the docs'
performance page (the same section ``python -m bench --report-only`` renders from that file).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.loadgen import render_script, run_wrk
from bench.page import splice_breakdown
from bench.procs import HELPER_CORE, SUT_CORE, CpuMeter, cpu_seconds, free_port, pin_self, pinned
from bench.runner import _cpu_model, _wait_quiet, git_commit, log
from bench.stages import other_rows, read_raw, render_markdown, stage_rows
from bench.targets import ROOT, gateway_command, start_gateway, start_redis, write_gateway_config
from bench.upstream import JSON_MODEL, start_nginx

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DOCS_PAGE = ROOT / "docs" / "performance.md"
CONNECTIONS = 32
RATE = 500  # samples per second
COUNTERS_SCRIPT = Path(__file__).resolve().parent / "stage_counters.py"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.breakdown",
        description="The gateway's CPU per proxied request by stage: py-spy samples under "
        "wrk load, and per-stage counters in one process.",
    )
    parser.add_argument(
        "--gateway-root",
        type=Path,
        default=ROOT,
        help="measure the gateway of another checkout (its own .venv)",
    )
    parser.add_argument("--store", choices=["embedded", "redis"], default="embedded")
    parser.add_argument("--kind", choices=["json", "sse"], default="json")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="seconds of each wrk run (default 10)"
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help="also write the section of docs/performance.md (the results JSON is always written)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each run, wait up to this many seconds for other processes to leave "
        "the two cores idle (default 60; 0 = never wait)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--docs-page", type=Path, default=DOCS_PAGE)
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    return parser.parse_args(argv)


def py_spy() -> str | None:
    """py-spy of this project's venv (a dev dependency), else one on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


_SAMPLES = re.compile(r"Samples: (\d+) Errors: (\d+)")


def profile(
    args: argparse.Namespace, workdir: Path, upstream_port: int, redis_url: str | None
) -> dict[str, Any]:
    """The profiled load run: stages by py-spy's samples, in µs per request."""
    root: Path = args.gateway_root
    target = start_gateway(
        workdir / "gateway", upstream_port, redis_url, "gateway", "gateway", root=root
    )
    assert target.proc is not None
    try:
        script = workdir / "load.lua"
        script.write_text(render_script(args.kind, target.token))
        url = target.urls[args.kind]
        log("warm-up, 2 s")
        run_wrk(url, script, CONNECTIONS, 2)
        _wait_quiet(target.proc.pid, args.quiet_wait)
        before = cpu_seconds(target.proc.pid)
        plain = run_wrk(url, script, CONNECTIONS, args.seconds)
        unprofiled_us = (cpu_seconds(target.proc.pid) - before) / max(plain.requests, 1) * 1e6
        log(f"without the profiler: {plain.rps:,.0f} req/s, {unprofiled_us:.0f} µs per request")
        _wait_quiet(target.proc.pid, args.quiet_wait)
        raw_path = workdir / "py-spy.txt"
        spy_binary = py_spy()
        assert spy_binary is not None
        spy_argv = [spy_binary, "record", "-f", "raw", "--nonblocking", "-r", str(RATE)]
        # Stopped by SIGINT after the run; the duration is only a bound.
        spy_argv += ["-d", str(round(args.seconds) + 600), "-o", str(raw_path)]
        spy_argv += ["-p", str(target.proc.pid)]
        spy = subprocess.Popen(
            pinned(spy_argv, HELPER_CORE),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(0.5)  # py-spy attaches
        before = cpu_seconds(target.proc.pid)
        meter = CpuMeter(target.proc.pid, SUT_CORE)
        started = time.monotonic()
        loaded = run_wrk(url, script, CONNECTIONS, args.seconds)
        spent = cpu_seconds(target.proc.pid) - before
        seconds = time.monotonic() - started
        core = meter.read()
        spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
        output, _ = spy.communicate(timeout=60)
        if not raw_path.exists():
            raise RuntimeError(f"py-spy wrote nothing:\n{output}")
        if loaded.errors or plain.errors:
            raise RuntimeError(f"wrk saw {loaded.errors + plain.errors} errors")
        counts = _SAMPLES.search(output)
        found = read_raw(raw_path.read_text(), roots=[str(root)])
        if found.total < RATE * spent / 2:
            raise RuntimeError(
                f"py-spy took {found.total} samples of a gateway busy for {spent:.1f} s "
                f"at {RATE} Hz:\n{output}"
            )
        cpu_us = spent / max(loaded.requests, 1) * 1e6
        log(f"with the profiler: {loaded.rps:,.0f} req/s, {cpu_us:.0f} µs per request")
        return {
            "seconds": round(seconds, 1),
            "requests": loaded.requests,
            "rps": loaded.rps,
            "cpu_s": round(spent, 3),
            "cpu_us": round(cpu_us, 1),
            # Share of its core the gateway used, and what other processes used of it.
            "core_share": core.get("proc_cpu"),
            "others_on_core": round(max(0.0, core["core_busy"] - core.get("proc_cpu", 0.0)), 3),
            "unprofiled_cpu_us": round(unprofiled_us, 1),
            "unprofiled_rps": plain.rps,
            "samples": found.total,
            "sampling_errors": int(counts[2]) if counts else None,
            "stages": stage_rows(found, cpu_us),
            "other": other_rows(found, cpu_us),
        }
    finally:
        target.proc.stop()


def counters(workdir: Path, root: Path, upstream_port: int, redis_url: str | None) -> Any:
    """The per-stage counters, run by the measured checkout's interpreter."""
    config_dir = workdir / "counters-config"
    write_gateway_config(config_dir, upstream_port)
    python = gateway_command(root)[:-2]  # without "-m service"
    argv = [*python, str(COUNTERS_SCRIPT), str(config_dir), str(workdir / "counters-data")]
    argv.append(f"http://127.0.0.1:{upstream_port}/json/v1/chat/completions")
    if redis_url:
        argv += ["--redis-url", redis_url]
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "REDIS_URL"}}
    env.update({"PYTHONPATH": str(root), "JSON_API_KEY": "k", "SSE_API_KEY": "k"})
    # On the core under test, alone there as the gateway was.
    done = subprocess.run(
        pinned(argv, SUT_CORE), capture_output=True, text=True, env=env, cwd=workdir, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"the counters failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    root: Path = args.gateway_root
    load_before = _load()
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    upstream_port = free_port()
    nginx = start_nginx(workdir / "nginx", upstream_port)
    redis = None
    try:
        redis_url = None
        if args.store == "redis":
            redis, redis_port = start_redis(workdir)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
        profiled = profile(args, workdir, upstream_port, redis_url)
        log("per-stage counters")
        counted = counters(workdir, root, upstream_port, redis_url)
    finally:
        if redis is not None:
            redis.stop()
        nginx.stop()
    return {
        "meta": {
            "started_at": started_at,
            "commit": git_commit(root),
            "store": args.store,
            "kind": args.kind,
            "seconds": args.seconds,
            "connections": CONNECTIONS,
            "rate": RATE,
            "model": JSON_MODEL,
            "cpu": _cpu_model(),
            "load_before": load_before,
            "load_after": _load(),
            "counters_store": counted["store"],
        },
        "profile": profiled,
        "counters": counted["counters"],
    }


def _missing_tools(store: str) -> list[str]:
    missing = [] if shutil.which("nginx") or Path("/usr/sbin/nginx").exists() else ["nginx"]
    missing += [] if shutil.which("wrk") else ["wrk"]
    if store == "redis" and not shutil.which("redis-server"):
        missing.append("redis-server")
    if py_spy() is None:
        missing.append("py-spy (uv sync installs it: a dev dependency)")
    return missing


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.gateway_root = args.gateway_root.resolve()
    missing = _missing_tools(args.store)
    if missing:
        print(f"required: {', '.join(missing)}", file=sys.stderr)
        return 2
    pin_self(HELPER_CORE)  # the harness stays off the core under test
    workdir = Path(tempfile.mkdtemp(prefix="best-breakdown-"))
    ok = False
    try:
        doc = measure(args, workdir)
        ok = True
    finally:
        if ok and not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs and configs kept in {workdir}")
    results_dir: Path = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "breakdown.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    log(f"wrote {path}")
    print()
    print(render_markdown(doc))
    if args.write:
        page: Path = args.docs_page
        page.write_text(splice_breakdown(page.read_text(), doc))
        log(f"wrote the section of {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
