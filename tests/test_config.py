"""Loading and validating CONFIG_DIR."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from service.config import ConfigError, Weights, default_provider_name, load_config

REPO = Path(__file__).resolve().parents[1]

PROVIDERS = """\
providers:
  - api_key_env_var: GROQ_API_KEY
    base_url: https://api.groq.com/openai/v1/
    base_priority: 1
  - name: local
    api_key_env_var: LOCAL_KEY
    base_url: http://127.0.0.1:8000/v1
    model_url: http://127.0.0.1:8001/v1
    base_priority: 0.5
    models: [tiny-1b, small-7b]
    timeout_s: 30
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_directory_loads_providers(tmp_path: Path) -> None:
    write(tmp_path, "meta-providers.yaml", PROVIDERS)
    config = load_config(tmp_path)
    groq, local = config.providers
    assert groq.name == "groq"
    assert groq.base_url == "https://api.groq.com/openai/v1"
    assert groq.chat_url == "https://api.groq.com/openai/v1/chat/completions"
    assert groq.models_url == "https://api.groq.com/openai/v1/models"
    assert groq.models is None and groq.timeout_s is None
    assert local.name == "local"
    assert local.base_priority == 0.5
    assert local.models == ("tiny-1b", "small-7b")
    assert local.timeout_s == 30.0
    assert local.models_url == "http://127.0.0.1:8001/v1/models"
    assert config.adjustments == ()
    assert config.weights == Weights()
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("env_var", "name"),
    [("GROQ_API_KEY", "groq"), ("Together_Api_Key", "together"), ("MY_TOKEN", "my_token")],
)
def test_default_provider_name_comes_from_the_key_variable(env_var: str, name: str) -> None:
    assert default_provider_name(env_var) == name


@pytest.mark.parametrize(
    ("provider", "fragment"),
    [
        (
            "    base_url: https://x/v1\n    base_priority: 1\n",
            "api_key_env_var: required key is missing",
        ),
        (
            "    api_key_env_var: X_API_KEY\n    base_priority: 1\n",
            "base_url: required key is missing",
        ),
        (
            "    api_key_env_var: X_API_KEY\n    base_url: https://x/v1\n",
            "base_priority: required key is missing",
        ),
        (
            "    api_key_env_var: X_API_KEY\n    base_url: https://x/v1\n    base_priority: high\n",
            "base_priority: Input should be a valid number",
        ),
        (
            "    api_key_env_var: X_API_KEY\n    base_url: https://x/v1\n    base_priority: true\n",
            "base_priority: Input should be a valid number",
        ),
        (
            "    api_key_env_var: [X]\n    base_url: https://x/v1\n    base_priority: 1\n",
            "api_key_env_var: Input should be a valid string",
        ),
        (
            "    api_key_env_var: X_API_KEY\n    base_url: ftp://x\n    base_priority: 1\n",
            "base_url: must be an http(s) URL",
        ),
        (
            "    api_key_env_var: X_API_KEY\n    base_url: https://x/v1\n    base_priority: 1\n"
            "    models: gpt-4o\n",
            "models: Input should be a valid list",
        ),
        (
            "    api_key_env_var: X_API_KEY\n    base_url: https://x/v1\n    base_priority: 1\n"
            "    timeout_s: -5\n",
            "timeout_s: Input should be greater than 0",
        ),
    ],
)
def test_bad_provider_entries_name_the_file_and_entry(
    tmp_path: Path, provider: str, fragment: str
) -> None:
    path = write(tmp_path, "meta-providers.yaml", "providers:\n  - " + provider.lstrip())
    with pytest.raises(ConfigError) as excinfo:
        load_config(tmp_path)
    message = str(excinfo.value)
    # FILE:LINE: where: what, on one line.
    assert re.match(rf"{re.escape(str(path))}:[2-5]: providers\[0\]", message), message
    assert fragment in message
    assert "\n" not in message


def test_providers_must_be_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, "meta-providers.yaml", "providers:\n  groq: {}\n")
    with pytest.raises(ConfigError, match="providers: Input should be a valid list") as excinfo:
        load_config(tmp_path)
    assert str(path) in str(excinfo.value)


