"""Spend in /metrics: by team, provider and model always; per token only when opted in."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.quotas.tokens import token_id
from tests.inprocess import USER_TOKEN, client, inprocess_settings, running_app

CHAT = {"model": "m", "messages": [{"role": "user", "content": "four words right here"}]}


@pytest.mark.anyio
@pytest.mark.parametrize("per_token", [False, True])
async def test_spend_series_per_token_only_when_opted_in(
    single_provider_config: Path, tmp_path: Path, per_token: bool
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    for name in ("meta-providers.yaml", "model-adjustments.yaml"):
        (config / name).write_text((single_provider_config / name).read_text())
    # 2 USD per million input tokens, 3 per million output: 4 prompt + 5 completion words.
    (config / "prices.yaml").write_text(
        yaml.safe_dump({"models": {"m": {"input": 2, "output": 3}}})
    )
    settings = inprocess_settings(
        config, tmp_path / "data", env={"P_KEY": "k"}, metrics_per_token=per_token
    )
    async with running_app(settings) as app, client(app) as http:
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        text = (await http.get("/metrics")).text
    spend = [line for line in text.splitlines() if line.startswith("best_spend_usd_total{")]
    assert spend == ['best_spend_usd_total{model="m",provider="p",team=""} 2.3e-05']
    per_token_lines = [
        line for line in text.splitlines() if line.startswith("best_token_spend_usd_total{")
    ]
    if per_token:
        assert per_token_lines == [
            f'best_token_spend_usd_total{{model="m",provider="p",token="{token_id(USER_TOKEN)}"}}'
            " 2.3e-05"
        ]
    else:
        assert per_token_lines == [] and "best_token_spend_usd" not in text
