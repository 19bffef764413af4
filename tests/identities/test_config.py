"""auth.yaml: what it may hold, every problem named by file, line and key; the shipped
example; and a reload that keeps the last good file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from service.config import ConfigError
from service.identities.config import AUTH_FILE, load_auth
from service.identities.jwks import JwksFetcher, KeySet
from service.identities.verifier import Verifier
from tests.identities.issuer import (
    ISSUER,
    JwksServer,
    Key,
    claims,
    issuer_entry,
    sign,
    write_auth,
)
from tests.inprocess import client, inprocess_settings, running_app

REPO = Path(__file__).resolve().parents[2]


def _problems(tmp_path: Path, text: str) -> str:
    (tmp_path / AUTH_FILE).write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_auth(tmp_path)
    return str(caught.value)


def test_no_file_and_the_shipped_example_trust_no_issuer(tmp_path: Path) -> None:
    assert load_auth(tmp_path).issuers == ()
    shipped = REPO / "config"
    assert (shipped / AUTH_FILE).is_file()
    assert load_auth(shipped).issuers == ()


def test_the_shipped_example_is_valid_once_uncommented(tmp_path: Path) -> None:
    text = (REPO / "config" / AUTH_FILE).read_text()
    uncommented = "\n".join(line[2:] for line in text.splitlines() if line.startswith("#   "))
    document = yaml.safe_load("jwt:\n" + uncommented)
    # The cluster's CA and token files exist only in a pod: point them at stand-ins.
    (tmp_path / "ca.crt").write_text("")
    cluster = document["jwt"][0]
    cluster.pop("jwks_ca_file")
    cluster["jwks_token_file"] = str(tmp_path / "token")
    write_auth(tmp_path, *document["jwt"])
    issuers = load_auth(tmp_path).issuers
    assert [i.name for i in issuers] == ["cluster", "okta"]
    assert issuers[0].team_claim == ("kubernetes.io", "namespace")
    assert issuers[0].limits.budget_period == "day"


def test_every_problem_is_named_with_its_line(tmp_path: Path) -> None:
    text = """jwt:
  - name: a
    issuer: https://a.test
    audiences: []
    jwks_url: ftp://a.test/keys
    algorithms: [HS256]
    leeway_s: -1
    colour: blue
"""
    message = _problems(tmp_path, text)
    path = str(tmp_path / AUTH_FILE)
    assert f"{path}:4: jwt[0].audiences:" in message
    assert f"{path}:5: jwt[0].jwks_url: must be an http(s) URL" in message
    assert f"{path}:6: jwt[0].algorithms: " in message and "HS256 is never accepted" in message
    assert f"{path}:7: jwt[0].leeway_s:" in message
    assert f"{path}:8: jwt[0].colour: unknown key" in message


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512"])
def test_symmetric_and_none_algorithms_are_refused(tmp_path: Path, alg: str) -> None:
    entry = issuer_entry("https://a.test/keys", algorithms=["RS256", alg])
    message = _problems(tmp_path, yaml.safe_dump({"jwt": [entry]}))
    assert "is never accepted" in message


def test_one_key_source_and_distinct_issuers(tmp_path: Path) -> None:
    both = issuer_entry("https://a.test/keys", jwks_file="keys.json")
    neither = {k: v for k, v in issuer_entry("x").items() if k != "jwks_url"}
    message = _problems(tmp_path, yaml.safe_dump({"jwt": [both, neither]}))
    assert message.count("give exactly one of jwks_url") == 2
    twice = [issuer_entry("https://a.test/keys"), issuer_entry("https://b.test/keys")]
    message = _problems(tmp_path, yaml.safe_dump({"jwt": twice}))
    assert "duplicate issuer name 'corp'" in message
    assert f"issuer {ISSUER!r} is listed twice" in message


def test_a_budget_needs_its_period(tmp_path: Path) -> None:
    entry = issuer_entry("https://a.test/keys", limits={"budget_usd": 5})
    assert "budget_usd and budget_period go together" in _problems(
        tmp_path, yaml.safe_dump({"jwt": [entry]})
    )


def test_a_jwks_file_is_read_at_load(tmp_path: Path) -> None:
    key = Key("file-1", "EC")
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [key.jwk]}))
    entry = {k: v for k, v in issuer_entry("x").items() if k != "jwks_url"}
    write_auth(tmp_path, {**entry, "jwks_file": "keys.json"})
    issuer = load_auth(tmp_path).issuers[0]
    (tmp_path / "keys.json").unlink()  # read once: the file is not needed any more

    async def verify() -> str:
        keys = KeySet(issuer, JwksFetcher())
        verified = await Verifier(issuer, keys).verify(sign(key, claims("gina")))
        return verified.subject

    assert asyncio.run(verify()) == "gina"
    (tmp_path / "bad.json").write_text("{}")
    write_auth(tmp_path, {**entry, "jwks_file": "bad.json"})
    with pytest.raises(ConfigError, match="not a JWK Set"):
        load_auth(tmp_path)


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_bad_reload_keeps_the_last_good_file(
    tmp_path: Path, single_provider_config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = Key("k-1", "EC"), Key("k-2", "EC")
    server = JwksServer([first, second]).start()
    config = tmp_path / "config"
    config.mkdir()
    for name in ("meta-providers.yaml", "model-adjustments.yaml"):
        (config / name).write_text((single_provider_config / name).read_text())
    write_auth(config, issuer_entry(server.url))
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    settings = inprocess_settings(config, tmp_path / "data", env={"P_KEY": "k"})
    try:
        async with running_app(settings) as app:
            identities = app.gateway.identities
            good = sign(first, claims("hana"))
            async with client(app, good) as http:
                assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200
                bad = "jwt:\n  - name: corp\n    issuer: x\n    audiences: [b]\n    jwks_url: ftp://x\n"
                (config / AUTH_FILE).write_text(bad)
                await _until(lambda: "auth.yaml reload failed" in caplog.text, 6)
                assert f"{config / AUTH_FILE}:5: jwt[0].jwks_url: must be" in caplog.text
                assert identities.configured
                assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200
                # A good change is taken: another audience, which this token does not carry.
                write_auth(config, issuer_entry(server.url, audiences=["other"]))
                await _until(lambda: identities.config.issuers[0].audiences == ("other",), 6)
                refused = await http.post("/v1/chat/completions", json=chat)
                assert refused.json()["error"]["code"] == "invalid_audience"
    finally:
        server.stop()


async def _until(condition: Callable[[], bool], within_s: float) -> None:
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110  (a file on disk and a log: no event)
            await asyncio.sleep(0.05)
