"""Memory soak: N requests through the gateway, its RSS sampled every few seconds."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from bench.loadgen import render_script, request_body
from bench.loadgen import run_wrk as wrk
from bench.procs import Proc, free_port, tree_rss_bytes
from bench.runner import git_commit, log
from bench.targets import check_target, start_gateway, start_redis
from bench.upstream import start_nginx


def run_soak(
    total_requests: int,
    store: str,
    kinds: list[str],
    concurrency: int,
    interval_s: float,
    workdir: Path,
) -> dict[str, Any]:
    """Drive the gateway in wrk runs of ``interval_s`` until ``total_requests`` are served.

    Warm-up is the first tenth of the requests (at least one interval); growth is measured
    from the first sample after it to the last sample, and separately over the second half
    of the samples (after the 60 s quota windows of the embedded store have filled).
    """
    warmup_requests = max(1, total_requests // 10)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    commit = git_commit()
    upstream_port = free_port()
    nginx = start_nginx(workdir / "nginx", upstream_port)
    redis: Proc | None = None
    samples: list[dict[str, Any]] = []
    crash: str | None = None
    first_bad: str | None = None
    errors = 0
    served = 0
    idle_rss = 0
    try:
        redis_url = None
        if store == "redis":
            redis, redis_port = start_redis(workdir)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
        target = start_gateway(
            workdir / "gateway", upstream_port, redis_url, "gateway", f"gateway ({store})"
        )
        assert target.proc is not None
        try:
            for kind in kinds:
                problem = check_target(target, kind, request_body(kind))
                if problem:
                    raise RuntimeError(f"check failed before the soak: {problem}")
            kind = kinds[0] if len(kinds) == 1 else "mixed"
            script = workdir / f"soak-{kind}.lua"
            script.write_text(render_script(kind, target.token))
            idle_rss = tree_rss_bytes(target.proc.pid)
            log(
                f"soak: {total_requests:,} requests, {kind}, c={concurrency}, store {store}; "
                f"idle RSS {idle_rss / 2**20:.1f} MiB"
            )
            start = time.monotonic()
            while served < total_requests:
                result = wrk(target.urls["json"], script, concurrency, interval_s)
                served += result.requests
                errors += result.errors
                rss = tree_rss_bytes(target.proc.pid)
                sample = {
                    "elapsed_s": round(time.monotonic() - start, 1),
                    "requests": served,
                    "rps": result.rps,
                    "rss_bytes": rss,
                    "errors": errors,
                    "after_warmup": served >= warmup_requests,
                }
                samples.append(sample)
                log(
                    f"soak {sample['elapsed_s']:>7.1f}s {served:>10,} requests "
                    f"{result.rps:>9,.0f} req/s  RSS {rss / 2**20:6.1f} MiB  errors {errors}"
                )
                if not target.proc.alive():
                    crash = (
                        f"gateway {target.proc.exit_description()} after {served} "
                        f"requests; log {target.proc.log_path}:\n{target.proc.log_tail()}"
                    )
                    log(crash)
                    break
            if errors:
                checked = workdir / "soak-validate.lua"
                checked.write_text(render_script(kinds[0], target.token, validate=True))
                first_bad = wrk(target.urls["json"], checked, concurrency, 2).first_bad
        finally:
            target.proc.stop()
    finally:
        if redis is not None:
            redis.stop()
        nginx.stop()

    after = [s for s in samples if s["after_warmup"]]
    baseline = after[0]["rss_bytes"] if after else None
    final = samples[-1]["rss_bytes"] if samples else None
    growth = (final - baseline) / baseline * 100 if baseline and final else 0.0
    # Flatness once every rolling window (quotas keep 60 s) is full: the second half alone.
    half = samples[len(samples) // 2]["rss_bytes"] if samples else None
    late_growth = (final - half) / half * 100 if half and final else 0.0
    return {
        "started_at": started_at,
        "commit": commit,
        "requests": served,
        "requested": total_requests,
        "kind": kinds[0] if len(kinds) == 1 else "mixed JSON and SSE",
        "store": store,
        "concurrency": concurrency,
        "interval_s": interval_s,
        "warmup_requests": warmup_requests,
        "idle_rss_bytes": idle_rss,
        "baseline_rss_bytes": baseline,
        "final_rss_bytes": final,
        "max_rss_bytes": max((s["rss_bytes"] for s in samples), default=None),
        "growth_pct": round(growth, 2),
        "second_half_growth_pct": round(late_growth, 2),
        "errors": errors,
        "first_bad": first_bad,
        "crash": crash,
        "samples": samples,
    }


def render_soak_markdown(soak: dict[str, Any]) -> str:
    def mib(value: int | None) -> str:
        return "n/a" if value is None else f"{value / 2**20:.1f} MiB"

    samples = soak["samples"]
    elapsed = samples[-1]["elapsed_s"] if samples else 0
    rate = soak["requests"] / elapsed if elapsed else 0.0
    lines = [
        f"Soak {soak['started_at']} on commit `{soak['commit']}`: {soak['requests']:,} requests "
        f"({soak['kind']}, c={soak['concurrency']}, {soak['store']} store), RSS sampled every "
        f"{soak['interval_s']:g} s.",
        "",
        "| idle RSS | RSS after warm-up | final RSS | max RSS | growth after warm-up "
        "| growth over the second half | req/s | errors |",
        "|---|---|---|---|---|---|---|---|",
        f"| {mib(soak['idle_rss_bytes'])} | {mib(soak['baseline_rss_bytes'])} | "
        f"{mib(soak['final_rss_bytes'])} | {mib(soak['max_rss_bytes'])} | "
        f"{soak['growth_pct']:+.1f}% | {soak.get('second_half_growth_pct', 0.0):+.1f}% | "
        f"{rate:,.0f} | {soak['errors']} |",
    ]
    if soak["crash"]:
        lines += ["", f"Crash: {soak['crash'].splitlines()[0]}"]
    if soak["first_bad"]:
        lines += ["", f"First wrong answer: `{soak['first_bad'][:200]}`"]
    return "\n".join(lines) + "\n"


def write_soak(soak: dict[str, Any], results_dir: Path) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"soak-{soak['store']}.json"
    md_path = results_dir / f"soak-{soak['store']}.md"
    json_path.write_text(json.dumps(soak, indent=2) + "\n")
    md_path.write_text(render_soak_markdown(soak))
    return json_path, md_path
