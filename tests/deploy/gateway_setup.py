"""What the tests that run the real gateway share: a config folder for one fake provider."""

from __future__ import annotations

from pathlib import Path

import yaml

TOKEN = "deploy-test-token"
MODEL = "fake-model"
# Environment every gateway process of these tests gets (plus PORT, CONFIG_DIR...).
GATEWAY_ENV = {"FAKE_API_KEY": "x", "AUTH_TOKENS": TOKEN, "LOG_LEVEL": "warning"}


def write_config(folder: Path, base_url: str) -> Path:
    """CONFIG_DIR with one provider, ``fake``, serving ``fake-model`` at ``base_url``, routable."""
    folder.mkdir(parents=True, exist_ok=True)
    provider = {
        "name": "fake",
        "api_key_env_var": "FAKE_API_KEY",
        "base_url": base_url,
        "base_priority": 1,
        "models": [MODEL],
    }
    (folder / "meta-providers.yaml").write_text(yaml.safe_dump({"providers": [provider]}))
    # Without leaderboard, size or context data the model scores 0, and a model scoring 0 is
    # not routable by priority-auto: /ready would stay 503. One adjustment makes it positive.
    adjustments = {"adjustments": {"fake": {"priority": 1, "regex": ["^fake-"]}}}
    (folder / "model-adjustments.yaml").write_text(yaml.safe_dump(adjustments))
    return folder
