"""The fake provider: nginx answering with a fixed chat.completion or a fixed SSE stream.

It also accepts the traced gateway's OTLP exports (``/v1/traces``).  Two providers share
one nginx: ``json`` under ``/json/v1`` always answers JSON and ``sse``
under ``/sse/v1`` always answers an event stream, because nginx cannot cheaply tell a
streaming request from the body the gateway forwards.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.procs import HELPER_CORE, Proc, http_status, pinned, wait_until

JSON_MODEL = "bench-model"
SSE_MODEL = "bench-stream-model"
CREATED = 1700000000


def chat_completion_body() -> str:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": JSON_MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
        },
        separators=(",", ":"),
    )


def _chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
    return {
        "id": "chatcmpl-bench-stream",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": SSE_MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def sse_body() -> str:
    """Role chunk, four content chunks, a finish chunk, a usage chunk, then [DONE]."""
    events: list[dict[str, object]] = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": piece}) for piece in ("Hello", " from", " the", " stream.")]
    events.append(_chunk({}, "stop"))
    usage_event = _chunk({})
    usage_event["choices"] = []
    usage_event["usage"] = {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
    events.append(usage_event)
    lines = [f"data: {json.dumps(event, separators=(',', ':'))}\n\n" for event in events]
    lines.append("data: [DONE]\n\n")
    return "".join(lines)


def models_body(model: str) -> str:
    return json.dumps(
        {
            "object": "list",
            "data": [{"id": model, "object": "model", "created": CREATED, "owned_by": "bench"}],
        },
        separators=(",", ":"),
    )


def _nginx_string(text: str) -> str:
    """Quote ``text`` for an nginx ``return`` directive (no variables allowed)."""
    if "$" in text:
        raise ValueError("nginx would expand '$' in a return body")
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


def render_nginx_conf(workdir: Path, port: int) -> str:
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    not_found = json.dumps({"error": {"message": "not found", "type": "invalid_request_error"}})

    def location(path: str, content_type: str, body: str, extra: str = "") -> str:
        return (
            f"        location = {path} {{\n"
            f"            default_type {content_type};\n{extra}"
            f"            return 200 {_nginx_string(body)};\n"
            f"        }}\n"
        )

    no_cache = "            add_header cache-control no-cache;\n"
    locations = "".join(
        [
            location("/json/v1/chat/completions", "application/json", chat_completion_body()),
            location("/sse/v1/chat/completions", "text/event-stream", sse_body(), no_cache),
            location("/json/v1/models", "application/json", models_body(JSON_MODEL)),
            location("/sse/v1/models", "application/json", models_body(SSE_MODEL)),
            # An OTLP/HTTP trace receiver for the traced gateway's rows: an empty body is an
            # empty ExportTraceServiceResponse (every span accepted).
            location("/v1/traces", "application/x-protobuf", ""),
        ]
    )
    temp_paths = "".join(
        f"    {kind}_temp_path {tmp / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "worker_processes 1;\n"
        "daemon off;\n"
        f"pid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} warn;\n"
        "events {\n    worker_connections 8192;\n    multi_accept on;\n}\n"
        "http {\n"
        "    access_log off;\n"
        "    server_tokens off;\n"
        "    keepalive_requests 10000000;\n"
        "    keepalive_timeout 600s;\n"
        "    client_body_buffer_size 64k;\n"
        f"{temp_paths}"
        "    server {\n"
        f"        listen 127.0.0.1:{port} backlog=4096;\n"
        f"{locations}"
        "        location / {\n"
        "            default_type application/json;\n"
        f"            return 404 {_nginx_string(not_found)};\n"
        "        }\n"
        "    }\n"
        "}\n"
    )


def start_nginx(workdir: Path, port: int, nginx: str = "/usr/sbin/nginx") -> Proc:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(render_nginx_conf(workdir, port))
    argv = [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    proc = Proc("nginx", pinned(argv, HELPER_CORE), workdir / "nginx.out")
    url = f"http://127.0.0.1:{port}/json/v1/models"
    wait_until(lambda: http_status(url) == 200, 15, "nginx upstream", proc)
    return proc
