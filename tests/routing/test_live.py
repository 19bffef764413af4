"""Live factors from the fleet's figures (routing/live.py): pure arithmetic."""

from __future__ import annotations

import bisect

from service.config import Live
from service.routing.live import FIRST_BYTE_BUCKETS_MS, LiveView, PairFigures, compute, quantile

CONFIG = Live(min_attempts=3, error_weight=0.5, latency_weight=1.0, latency_tolerance=0.5)


def figures(ms: float, attempts: int = 10, failures: int = 0) -> PairFigures:
    buckets = [0] * (len(FIRST_BYTE_BUCKETS_MS) + 1)
    buckets[bisect.bisect_left(FIRST_BYTE_BUCKETS_MS, ms)] = attempts - failures
    return PairFigures(attempts, failures, buckets)


def test_quantile_interpolates_inside_its_bucket() -> None:
    counts = [0] * (len(FIRST_BYTE_BUCKETS_MS) + 1)
    counts[FIRST_BYTE_BUCKETS_MS.index(500)] = 10  # every sample in (400, 500]
    assert quantile(counts, 0.5) == 450
    assert quantile([0] * len(counts), 0.5) is None


def test_a_slow_provider_is_penalised_against_the_fastest_of_the_same_model() -> None:
    view = compute(
        {("a", "m"): figures(480), ("b", "m"): figures(20), ("c", "other"): figures(2000)},
        CONFIG,
        LiveView(),
    )
    # a: median ~450 ms against the 100 ms floor: excess 4.5 - 1.5 = 3 -> 1 / (1 + 3)
    assert view.factors[("a", "m")] == 0.25
    assert ("b", "m") not in view.factors  # the fastest: no adjustment
    assert ("c", "other") not in view.factors  # alone for its model: latency is not judged


def test_inside_the_tolerance_band_nobody_is_penalised() -> None:
    view = compute({("a", "m"): figures(140), ("b", "m"): figures(90)}, CONFIG, LiveView())
    assert view.factors == {}


def test_errors_lower_the_factor_and_too_few_attempts_keep_the_last_one() -> None:
    view = compute({("a", "m"): figures(20, attempts=10, failures=4)}, CONFIG, LiveView())
    assert view.factors[("a", "m")] == 0.8  # 1 - 0.5 * 0.4
    kept = compute({("a", "m"): figures(20, attempts=2)}, CONFIG, view)
    assert kept.factors[("a", "m")] == 0.8
    gone = compute({}, CONFIG, kept)  # a window with no attempt at all
    assert gone.factors == {}


def test_p95_needs_a_few_samples() -> None:
    view = compute({("a", "m"): figures(480, attempts=4)}, CONFIG, LiveView())
    assert view.p95_ms("a", "m") is None
    view = compute({("a", "m"): figures(480, attempts=20)}, CONFIG, LiveView())
    p95 = view.p95_ms("a", "m")
    assert p95 is not None and 400 < p95 <= 500
