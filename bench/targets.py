"""What gets measured: the upstream directly, the gateway (two stores) and LiteLLM's proxy."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.identity import write_issuer
from bench.procs import (
    HELPER_CORE,
    SUT_CORE,
    Proc,
    free_port,
    http_post,
    http_status,
    pinned,
    wait_until,
)
from bench.upstream import JSON_MODEL, SSE_MODEL

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VENV = Path(__file__).resolve().parent / ".litellm-venv"
BENCH_TOKEN = "bench-token-3f9c2a"
LITELLM_MASTER_KEY = "sk-bench-master-7d41e0"
LARGE_LIMIT = "1000000000"


@dataclass
class Target:
    """One row of the table: where to send JSON and SSE requests and what to weigh."""

    name: str
    label: str
    urls: dict[str, str]
    token: str | None
    proc: Proc | None = None
    notes: list[str] = field(default_factory=list)
    api: str = "chat"  # or "messages": Anthropic's API, translated to the chat upstream

    def model(self, kind: str) -> str:
        return SSE_MODEL if kind == "sse" else JSON_MODEL


def direct_target(upstream_port: int) -> Target:
    base = f"http://127.0.0.1:{upstream_port}"
    return Target(
        name="direct",
        label="direct upstream (nginx)",
        urls={
            "json": f"{base}/json/v1/chat/completions",
            "sse": f"{base}/sse/v1/chat/completions",
        },
        token=None,
    )


# --- Redis -----------------------------------------------------------------------------------


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def start_redis(workdir: Path) -> tuple[Proc, int]:
    port = free_port()
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    proc = Proc("redis", pinned(argv, HELPER_CORE), workdir / "redis.log")
    wait_until(lambda: _redis_ping(port), 10, "redis", proc)
    return proc, port


# --- the gateway -----------------------------------------------------------------------------


def write_gateway_config(config_dir: Path, upstream_port: int) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{upstream_port}"
    providers = {
        "providers": [
            {
                "name": "json",
                "api_key_env_var": "JSON_API_KEY",
                "base_url": f"{base}/json/v1",
                "base_priority": 1,
                "models": [JSON_MODEL],
            },
            {
                "name": "sse",
                "api_key_env_var": "SSE_API_KEY",
                "base_url": f"{base}/sse/v1",
                "base_priority": 1,
                "models": [SSE_MODEL],
            },
        ]
    }
    # JSON is valid YAML: no YAML library needed here.
    (config_dir / "meta-providers.yaml").write_text(json.dumps(providers, indent=2) + "\n")
    # A pair without leaderboard, size or context data scores 0, and the gateway counts only
    # pairs scoring above 0 as routable for /ready: one adjustment group lifts both models.
    adjustments = {"adjustments": {"bench": {"priority": 1, "regex": ["^bench-"]}}}
    (config_dir / "model-adjustments.yaml").write_text(json.dumps(adjustments) + "\n")


def gateway_command(root: Path = ROOT) -> list[str]:
    """``python -m service`` (= ``best serve``) from the venv of the checkout at ``root``.

    The venv's interpreter directly, so no ``uv`` wrapper process is counted in the RSS; and
    not spelled ``best serve``, so a ``pkill -f "best serve"`` run by someone restarting their
    own gateway on the same machine does not stop the benchmark's.  ``root`` may be another
    checkout (``--gateway-root``), to measure an older commit with the same harness.
    """
    python = root / ".venv" / "bin" / "python"
    if python.exists():
        return [str(python), "-m", "service"]
    return ["uv", "run", "--project", str(root), "python", "-m", "service"]


def sync_project() -> None:
    """Make sure ``.venv`` exists and is current before timing anything."""
    subprocess.run(["uv", "run", "--project", str(ROOT), "true"], check=False, cwd=ROOT)


def start_gateway(
    workdir: Path,
    upstream_port: int,
    redis_url: str | None,
    name: str,
    label: str,
    *,
    limited: bool = True,
    tokens: Sequence[str] = (BENCH_TOKEN,),
    root: Path = ROOT,
    otlp_endpoint: str | None = None,
    identity: bool = False,
    api: str = "chat",
) -> Target:
    """One gateway worker on the core under test.

    ``limited``: static tokens get large non-zero rpm/tpm/concurrency limits, so the quota path
    runs on every request; otherwise they have none (the hot path of a token without limits).
    ``otlp_endpoint``: tracing on, every request sampled, spans exported there.
    ``identity``: requests carry a JWT of a trusted issuer instead (bench/identity.py), whose
    identity has the same limits.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_dir = workdir / "config"
    write_gateway_config(config_dir, upstream_port)
    jwt_token = write_issuer(config_dir, LARGE_LIMIT if limited else "0") if identity else None
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"REDIS_URL", "ADMIN_TOKENS", "VIRTUAL_ENV", "WEB_CONCURRENCY"}
        and not key.startswith("OTEL_")
    }
    env.update(
        {
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "CONFIG_DIR": str(config_dir),
            "DATA_DIR": str(workdir / "data"),
            "JSON_API_KEY": "bench-json-key",
            "SSE_API_KEY": "bench-sse-key",
            "AUTH_TOKENS": ",".join(tokens),
            "DEFAULT_RPM": LARGE_LIMIT if limited else "0",
            "DEFAULT_TPM": LARGE_LIMIT if limited else "0",
            "DEFAULT_MAX_CONCURRENCY": "100000" if limited else "0",
            "LOG_LEVEL": "warning",
            "WEB_CONCURRENCY": "1",
            # The checkout's own code first: a venv shared between worktrees (a symlink) holds
            # an editable install of whichever checkout last synced it.
            "PYTHONPATH": str(root),
        }
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    if otlp_endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
        env["OTEL_TRACES_SAMPLER"] = "always_on"
    # Run from the work dir so a developer's .env in the repository does not leak in.
    proc = Proc(
        name, pinned(gateway_command(root), SUT_CORE), workdir / "gateway.log", env, workdir
    )
    try:
        wait_until(
            lambda: http_status(f"http://127.0.0.1:{port}/ready") == 200,
            60,
            f"{name} GET /ready = 200",
            proc,
        )
    except RuntimeError:
        proc.stop()
        raise
    path = "/v1/messages" if api == "messages" else "/v1/chat/completions"
    url = f"http://127.0.0.1:{port}{path}"
    urls = {"json": url, "sse": url}
    if api == "chat":
        urls.update(hit=url, miss=url)  # the response cache's rows are chat requests
    return Target(name, label, urls, jwt_token or tokens[0], proc, api=api)


# --- LiteLLM ---------------------------------------------------------------------------------


def litellm_binary() -> Path | None:
    binary = LITELLM_VENV / "bin" / "litellm"
    return binary if binary.exists() else None


def setup_litellm() -> None:
    """Install ``litellm[proxy]`` into its own venv under bench/.litellm-venv."""
    if not (LITELLM_VENV / "bin" / "python").exists():
        subprocess.run(["uv", "venv", str(LITELLM_VENV)], check=True, cwd=LITELLM_VENV.parent)
    env = dict(os.environ, VIRTUAL_ENV=str(LITELLM_VENV))
    subprocess.run(["uv", "pip", "install", "litellm[proxy]"], check=True, env=env)


def litellm_version() -> str:
    python = LITELLM_VENV / "bin" / "python"
    proc = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or "unknown"


def write_litellm_config(path: Path, upstream_port: int) -> None:
    base = f"http://127.0.0.1:{upstream_port}"
    config = {
        "model_list": [
            {
                "model_name": JSON_MODEL,
                "litellm_params": {
                    "model": f"openai/{JSON_MODEL}",
                    "api_base": f"{base}/json/v1",
                    "api_key": "bench-json-key",
                },
            },
            {
                "model_name": SSE_MODEL,
                "litellm_params": {
                    "model": f"openai/{SSE_MODEL}",
                    "api_base": f"{base}/sse/v1",
                    "api_key": "bench-sse-key",
                },
            },
        ],
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
        "litellm_settings": {"telemetry": False},
    }
    path.write_text(json.dumps(config, indent=2) + "\n")


def start_litellm(workdir: Path, upstream_port: int) -> Target:
    binary = litellm_binary()
    if binary is None:
        raise RuntimeError("LiteLLM is not installed (run with --setup-litellm)")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "litellm.yaml"
    write_litellm_config(config, upstream_port)
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"VIRTUAL_ENV", "DATABASE_URL", "REDIS_URL"}
    }
    env.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MASTER_KEY": LITELLM_MASTER_KEY,
            "DISABLE_SCHEMA_UPDATE": "True",
        }
    )
    argv = [
        str(binary),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
        "--telemetry",
        "False",
    ]
    proc = Proc("litellm", pinned(argv, SUT_CORE), workdir / "litellm.log", env, workdir)
    try:
        wait_until(
            lambda: http_status(f"http://127.0.0.1:{port}/health/liveliness") == 200,
            120,
            "LiteLLM /health/liveliness",
            proc,
        )
    except RuntimeError:
        proc.stop()
        raise
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    label = f"LiteLLM proxy {litellm_version()}"
    return Target("litellm", label, {"json": url, "sse": url}, LITELLM_MASTER_KEY, proc)