def test_duplicate_provider_names_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "meta-providers.yaml",
        """\
        providers:
          - api_key_env_var: GROQ_API_KEY
            base_url: https://a/v1
            base_priority: 1
          - name: groq
            api_key_env_var: OTHER_KEY
            base_url: https://b/v1
            base_priority: 1
        """,
    )
    with pytest.raises(ConfigError, match="duplicate provider name") as excinfo:
        load_config(tmp_path)
    assert str(path) in str(excinfo.value)
    assert "groq" in str(excinfo.value)


def test_missing_providers_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"meta-providers\.yaml: file not found"):
        load_config(tmp_path)


@pytest.mark.parametrize("name", ["meta-providers.yaml", "model-adjustments.yaml", "scoring.yaml"])
def test_invalid_yaml_is_one_line_naming_file_and_line(tmp_path: Path, name: str) -> None:
    write(tmp_path, "meta-providers.yaml", PROVIDERS)
    broken = write(tmp_path, name, "first: 1\nsecond: [unclosed\nthird: 3\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(tmp_path)
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{broken}:")
    line = int(message[len(str(broken)) + 1 :].split(":", 1)[0])
    assert 2 <= line <= 4  # the parser reports where the unclosed list stops making sense
    assert "invalid YAML" in message


def test_bad_regex_is_a_warning_and_the_other_patterns_still_apply(tmp_path: Path) -> None:
    write(tmp_path, "meta-providers.yaml", PROVIDERS)
    write(
        tmp_path,
        "model-adjustments.yaml",
        """\
        adjustments:
          strong:
            priority: 10
            regex: ["llama-3\\\\.3", "([unclosed"]
          single:
            priority: 1
            regex: gemma
        """,
    )
    config = load_config(tmp_path)
    strong, single = config.adjustments
    assert strong.priority == 10.0
    assert strong.matches("LLAMA-3.3-70b")
    assert not strong.matches("llama-3x3")
    assert len(config.warnings) == 1
    assert "([unclosed" in config.warnings[0]
    assert "model-adjustments.yaml" in config.warnings[0]
    assert single.matches("gemma2-9b-it")


def test_adjustment_group_must_be_a_mapping(tmp_path: Path) -> None:
    write(tmp_path, "meta-providers.yaml", PROVIDERS)
    path = write(tmp_path, "model-adjustments.yaml", "adjustments:\n  strong: 10\n")
    with pytest.raises(ConfigError, match=r"adjustments\.strong") as excinfo:
        load_config(tmp_path)
    assert str(path) in str(excinfo.value)


def test_scoring_file_sets_weights_leaderboards_and_aliases(tmp_path: Path) -> None:
    write(tmp_path, "meta-providers.yaml", PROVIDERS)
    write(
        tmp_path,
        "scoring.yaml",
        """\
        weights:
          leaderboard: 50
          adjustment: 3
        leaderboards:
          - name: bcb
            url: https://example.com/results.json
            format: bigcodebench
            timeout_s: 5
            refresh_s: 60
          - name: ours
            file: boards/ours.json
        aliases:
          Llama-3.3-70B-Versatile: Llama-3.3-70B-Instruct
        discovery:
          refresh_s: 120
          timeout_s: 3
        """,
    )
    config = load_config(tmp_path)
    assert config.weights.leaderboard == 50.0
    assert config.weights.adjustment == 3.0
    assert config.weights.params_per_b == pytest.approx(100 / 405)
    assert config.weights.context_per_token == pytest.approx(100 / 2_000_000)
    bcb, ours = config.leaderboards
    assert (bcb.name, bcb.location, bcb.format, bcb.timeout_s, bcb.refresh_s) == (
        "bcb",
        "https://example.com/results.json",
        "bigcodebench",
        5.0,
        60.0,
    )
    # A file source is relative to CONFIG_DIR, and "scores" is the default format.
    assert ours.location == str(tmp_path / "boards" / "ours.json")
    assert ours.format == "scores"
    assert config.aliases == {"llama-3.3-70b-versatile": "llama-3.3-70b-instruct"}
    assert config.discovery_refresh_s == 120.0
    assert config.discovery_timeout_s == 3.0


@pytest.mark.parametrize(
    ("scoring", "fragment"),
    [
        ("weights:\n  leaderbord: 1\n", "weights.leaderbord: unknown key"),
        ("weights:\n  adjustment: lots\n", "weights.adjustment: Input should be a valid number"),
        (
            "leaderboards:\n  - url: https://x\n    format: csv\n",
            "leaderboards[0].format: Input should be 'bigcodebench' or 'scores'",
        ),
        ("leaderboards:\n  - name: nowhere\n", "leaderboards[0]: give exactly one of url"),
        ("aliases: [a, b]\n", "aliases: Input should be a valid dictionary"),
        ("discovery:\n  refresh_s: 0\n", "discovery.refresh_s: Input should be greater than 0"),
        ("discovery: [600]\n", "discovery: Input should be a valid dictionary"),
        ("leaderboards: 5\n", "leaderboards: Input should be a valid list"),
        ("leaderboards: {name: x}\n", "leaderboards: Input should be a valid list"),
    ],
)
def test_bad_scoring_file_names_the_file(tmp_path: Path, scoring: str, fragment: str) -> None:
    write(tmp_path, "meta-providers.yaml", PROVIDERS)
    path = write(tmp_path, "scoring.yaml", scoring)
    with pytest.raises(ConfigError) as excinfo:
        load_config(tmp_path)
    assert str(path) in str(excinfo.value)
    assert fragment in str(excinfo.value)


def test_fingerprint_changes_when_a_file_changes(tmp_path: Path) -> None:
    write(tmp_path, "meta-providers.yaml", PROVIDERS)
    first = load_config(tmp_path).fingerprint
    assert load_config(tmp_path).fingerprint == first
    write(tmp_path, "model-adjustments.yaml", "adjustments: {}\n")
    assert load_config(tmp_path).fingerprint != first


def test_shipped_config_loads_cleanly() -> None:
    config = load_config(REPO / "config")
    names = [p.name for p in config.providers]
    assert len(names) >= 5
    assert len(set(names)) == len(names)
    assert "groq" in names
    assert config.warnings == ()
    assert all(p.base_url.startswith("https://") for p in config.providers)
    groups = {g.name: g for g in config.adjustments}
    assert groups["not_chat"].priority < 0
    assert groups["not_chat"].matches("text-embedding-3-small")
    assert groups["not_chat"].matches("whisper-large-v3")
    assert not groups["not_chat"].matches("llama-3.3-70b-versatile")


def test_unknown_keys_are_errors_naming_file_line_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "meta-providers.yaml",
        """\
        providers:
          - api_key_env_var: X_API_KEY
            base_url: https://x/v1
            base_priority: 1
            timout_s: 5
        """,
    )
    with pytest.raises(ConfigError) as excinfo:
        load_config(tmp_path)
    assert str(excinfo.value) == f"{path}:5: providers[0].timout_s: unknown key"


