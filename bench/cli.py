"""Command line of the benchmark."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import plot
from bench.loadgen import CACHE_KINDS
from bench.page import soak_documents, write_page
from bench.procs import HELPER_CORE, cpu_count, pin_self
from bench.report import (
    baseline_table,
    cache_table,
    main_table,
    messages_vs_chat,
    notes,
    ratio_table,
    store_cost_markdown,
    sweep_table,
    tracing_table,
    write_outputs,
    write_store_cost,
)
from bench.runner import Settings, log, run_all, run_store_cost_only
from bench.soak import run_soak, write_soak
from bench.targets import ROOT, setup_litellm, sync_project

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DOCS_DIR = ROOT / "docs"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Side-by-side benchmark: nginx upstream directly, the BEST gateway "
        "(embedded store and Redis), and LiteLLM's proxy when installed.",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument(
        "--concurrency",
        default="1,4,16,32,64",
        help="comma-separated connection counts of the latency sweep (default 1,4,16,32,64)",
    )
    parser.add_argument(
        "--throughput-concurrency", type=int, default=32, help="connections for req/s (32)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="short runs (2 s, sweep 1,8,32) for a smoke test"
    )
    parser.add_argument(
        "--only",
        choices=["json", "sse", "cache"],
        help="measure one kind only (cache: the response cache's hit and miss rows)",
    )
    parser.add_argument(
        "--skip-cache",
        action="store_true",
        help="skip the response cache's rows (hit and miss, gateway only)",
    )
    parser.add_argument("--skip-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument(
        "--setup-litellm",
        action="store_true",
        help="install litellm[proxy] into bench/.litellm-venv first",
    )
    parser.add_argument(
        "--soak",
        type=int,
        nargs="?",
        const=200_000,
        metavar="N",
        help="memory soak instead of the comparison: N requests (default 200000)",
    )
    parser.add_argument(
        "--soak-store", choices=["redis", "embedded"], default="redis", help="store for --soak"
    )
    parser.add_argument(
        "--soak-interval", type=float, default=5.0, help="seconds between RSS samples"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each run, wait up to this many seconds for other processes to leave "
        "the two cores idle (default 60; 0 = never wait)",
    )
    parser.add_argument(
        "--store-cost",
        action="store_true",
        help="only the store-cost points: Redis commands, script calls, round trips and "
        "Redis CPU per request (writes store-cost-<commit>.md)",
    )
    parser.add_argument(
        "--store-topologies",
        default="standalone,cluster",
        help="Redis topologies of the store-cost points: standalone, cluster, both (default) "
        "or none",
    )
    parser.add_argument(
        "--gateway-root",
        type=Path,
        default=ROOT,
        help="measure the gateway of another checkout (its own .venv), e.g. an older commit in "
        "a git worktree",
    )
    parser.add_argument(
        "--baseline-root",
        type=Path,
        help="also measure the gateway of this checkout (its own .venv), e.g. an older commit "
        "in a git worktree, in the same run: its embedded and Redis rows and the ratios",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the matplotlib plot")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-render latest.md, the docs' performance page and its plots from latest.json "
        "(and the soak documents) without measuring",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--docs-dir",
        type=Path,
        default=DOCS_DIR,
        help="where performance.md and img/ are written (default: the project's docs/)",
    )
    parser.add_argument(
        "--no-docs",
        action="store_true",
        help="leave the docs' performance page alone (a quick run, or another --gateway-root, "
        "never writes it)",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    concurrencies = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    duration = args.duration
    warmup, validate = 2.0, 2.0
    mode = "full run"
    store_cost_s = duration
    if args.quick:
        concurrencies = [1, 8, args.throughput_concurrency]
        duration = min(duration, 2.0)
        warmup, validate = 1.0, 1.0
        mode = "quick run"
        store_cost_s = 2.0
    if args.throughput_concurrency not in concurrencies:
        concurrencies = sorted({*concurrencies, args.throughput_concurrency})
    if 1 not in concurrencies:
        concurrencies = [1, *concurrencies]
    return Settings(
        duration_s=duration,
        concurrencies=concurrencies,
        throughput_concurrency=args.throughput_concurrency,
        kinds=_kinds(args.only, args.skip_cache),
        warmup_s=warmup,
        validate_s=validate,
        litellm=not args.skip_litellm,
        mode=mode,
        quiet_wait_s=args.quiet_wait,
        store_topologies=[
            t for t in args.store_topologies.split(",") if t.strip() and t.strip() != "none"
        ],
        store_cost_s=store_cost_s,
        gateway_root=args.gateway_root.resolve(),
        baseline_root=args.baseline_root.resolve() if args.baseline_root else None,
    )


def _kinds(only: str | None, skip_cache: bool) -> list[str]:
    if only == "cache":
        return list(CACHE_KINDS)
    if only:
        return [only]
    return ["json", "sse", *([] if skip_cache else CACHE_KINDS)]


def _print_report(results: dict[str, Any]) -> None:
    print()
    print("\n".join(main_table(results)))
    print()
    print("\n".join(ratio_table(results)))
    print("\n".join(messages_vs_chat(results)))
    print()
    print("\n".join(tracing_table(results)))
    print()
    print("\n".join(baseline_table(results)))
    print()
    print("\n".join(sweep_table(results)))
    if any(kind in results["meta"]["kinds"] for kind in CACHE_KINDS):
        print()
        print("\n".join(cache_table(results)))
    if results.get("store_cost"):
        print()
        print("\n".join(store_cost_markdown(results["store_cost"])))
    extra = notes(results)
    if extra:
        print()
        print("\n".join(extra))
    print()


def _plot(kind: str, data: Path, out: Path) -> None:
    log(f"plotting {out}")
    problem = plot.render(kind, data, out)
    if problem:
        log(problem)


def publish(args: argparse.Namespace) -> None:
    """The docs' performance page from ``latest.json`` (and the soaks), with its plots."""
    results_dir: Path = args.results_dir
    docs_dir: Path = args.docs_dir
    results = json.loads((results_dir / "latest.json").read_text())
    page = write_page(results, results_dir, docs_dir)
    log(f"wrote {page}")
    if args.no_plot:
        return
    (docs_dir / "img").mkdir(parents=True, exist_ok=True)
    _plot("latency", results_dir / "latest.json", docs_dir / "img" / "latency.png")
    for store in soak_documents(results_dir):
        _plot("soak", results_dir / f"soak-{store}.json", docs_dir / "img" / f"soak-{store}.png")