# --- a correctness check before any load -----------------------------------------------------


def check_target(target: Target, kind: str, body: str) -> str | None:
    """Send one request; return a description of what is wrong, or None."""
    headers = {"content-type": "application/json"}
    if target.token:
        headers["authorization"] = f"Bearer {target.token}"
    try:
        status, _, payload = http_post(target.urls[kind], body.encode(), headers)
    except OSError as exc:
        return f"POST {target.urls[kind]} failed: {exc!r}"
    text = payload.decode(errors="replace")
    if status != 200:
        return f"POST {target.urls[kind]} ({kind}) -> HTTP {status}: {text[:300]}"
    if target.api == "messages":
        return _check_message(kind, text)
    if kind != "sse":  # JSON, and the response cache's rows (JSON too)
        try:
            data = json.loads(text)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return f"JSON answer is not a chat.completion: {text[:300]}"
        if "Hello" not in str(content):
            return f"unexpected content: {content!r}"
    else:
        if not text.rstrip().endswith("data: [DONE]"):
            return f"stream does not end with [DONE]: {text[-300:]!r}"
        if '"error"' in text:
            return f"stream carries an error event: {text[:300]!r}"
    return None


def _check_message(kind: str, text: str) -> str | None:
    """A Messages API answer: a message saying hello, or a stream ending in message_stop."""
    if kind == "json":
        try:
            data = json.loads(text)
            content = data["content"][0]["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            return f"JSON answer is not a message: {text[:300]}"
        return None if "Hello" in str(content) else f"unexpected content: {content!r}"
    if not text.rstrip().endswith('data: {"type":"message_stop"}'):
        return f"stream does not end with message_stop: {text[-300:]!r}"
    if "event: error" in text:
        return f"stream carries an error event: {text[:300]!r}"
    return None
