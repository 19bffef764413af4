"""What each feature costs, measured in alternating pairs: ``uv run python -m bench.paired``.

One run of the main benchmark measures each row once, one after the other; on a shared
virtual machine two rows measured a minute apart can differ by 20% for reasons of their own.
Here each feature's gateway runs beside the plain one (embedded store, a token with limits)
for the whole measurement, and wrk at c=32 alternates between them, ``--rounds`` times
``--seconds`` each, swapping which goes first every round.  Each round gives both sides' CPU
per request (the gateway's process tree, from ``/proc``) and req/s; the figure is the median
over rounds of the plain side's CPU per request over the feature side's (so 95% means the
feature costs 5% more per request), beside the median req/s of each side.

Pairs: the Messages API (translated to the same chat upstream) against chat; tracing on
(every request sampled, exported to nginx's OTLP endpoint) against off; a JWT identity
against a static token; a response cache hit against a miss (one gateway, two scripts); with
``--baseline-root PATH``, another checkout's gateway against this one's (the commit before a
change, or 9292063).

It writes ``bench/results/paired.json``; ``python -m bench --report-only`` (or the next full
run) puts it on the performance page.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.loadgen import render_script, run_wrk
from bench.page import paired_table
from bench.procs import cpu_seconds, free_port
from bench.runner import _cpu_model, _wait_quiet, git_commit, log
from bench.targets import ROOT, Target, start_gateway
from bench.upstream import start_nginx

RESULTS = Path(__file__).resolve().parent / "results" / "paired.json"
CONNECTIONS = 32
# A pair's two sides, made when the pair is measured: (gateway, kind), plain side first.
Sides = Callable[[], tuple[tuple[Target, str], tuple[Target, str]]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__)
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds per pair")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per wrk run")
    parser.add_argument("--quiet-wait", type=float, default=10.0, help="see python -m bench")
    parser.add_argument(
        "--only", default="", help="measure only the pairs whose name contains this text"
    )
    parser.add_argument(
        "--baseline-root",
        type=Path,
        help="another checkout (with its own .venv): adds its gateway against this one's, "
        "JSON and SSE (the share is its CPU per request over this checkout's)",
    )
    return parser.parse_args(argv)


def _run(target: Target, kind: str, script: Path, seconds: float) -> tuple[float, float]:
    """(CPU µs per request, req/s) of one wrk run; raises on any error."""
    assert target.proc is not None
    before = cpu_seconds(target.proc.pid)
    result = run_wrk(target.urls[kind], script, CONNECTIONS, seconds)
    spent = cpu_seconds(target.proc.pid) - before
    if result.errors or not result.requests:
        raise RuntimeError(f"{target.name} {kind}: {result.errors} errors")
    return spent / result.requests * 1e6, result.rps


def _pair(
    name: str,
    sides: tuple[tuple[Target, str], tuple[Target, str]],
    workdir: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Alternating rounds of the plain side (first) and the feature side."""
    scripts = []
    for i, (target, kind) in enumerate(sides):
        script = workdir / f"{name}-{i}.lua"
        script.write_text(render_script(kind, target.token, target.model(kind), api=target.api))
        run_wrk(target.urls[kind], script, CONNECTIONS, 1)  # warm-up (a cache hit's entry too)
        scripts.append(script)
    cpu: list[list[float]] = [[], []]
    rps: list[list[float]] = [[], []]
    for round_ in range(args.rounds):
        _wait_quiet(None, args.quiet_wait)
        order = (0, 1) if round_ % 2 == 0 else (1, 0)
        for i in order:
            target, kind = sides[i]
            us, rate = _run(target, kind, scripts[i], args.seconds)
            cpu[i].append(us)
            rps[i].append(rate)
    ratios = [plain / feature for plain, feature in zip(cpu[0], cpu[1], strict=True)]
    row = {
        "pair": name,
        "plain_cpu_us": statistics.median(cpu[0]),
        "feature_cpu_us": statistics.median(cpu[1]),
        "plain_rps": statistics.median(rps[0]),
        "feature_rps": statistics.median(rps[1]),
        "share": statistics.median(ratios),
        "rounds": args.rounds,
    }
    log(
        f"{name}: {row['share']:.1%} ({row['plain_cpu_us']:.0f} against "
        f"{row['feature_cpu_us']:.0f} µs per request)"
    )
    return row


def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="best-paired-"))
    (workdir / "nginx").mkdir()
    port = free_port()
    nginx = start_nginx(workdir / "nginx", port)
    started: list[Target] = []

    def gateway(name: str, **options: Any) -> Target:
        target = start_gateway(workdir / name, port, None, name, name, **options)
        started.append(target)
        return target

    def baseline_pairs(chat: Target) -> list[tuple[str, Sides]]:
        root: Path | None = args.baseline_root
        if root is None:
            return []
        before = gateway("baseline", root=root.resolve())
        name = f"this checkout against {git_commit(root)}"
        return [
            (f"{name}, JSON", lambda: ((before, "json"), (chat, "json"))),
            (f"{name}, SSE", lambda: ((before, "sse"), (chat, "sse"))),
        ]

    try:
        chat = gateway("chat")
        messages = gateway("messages", api="messages")
        traced = gateway("traced", otlp_endpoint=f"http://127.0.0.1:{port}")
        jwt = gateway("jwt", identity=True)
        pairs: list[tuple[str, Sides]] = [
            ("Messages API against chat, JSON", lambda: ((chat, "json"), (messages, "json"))),
            ("Messages API against chat, SSE", lambda: ((chat, "sse"), (messages, "sse"))),
            ("tracing on against off, JSON", lambda: ((chat, "json"), (traced, "json"))),
            ("tracing on against off, SSE", lambda: ((chat, "sse"), (traced, "sse"))),
            ("JWT identity against static token, JSON", lambda: ((chat, "json"), (jwt, "json"))),
            ("JWT identity against static token, SSE", lambda: ((chat, "sse"), (jwt, "sse"))),
            ("response cache hit against miss, JSON", lambda: ((chat, "miss"), (chat, "hit"))),
            *baseline_pairs(chat),
        ]
        rows = [
            _pair(name, sides(), workdir, args)
            for name, sides in pairs
            if args.only.lower() in name.lower()
        ]
    finally:
        for target in started:
            if target.proc is not None:
                target.proc.stop()
        nginx.stop()
    return {
        "meta": {
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": git_commit(ROOT),
            "cpu": _cpu_model(),
            "seconds": args.seconds,
            "connections": CONNECTIONS,
        },
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    document = measure(args)
    if not args.only:  # the performance page shows every pair
        RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(paired_table(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