def _writes_docs(args: argparse.Namespace) -> bool:
    """A smoke test, or a run of another checkout, is not the project's latest figures."""
    return not (args.no_docs or args.quick or args.gateway_root.resolve() != ROOT)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    results_dir: Path = args.results_dir

    if args.report_only:
        if not (results_dir / "latest.json").exists():
            print(f"no {results_dir / 'latest.json'}: run the benchmark first", file=sys.stderr)
            return 2
        results = json.loads((results_dir / "latest.json").read_text())
        _print_report(results)
        write_outputs(results, results_dir)
        if args.no_docs:
            if not args.no_plot:
                _plot("latency", results_dir / "latest.json", results_dir / "latency.png")
        else:
            publish(args)
        return 0

    for tool in ("nginx", "wrk", "redis-server"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} is required (Debian package {tool})", file=sys.stderr)
            return 2
    if cpu_count() < 2:
        log("warning: fewer than 2 cores: processes cannot be pinned apart")

    if args.setup_litellm:
        log("installing litellm[proxy] into bench/.litellm-venv")
        setup_litellm()
    sync_project()
    # The orchestrator waits on wrk; keep it off the core under test.
    pin_self(HELPER_CORE)

    workdir = Path(tempfile.mkdtemp(prefix="best-bench-"))
    log(f"work dir {workdir}")
    ok = False
    try:
        if args.store_cost:
            settings = settings_from(args)
            if not settings.store_topologies:
                print("--store-cost needs at least one topology", file=sys.stderr)
                return 2
            cost = run_store_cost_only(settings, workdir)
            md_path = write_store_cost(cost, results_dir)
            print()
            print(md_path.read_text())
            log(f"wrote {md_path} and its .json")
            ok = True
        elif args.soak is not None:
            kinds = [args.only] if args.only in ("json", "sse") else ["json", "sse"]
            soak = run_soak(args.soak, args.soak_store, kinds, 32, args.soak_interval, workdir)
            json_path, md_path = write_soak(soak, results_dir)
            print()
            print(md_path.read_text())
            if not args.no_plot:
                _plot("soak", json_path, json_path.with_suffix(".png"))
            if _writes_docs(args) and (results_dir / "latest.json").exists():
                publish(args)
            ok = soak["crash"] is None
        else:
            results = run_all(settings_from(args), workdir)
            _print_report(results)
            json_path, md_path = write_outputs(results, results_dir)
            log(f"wrote {json_path} and {md_path}")
            if _writes_docs(args):
                publish(args)
            elif not args.no_plot:
                _plot("latency", json_path, results_dir / "latency.png")
            ok = True
    finally:
        if ok and not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs and configs kept in {workdir}")
    return 0
