"""Leaderboard sources: the BigCodeBench and plain score formats, and local file sources."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from service.config import LeaderboardSource
from service.routing.leaderboard import LeaderboardError, fetch_leaderboard, parse_leaderboard
from service.upstream.client import UpstreamClient

BIGCODEBENCH = {
    "meta-llama/Llama-3.3-70B-Instruct": {
        "link": "https://huggingface.co/meta-llama/Llama-3.3-70B-Instruct",
        "pass@1": {"instruct": 40.0, "complete": 50.0},
        "size": 70,
    },
    "gpt-4o-2024-05-13": {"pass@1": {"instruct": 51.1, "complete": None}},
    "broken-entry": {"pass@1": {"instruct": None, "complete": None}},
    "no-pass-at-1": {"elo_mle": 1200},
    "not-a-mapping": 12,
}


def test_bigcodebench_results_average_known_pass_at_1_values() -> None:
    scores = parse_leaderboard(BIGCODEBENCH, "bigcodebench")
    assert scores == {
        "llama-3.3-70b-instruct": pytest.approx(0.45),
        "gpt-4o-2024-05-13": pytest.approx(0.511),
    }


def test_bigcodebench_values_are_always_percentages() -> None:
    # A weak model's 1% must not read as a perfect score of 1.0.
    scores = parse_leaderboard(
        {"tiny-0.5b": {"pass@1": {"instruct": 0.8, "complete": 1.0}}}, "bigcodebench"
    )
    assert scores == {"tiny-0.5b": pytest.approx(0.009)}


def test_bigcodebench_results_must_be_a_mapping() -> None:
    with pytest.raises(LeaderboardError):
        parse_leaderboard([1, 2], "bigcodebench")


def test_scores_format_as_mapping_reads_fractions_and_percentages() -> None:
    scores = parse_leaderboard(
        {"Org/Model-A": 0.7, "model-b": 85, "model-c": "high", "model-d": True}, "scores"
    )
    assert scores == {"model-a": pytest.approx(0.7), "model-b": pytest.approx(0.85)}


def test_scores_format_as_list_of_records() -> None:
    data = [
        {"model": "model-a", "score": 0.25},
        {"model": "model-b", "score": 60},
        {"model": None, "score": 0.5},
        {"name": "model-c", "score": 0.5},
        "junk",
    ]
    assert parse_leaderboard(data, "scores") == {
        "model-a": pytest.approx(0.25),
        "model-b": pytest.approx(0.6),
    }


def test_scores_format_refuses_other_shapes() -> None:
    with pytest.raises(LeaderboardError):
        parse_leaderboard("0.5", "scores")


def _fetch(source: LeaderboardSource) -> dict[str, float]:
    # File sources never touch the HTTP client, so it need not be started.
    return asyncio.run(fetch_leaderboard(source, UpstreamClient()))


def test_fetch_reads_a_local_bigcodebench_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(orjson.dumps(BIGCODEBENCH))
    scores = _fetch(LeaderboardSource("bcb", str(path), "bigcodebench"))
    assert scores["llama-3.3-70b-instruct"] == pytest.approx(0.45)


def test_fetch_reads_a_local_scores_file(tmp_path: Path) -> None:
    path = tmp_path / "scores.json"
    path.write_bytes(orjson.dumps({"qwen3-235b-a22b": 0.8}))
    assert _fetch(LeaderboardSource("ours", str(path), "scores")) == {"qwen3-235b-a22b": 0.8}


def test_fetch_of_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "scores.json"
    path.write_text("{not json")
    with pytest.raises(LeaderboardError, match="invalid JSON") as excinfo:
        _fetch(LeaderboardSource("ours", str(path), "scores"))
    assert str(path) in str(excinfo.value)


def test_fetch_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        _fetch(LeaderboardSource("ours", str(tmp_path / "absent.json"), "scores"))
