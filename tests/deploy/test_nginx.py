"""The load-balancer config: SSE-friendly, and valid for nginx as the local fleet renders it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.tools import REPO, require_tool, run

CONF = (REPO / "deploy" / "nginx" / "nginx.conf").read_text()


def directive(name: str) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;]*);", CONF, re.MULTILINE)


def test_streams_pass_through_unbuffered() -> None:
    assert directive("proxy_buffering") == ["off"]
    assert directive("proxy_request_buffering") == ["off"]
    assert directive("proxy_http_version") == ["1.1"]
    # An empty Connection header lets nginx keep upstream connections alive.
    assert directive("proxy_set_header Connection") == ['""']
    assert directive("keepalive")


def test_long_streams_are_not_cut() -> None:
    (read_timeout,) = directive("proxy_read_timeout")
    assert int(read_timeout.removesuffix("s")) >= 300  # REQUEST_TIMEOUT_S default


def test_started_requests_are_not_replayed() -> None:
    # A POST a replica began may already be at a provider: only connect errors retry.
    (next_upstream,) = directive("proxy_next_upstream")
    assert "non_idempotent" not in next_upstream and "timeout" not in next_upstream


def test_rendered_config_passes_nginx_check(local_fleet: Any, tmp_path: Path) -> None:
    nginx = require_tool("nginx")
    conf = tmp_path / "nginx.conf"
    conf.write_text(local_fleet.render_nginx_conf([20001, 20002, 20003], 20080, tmp_path))
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "nginx-temp" / kind).mkdir(parents=True)
    error_log = str(tmp_path / "error.log")
    out = run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", error_log])
    assert "test is successful" in out
    rendered = conf.read_text()
    assert rendered.count("server 127.0.0.1:2000") == 3
    assert "listen 127.0.0.1:20080;" in rendered
    assert "proxy_buffering off;" in rendered