def test_every_problem_of_every_file_is_listed_in_file_and_line_order(tmp_path: Path) -> None:
    providers = write(
        tmp_path,
        "meta-providers.yaml",
        """\
        extra: 1
        providers:
          - api_key_env_var: X_API_KEY
            base_url: ftp://x
            base_priority: high
          - name: y
            base_url: https://y/v1
            base_priority: 1
        """,
    )
    scoring = write(tmp_path, "scoring.yaml", "discovery:\n  refresh_s: 0\nweights:\n  x: 1\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(tmp_path)
    assert str(excinfo.value).split("; ") == [
        f"{providers}:1: extra: unknown key",
        f"{providers}:4: providers[0].base_url: must be an http(s) URL (got 'ftp://x')",
        f"{providers}:5: providers[0].base_priority: Input should be a valid number (got 'high')",
        f"{providers}:6: providers[1].api_key_env_var: required key is missing",
        f"{scoring}:2: discovery.refresh_s: Input should be greater than 0 (got 0)",
        f"{scoring}:4: weights.x: unknown key",
    ]


def test_optional_keys_may_be_null_or_empty_and_numbers_are_patterns(tmp_path: Path) -> None:
    write(tmp_path, "meta-providers.yaml", PROVIDERS)
    write(tmp_path, "model-adjustments.yaml", "adjustments:\n  big:\n    regex: [405]\n")
    write(tmp_path, "scoring.yaml", "weights:\nleaderboards:\naliases:\ndiscovery:\n")
    config = load_config(tmp_path)
    (big,) = config.adjustments
    assert big.priority == 0.0 and big.matches("llama-3.1-405b")
    assert config.weights == Weights()
    assert config.leaderboards == () and config.aliases == {}
