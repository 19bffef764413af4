"""The real Claude Code CLI (npm ``@anthropic-ai/claude-code``, print mode) runs a tool loop
through the gateway against a chat provider: the model asks to read a file, Claude Code
reads it and sends the result back, the model answers.  It exits 0 with that answer, and the
usage it reports is the provider's (Claude Code compacts its context from these counts)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.upstream import Behavior, FakeProvider
from tests.harness import GatewayProcess, write_config
from tests.tools import require_tool

pytestmark = pytest.mark.slow

TOKEN = "sk-claude-code-client"
NOTES = "The launch code is tangerine-42."
FINAL = "The notes say the launch code is tangerine-42."
# Distinct counts per turn: the totals Claude Code reports can only come from the provider.
TOOL_TURN_USAGE = {"prompt_tokens": 1500, "completion_tokens": 20, "total_tokens": 1520}
FINAL_TURN_USAGE = {"prompt_tokens": 1800, "completion_tokens": 11, "total_tokens": 1811}


def _chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-cc", "object": "chat.completion.chunk", "choices": choices, **extra}


def _answer(chunks: list[dict[str, Any]], message: dict[str, Any], finish: str) -> Behavior:
    usage = chunks[-1]["usage"]
    whole = {
        "id": "chatcmpl-cc",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }
    return Behavior.scripted(chunks, answer=whole)


def agent_turns(notes: Path) -> Any:
    """The model's side of the loop, chosen by what the conversation holds."""
    arguments = json.dumps({"file_path": str(notes)})
    call = {"id": "call_read_1", "type": "function", "function": {"name": "Read"}}
    read = _answer(
        [
            _chunk({"role": "assistant", "content": None}),
            _chunk(
                {
                    "tool_calls": [
                        {"index": 0, **call, "function": {"name": "Read", "arguments": ""}}
                    ]
                }
            ),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[:9]}}]}),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[9:]}}]}),
            _chunk({}, "tool_calls"),
            _chunk(None, usage=TOOL_TURN_USAGE),
        ],
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{**call, "function": {"name": "Read", "arguments": arguments}}],
        },
        "tool_calls",
    )
    final = _answer(
        [
            _chunk({"role": "assistant", "content": FINAL[:20]}),
            _chunk({"content": FINAL[20:]}),
            _chunk({}, "stop"),
            _chunk(None, usage=FINAL_TURN_USAGE),
        ],
        {"role": "assistant", "content": FINAL},
        "stop",
    )

    def choose(body: dict[str, Any]) -> Behavior | None:
        messages = body.get("messages") or []
        if any(
            m.get("role") == "tool" and m.get("tool_call_id") == "call_read_1" for m in messages
        ):
            return final
        if any(t.get("function", {}).get("name") == "Read" for t in body.get("tools") or []):
            return read
        return None  # anything else Claude Code asks on the side: the fake's plain echo

    return choose


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with FakeProvider(["m", "small"], api_key="upstream-key", apis=("chat",)) as fake:
        yield fake


def test_claude_code_runs_a_tool_loop_through_the_gateway(
    provider: FakeProvider, tmp_path: Path
) -> None:
    claude = require_tool("claude")
    config = write_config(
        tmp_path / "config",
        [
            {
                "name": "p",
                "api_key_env_var": "P_KEY",
                "base_url": provider.base_url,
                "base_priority": 1,
                "models": ["m", "small"],
            }
        ],
    )
    (config / "aliases.yaml").write_text(
        yaml.safe_dump({"aliases": {"claude-haiku-*": "small", "claude-*": "m"}}, sort_keys=False)
    )
    work = tmp_path / "project"
    work.mkdir()
    notes = work / "notes.txt"
    notes.write_text(NOTES + "\n")
    provider.choose(agent_turns(notes))
    gateway = GatewayProcess(config, env={"P_KEY": "upstream-key", "AUTH_TOKENS": TOKEN}).start()
    try:
        home = tmp_path / "home"
        home.mkdir()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": gateway.url,
            "ANTHROPIC_AUTH_TOKEN": TOKEN,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
        }
        done = subprocess.run(
            [
                claude,
                "-p",
                "What does notes.txt say? Read it.",
                "--output-format",
                "json",
                "--model",
                "claude-sonnet-4-5",
                "--allowedTools",
                "Read",
            ],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        gateway.stop()
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{gateway.logs()[-3000:]}"
    report = json.loads(done.stdout)
    assert report["is_error"] is False, report
    assert report["result"] == FINAL
    # The file's content reached the model as the Read tool's result, under the call's id.
    results = [
        m
        for r in provider.requests
        if isinstance(r.body, dict)
        for m in r.body.get("messages") or []
        if m.get("role") == "tool"
    ]
    assert results and results[-1]["tool_call_id"] == "call_read_1"
    assert "tangerine-42" in json.dumps(results[-1]["content"])
    # Claude Code's totals are the provider's counts of both turns, not estimates.
    usage = report["usage"]
    assert (
        usage["input_tokens"]
        == TOOL_TURN_USAGE["prompt_tokens"] + FINAL_TURN_USAGE["prompt_tokens"]
    )
    assert (
        usage["output_tokens"]
        == TOOL_TURN_USAGE["completion_tokens"] + FINAL_TURN_USAGE["completion_tokens"]
    )
