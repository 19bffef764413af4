"""Smoke test of the benchmark harness: the nginx upstream, the wrk scripts and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.loadgen import parse_output, render_script, run_wrk
from bench.procs import free_port, http_post
from bench.report import messages_vs_chat, render_markdown
from bench.upstream import chat_completion_body, sse_body, start_nginx
from tests.tools import require_tool


def test_fixed_bodies_are_valid() -> None:
    assert json.loads(chat_completion_body())["object"] == "chat.completion"
    events = [line[6:] for line in sse_body().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert any("usage" in chunk for chunk in chunks)


def test_parse_output() -> None:
    line = (
        'BENCH_RESULT {"requests":1000,"duration_us":2000000,"bytes":1,"connect":0,"read":1,'
        '"write":0,"status":2,"timeout":0,"p50":1500,"p90":2000,"p99":3000,"mean":1600.0,'
        '"max":4000}'
    )
    result = parse_output(f"Running 2s test\n{line}\n", 32)
    assert result.rps == 500.0
    assert result.p50_ms == 1.5
    assert result.errors == 3


@pytest.mark.slow  # runs wrk
def test_upstream_answers_and_wrk_validates(tmp_path: Path) -> None:
    require_tool("wrk")  # run_wrk finds it on PATH
    port = free_port()
    nginx = start_nginx(tmp_path / "nginx", port, require_tool("nginx"))
    try:
        base = f"http://127.0.0.1:{port}"
        status, headers, body = http_post(f"{base}/sse/v1/chat/completions", b"{}", {})
        assert status == 200
        assert headers["Content-Type"] == "text/event-stream"
        assert body.endswith(b"data: [DONE]\n\n")
        for kind in ("json", "sse"):
            script = tmp_path / f"{kind}.lua"
            script.write_text(render_script(kind, "token", validate=True))
            result = run_wrk(f"{base}/{kind}/v1/chat/completions", script, 2, 1)
            assert result.requests > 0
            assert result.errors == 0
            assert result.good == result.requests
    finally:
        nginx.stop()


def test_markdown_handles_missing_rows() -> None:
    results = {
        "meta": {
            "started_at": "2026-01-01T00:00:00+00:00",
            "commit": "abc",
            "mode": "quick run",
            "duration_s": 2,
            "concurrencies": [1, 32],
            "throughput_concurrency": 32,
            "kinds": ["json"],
            "cpu": "cpu",
            "pinning": "pinned",
        },
        "targets": [
            {
                "name": "direct",
                "label": "direct",
                "status": "ok",
                "message": None,
                "rss_bytes": None,
                "kinds": {"json": {"check": None, "errors": 0, "sweep": []}},
            },
            {
                "name": "litellm",
                "label": "LiteLLM",
                "status": "skipped",
                "message": "not installed",
                "rss_bytes": None,
                "kinds": {},
            },
        ],
    }
    text = render_markdown(results)
    assert "LiteLLM: skipped: not installed" in text


def test_messages_row_is_reported_against_chats() -> None:
    def row(name: str, json_rps: float, sse_rps: float) -> dict[str, object]:
        sweep = {
            kind: {
                "check": None,
                "errors": 0,
                "sweep": [{"connections": 32, "rps": rps, "p50_ms": 1, "p90_ms": 1, "p99_ms": 1}],
            }
            for kind, rps in (("json", json_rps), ("sse", sse_rps))
        }
        return {"name": name, "label": name, "status": "ok", "message": None, "kinds": sweep}

    results = {
        "meta": {"throughput_concurrency": 32},
        "targets": [row("gateway-embedded", 1000, 800), row("gateway-messages", 950, 720)],
    }
    assert messages_vs_chat(results) == [
        "Messages API throughput as a share of chat's (same run): JSON 95.0%, SSE 90.0%"
    ]
