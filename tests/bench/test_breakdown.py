"""The CPU breakdown: py-spy samples attributed to stages, its markdown, and its docs section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.cli import main as bench_main
from bench.page import BREAKDOWN_HEADING, render_page, splice_breakdown
from bench.stages import (
    ADMISSION,
    AUTH,
    LOOP,
    METRICS,
    OTHER,
    ROUTING,
    SERVER,
    STAGES,
    read_raw,
    render_markdown,
    stage_rows,
)
from tests.bench.test_page import results
from tests.tools import REPO, require_tool

_BASE = (
    "_run_module_as_main (<frozen runpy>:198);<module> (service/__main__.py:3);"
    "Server.run (uvicorn/server.py:86);Runner.run (asyncio/runners.py:118)"
)
_HTTP = "App.__call__ (service/app.py:117);App._http (service/app.py:172)"
# py-spy -f raw: one line per distinct stack, outermost frame first, then its sample count.
RAW = "\n".join(
    [
        # uvicorn's parser callback, in a stdlib helper: the helper's caller's stage
        f"{_BASE};HttpToolsProtocol.data_received (uvicorn/protocols/http/httptools_impl.py:174)"
        ";HttpToolsProtocol._start_asgi_task (uvicorn/protocols/http/httptools_impl.py:311)"
        ";WeakSet.add (_weakrefset.py:88) 7",
        # a function's rule wins over its module's (quotas/admission.py is admission)
        f"{_HTTP};chat_completions (service/api/chat.py:72);require_token "
        "(service/api/auth.py:26);Quotas.authenticate (service/quotas/admission.py:130) 3",
        # a dataclass's generated __init__ is its caller's
        f"{_HTTP};open_call (service/api/calls.py:106);Router.candidates "
        "(service/routing/router.py:196);__create_fn__.<locals>.__init__ (<string>:5) 4",
        # the loop itself (uvloop's C code under Runner.run), and asyncio under the store
        f"{_BASE} 6",
        f"{_BASE};Batcher._flush (service/store/batching.py:90);timeout (asyncio/timeouts.py:40) 2",
        f"{_BASE};MemoryBackend.quota (service/store/memory.py:300) 5",
        # the app's metric observations, and the rest of the app (other, by module)
        f"{_HTTP};App._observe (service/app.py:326);Histogram.observe "
        "(prometheus_client/metrics.py:600) 2",
        f"{_HTTP};App._count (service/app.py:340) 1",
        f"{_BASE};{_HTTP} 4",
        # full filenames (--full-filenames) are cut at the checkout or site-packages
        "Runner.run (/usr/lib/python3.11/asyncio/runners.py:118);x (/srv/best/service/upstream/"
        "connections.py:200) 3",
        "y (/srv/best/.venv/lib/python3.11/site-packages/prometheus_client/values.py:20) 1",
        # a thread of stdlib frames only, named by its innermost module
        'process 42:"python -m service";thread (0x7f);Thread.run (threading.py:982);_worker '
        "(concurrent/futures/thread.py:83) 2",
        "not a sample line",
        "",
    ]
)


def test_samples_go_to_the_stage_of_their_innermost_frame() -> None:
    profile = read_raw(RAW, roots=["/srv/best"])
    assert profile.total == 40
    assert profile.stages == {
        SERVER: 7,
        AUTH: 3,
        ROUTING: 4,
        LOOP: 8,
        ADMISSION: 5,
        METRICS: 4,
        OTHER: 6,
        "upstream client": 3,
    }
    assert profile.other == {"service.app": 4, "concurrent.futures.thread": 2}


def test_a_stage_costs_its_share_of_the_cpu_per_request() -> None:
    rows = stage_rows(read_raw(RAW, roots=["/srv/best"]), cpu_us_per_request=400.0)
    assert [row["stage"] for row in rows] == list(STAGES)
    by_stage = {row["stage"]: row for row in rows}
    assert by_stage[SERVER]["share"] == pytest.approx(7 / 40)
    assert by_stage[SERVER]["us"] == pytest.approx(70.0)
    assert by_stage["body parse and validation"]["us"] == 0
    assert sum(row["us"] for row in rows) == pytest.approx(400.0)


def breakdown() -> dict[str, Any]:
    profile = read_raw(RAW, roots=["/srv/best"])
    return {
        "meta": {
            "started_at": "2026-01-02T03:04:05+00:00",
            "commit": "abc1234",
            "store": "redis",
            "kind": "json",
            "seconds": 10.0,
            "connections": 32,
            "rate": 500,
            "cpu": "Some CPU",
            "load_before": "1.00 0.50 0.25",
            "load_after": "1.10 0.60 0.30",
            "counters_store": "redis",
        },
        "profile": {
            "seconds": 10.1,
            "requests": 25_000,
            "rps": 2_500.0,
            "cpu_s": 10.0,
            "cpu_us": 400.0,
            "core_share": 0.8,
            "others_on_core": 0.02,
            "unprofiled_cpu_us": 380.0,
            "samples": profile.total,
            "sampling_errors": 0,
            "stages": stage_rows(profile, 400.0),
            "other": [{"module": "service.app", "share": 0.1, "us": 40.0}],
        },
        "counters": [
            {"stage": "auth", "what": "`require_token`", "us": 3.71, "error": None},
            {"stage": "metrics", "what": "observations", "us": None, "error": "KeyError: 'x'"},
        ],
    }


def test_the_markdown_holds_both_tables_and_the_command() -> None:
    text = render_markdown(breakdown())
    assert "commit `abc1234`, redis store, JSON at c=32" in text
    assert "load average before the run 1.00 0.50 0.25" in text
    assert "uv run python -m bench.breakdown --store redis --kind json --seconds 10 --write" in text
    assert "**400 µs per request** (380 µs in the same run's span" in text
    assert "| server (parse, write) | 17.5% | 70 |" in text
    assert "| **total** | 100% | **400** |" in text
    assert "| `service.app` | 10.0% | 40 |" in text
    assert "| auth | `require_token` | 3.7 |" in text
    assert "| metrics | observations | n/a (KeyError: 'x') |" in text
    assert "10.00 s of CPU (80% of its core)" in text
    assert "Other processes used" not in text
    shared = breakdown()
    shared["profile"]["others_on_core"] = 0.3
    assert "Other processes used 30% of the gateway's core" in render_markdown(shared)


def test_the_docs_page_gets_the_section_once_and_keeps_the_rest() -> None:
    page = "# Performance\n\n## The latest run\n\nfigures\n\n## Method\n\nhow\n"
    once = splice_breakdown(page, breakdown())
    assert once.count(BREAKDOWN_HEADING) == 1
    assert once.index("figures") < once.index(BREAKDOWN_HEADING) < once.index("## Method")
    assert "| server (parse, write) | 17.5% | 70 |" in once
    assert once.endswith("## Method\n\nhow\n")
    newer = breakdown()
    newer["meta"]["commit"] = "def5678"
    twice = splice_breakdown(once, newer)
    assert twice.count(BREAKDOWN_HEADING) == 1
    assert "def5678" in twice and "abc1234" not in twice
    assert twice.replace("def5678", "abc1234") == once


def test_the_whole_page_renders_the_breakdown_as_the_splice_does() -> None:
    page = render_page(results(), breakdown=breakdown())
    assert splice_breakdown(page, breakdown()) == page
    assert "Not measured yet: `uv run python -m bench.breakdown --write`." in render_page(results())


def test_report_only_renders_the_breakdown_document(tmp_path: Path) -> None:
    results_dir, docs = tmp_path / "results", tmp_path / "docs"
    results_dir.mkdir()
    (results_dir / "latest.json").write_text(json.dumps(results()))
    (results_dir / "breakdown.json").write_text(json.dumps(breakdown()))
    argv = ["--report-only", "--no-plot", "--results-dir", str(results_dir)]
    assert bench_main([*argv, "--docs-dir", str(docs)]) == 0
    assert "| server (parse, write) | 17.5% | 70 |" in (docs / "performance.md").read_text()


def test_the_breakdown_document_is_kept_by_git() -> None:
    checked = subprocess.run(
        ["git", "check-ignore", "-q", "bench/results/breakdown.json"], cwd=REPO, check=False
    )
    assert checked.returncode == 1  # not ignored


@pytest.mark.slow  # starts nginx and a gateway, runs wrk and py-spy
def test_the_breakdown_runs_end_to_end(tmp_path: Path) -> None:
    for tool in ("nginx", "wrk", "py-spy"):
        require_tool(tool)
    page = tmp_path / "performance.md"
    page.write_text("# Performance\n\n## Method\n")
    argv = [
        sys.executable,
        "-m",
        "bench.breakdown",
        "--seconds",
        "2",
        "--write",
        "--quiet-wait",
        "0",
    ]
    argv += ["--results-dir", str(tmp_path), "--docs-page", str(page)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    doc = json.loads((tmp_path / "breakdown.json").read_text())
    profile = doc["profile"]
    assert profile["requests"] > 0 and profile["samples"] > 0
    assert 50 < profile["cpu_us"] < 50_000
    assert sum(row["share"] for row in profile["stages"]) == pytest.approx(1.0)
    shares = {row["stage"]: row["share"] for row in profile["stages"]}
    # Every request crosses the server, the upstream client and the loop.
    assert shares[SERVER] > 0 and shares["upstream client"] > 0 and shares[LOOP] > 0
    assert all(row["error"] is None and row["us"] > 0 for row in doc["counters"]), doc
    assert "| **total** | 100% |" in done.stdout
    assert BREAKDOWN_HEADING in page.read_text()
