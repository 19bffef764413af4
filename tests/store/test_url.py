"""REDIS_URL parsing: every documented form, and one clear line for what cannot be used."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.store.connection import RedisUrlError, parse_redis_url
from tests.tools import REPO


def test_standalone_forms() -> None:
    plain = parse_redis_url("redis://cache.local")
    assert (plain.kind, plain.nodes, plain.db, plain.tls) == (
        "standalone",
        (("cache.local", 6379),),
        0,
        False,
    )
    acl = parse_redis_url("rediss://gw%40x:p%3Ass@10.0.0.1:6380/3?ssl_ca_certs=/ca.pem")
    assert (acl.username, acl.password, acl.db, acl.tls) == ("gw@x", "p:ss", 3, True)
    assert acl.tls_options == {"ssl_ca_certs": "/ca.pem"}
    bare_password = parse_redis_url("redis://:secret@h:1")
    assert (bare_password.username, bare_password.password) == (None, "secret")
    v6 = parse_redis_url("redis://[::1]:7000/1")
    assert (v6.nodes, v6.db) == ((("::1", 7000),), 1)
    unix = parse_redis_url("unix:///run/redis.sock?db=2&password=pw")
    assert (unix.unix_path, unix.db, unix.password, unix.nodes) == ("/run/redis.sock", 2, "pw", ())


def test_sentinel_forms() -> None:
    target = parse_redis_url(
        "redis+sentinel://app:pw@s1:26379,s2,[::1]:26380/cache/4",
        sentinel_password="sp",
        timeout_ms=250,
    )
    assert target.kind == "sentinel"
    assert target.nodes == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (target.master_name, target.db, target.username, target.password) == (
        "cache",
        4,
        "app",
        "pw",
    )
    assert (target.sentinel_password, target.timeout_s, target.tls) == ("sp", 0.25, False)
    assert parse_redis_url("rediss+sentinel://s1/m").tls


def test_cluster_form() -> None:
    target = parse_redis_url("redis+cluster://u:p@n1:7000,n2:7001")
    assert (target.kind, target.nodes, target.username) == (
        "cluster",
        (("n1", 7000), ("n2", 7001)),
        "u",
    )
    assert parse_redis_url("rediss+cluster://n1:7000").tls


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://user:hunter2@example.com", "unsupported scheme 'http'"),
        ("localhost:6379", "unsupported scheme"),
        ("", "unsupported scheme"),
        ("redis+sentinel://user:hunter2@s1:26379", "names no master"),
        ("redis+sentinel://s1:26379/m/0/x", "unexpected path"),
        ("redis+cluster://n1:7000/2", "only database 0"),
        ("redis://h1:1,h2:2", "several hosts"),
        ("redis://h:99999", "invalid port"),
        ("redis://h:abc", "invalid port"),
        ("redis://h/x", "invalid database"),
        ("redis://h/0/1", "unexpected path"),
        ("redis://", "no host"),
        ("redis://h1,,h2", "empty host"),
        ("unix://", "no socket path"),
        ("redis://h?sockettimeout=1", "unknown option(s) sockettimeout"),
        ("redis://h?ssl_ca_certs=/ca", "no TLS scheme"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("redis+cluster://n1?db=1", "unknown option(s) db"),
    ],
)
def test_unusable_url_is_one_clear_line(url: str, reason: str) -> None:
    with pytest.raises(RedisUrlError) as caught:
        parse_redis_url(url)
    message = str(caught.value)
    assert reason in message
    assert "\n" not in message
    assert "hunter2" not in message


def test_best_serve_refuses_an_unusable_redis_url_in_one_line() -> None:
    env = {**os.environ, "REDIS_URL": "http://user:hunter2@example.com:6379"}
    done = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "REDIS_URL has an unsupported scheme 'http'" in lines[0]
    assert "hunter2" not in done.stderr
