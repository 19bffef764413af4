"""The docs' performance page is written by the benchmark from its results document."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench.cli import _writes_docs, main, parse_args
from bench.page import render_page


def _run(connections: int, rps: float, p50: float) -> dict[str, Any]:
    return {"connections": connections, "rps": rps, "p50_ms": p50, "p90_ms": p50 * 1.2,
            "p99_ms": p50 * 2, "cpu": {}}  # fmt: skip


def _target(name: str, label: str, single: float, top: float) -> dict[str, Any]:
    sweep = [_run(1, 1000 / single, single), _run(32, 32_000 / top, top)]
    return {
        "name": name,
        "label": label,
        "status": "ok",
        "message": None,
        "rss_bytes": 80 * 2**20,
        "kinds": {"json": {"check": None, "errors": 0, "sweep": sweep}},
    }


def results() -> dict[str, Any]:
    return {
        "meta": {
            "started_at": "2026-01-02T03:04:05+00:00",
            "commit": "abc1234",
            "mode": "full run",
            "duration_s": 5,
            "concurrencies": [1, 32],
            "throughput_concurrency": 32,
            "kinds": ["json"],
            "cpu": "Some CPU",
            "machine": "x86_64, Linux 6.1",
            "pinning": "system under test on core 0",
        },
        "targets": [
            _target("direct", "direct upstream (nginx)", 0.02, 0.4),
            _target("gateway-redis", "BEST gateway, Redis store", 0.8, 10.0),
        ],
        "store_cost": [
            {
                "label": "standalone, token with limits",
                "commit": "abc1234",
                "rps": 3500.0,
                "commands_run": 2.0,
                "commands_sent": 0.07,
                "script_calls": 0.05,
                "round_trips": 0.05,
                "cpu_us": 15.8,
                "cpu_us_net": 15.2,
                "command_us": 13.0,
                "plain_commands": 16.8,
                "fleet_rps_per_core": 65_789.0,
                "errors": 0,
                "sent_by_name": {"evalsha": 0.06},
                "in_scripts_by_name": {"hmget": 0.37},
                "script_share": [1.0],
            }
        ],
        "capacity": [
            {
                "topology": "standalone",
                "tokens": 20_000,
                "alone": False,
                "commit": "abc1234",
                "admissions_per_s": 31_002.0,
                "busy": 0.95,
                "cpu_us": 17.4,
                "fleet_rps_per_core": 57_604.0,
                "per_script_call": 32.0,
                "per_windows_read": 1.0,
                "errors": 0,
            }
        ],
    }


def test_the_page_holds_the_run_its_tables_and_the_plot() -> None:
    page = render_page(results(), template=None)
    assert re.search(r"\$\w", page) is None, "a placeholder of the template was left unfilled"
    assert "Run on 2026-01-02 at 03:04 UTC, commit `abc1234`" in page
    assert "Some CPU, x86_64, Linux 6.1" in page
    assert "| BEST gateway, Redis store | 3,200 |" in page  # req/s at c=32
    assert "0.780 / n/a" in page  # added p50 at c=1 over the direct upstream, JSON / SSE
    assert "| standalone, token with limits | 3,500 |" in page
    assert "| standalone, 20000 tokens | 31,002 |" in page
    assert "![Latency against concurrency" in page and "(img/latency.png)" in page
    # The run line names the commit once; rows do not repeat it.
    assert page.count("abc1234") == 1
    assert "## Method" in page and "uv run python -m bench --report-only" in page


def test_report_only_writes_the_docs_page_from_the_results(tmp_path: Path) -> None:
    results_dir, docs = tmp_path / "results", tmp_path / "docs"
    results_dir.mkdir()
    (results_dir / "latest.json").write_text(json.dumps(results()))
    argv = ["--report-only", "--no-plot", "--results-dir", str(results_dir)]
    assert main([*argv, "--docs-dir", str(docs)]) == 0
    page = (docs / "performance.md").read_text()
    assert page == render_page(results())
    assert (results_dir / "latest.md").exists()


def test_report_only_without_results_says_so(tmp_path: Path, capsys: Any) -> None:
    argv = ["--report-only", "--results-dir", str(tmp_path), "--docs-dir", str(tmp_path)]
    assert main(argv) == 2
    assert "run the benchmark first" in capsys.readouterr().err
    assert not (tmp_path / "performance.md").exists()


def test_only_a_full_run_of_this_checkout_writes_the_docs(tmp_path: Path) -> None:
    assert _writes_docs(parse_args([]))
    assert not _writes_docs(parse_args(["--quick"]))
    assert not _writes_docs(parse_args(["--no-docs"]))
    assert not _writes_docs(parse_args(["--gateway-root", str(tmp_path)]))
