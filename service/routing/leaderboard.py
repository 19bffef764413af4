"""Leaderboard sources: fetch (URL or file), parse into {model key: score in 0..1}.

Formats:
- ``bigcodebench``: BigCodeBench ``results.json``: ``{model: {"pass@1": {"instruct": x,
  "complete": y}, ...}}``; the score is the mean of the known pass@1 values, in percent.
- ``scores``: ``{model: score}`` or ``[{"model": ..., "score": ...}]``; values above 1 are read
  as percentages.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from service.config import LeaderboardSource
from service.routing.scoring import leaderboard_key
from service.upstream.client import UpstreamClient


class LeaderboardError(ValueError):
    pass


def _unit(value: Any, percent: bool = False) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) / 100.0 if percent or value > 1 else float(value)


def parse_leaderboard(data: Any, fmt: str) -> dict[str, float]:
    scores: dict[str, float] = {}
    if fmt == "bigcodebench":
        if not isinstance(data, dict):
            raise LeaderboardError("bigcodebench results must be a mapping of models")
        for name, entry in data.items():
            if not isinstance(entry, dict):
                continue
            pass1 = entry.get("pass@1")
            values = (
                # Always percentages: a weak model's 1.0 (%) is not a perfect score.
                [v for v in (_unit(x, percent=True) for x in pass1.values()) if v is not None]
                if isinstance(pass1, dict)
                else []
            )
            if values:
                scores[leaderboard_key(str(name))] = sum(values) / len(values)
        return scores
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = [(e.get("model"), e.get("score")) for e in data if isinstance(e, dict)]
    else:
        raise LeaderboardError("scores must be a mapping or a list of {model, score}")
    for name, value in items:
        unit = _unit(value)
        if isinstance(name, str) and unit is not None:
            scores[leaderboard_key(name)] = unit
    return scores


async def fetch_leaderboard(source: LeaderboardSource, client: UpstreamClient) -> dict[str, float]:
    """Fetch and parse one source within its timeout; raises on any failure."""
    if source.location.startswith(("http://", "https://")):
        data = await client.get_json(source.location, {}, source.timeout_s)
    else:
        raw = await asyncio.to_thread(Path(source.location).read_bytes)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise LeaderboardError(f"{source.location}: invalid JSON: {exc}") from None
    return parse_leaderboard(data, source.format)
