"""Live health: each pair's recent error rate and time to first byte, from the fleet's
statistics, turned into the factor that adjusts its score (pure functions, no I/O).

Time to first byte is what a client waits for: the first content event of a stream, the
whole answer of a JSON request.  Latency is judged against the other providers of the same
model (the static score already prefers a small fast model to a big slow one, or not, as the
operator chose); a pair inside the tolerance band keeps its whole score, so near-equal
providers never trade places on noise.  See ``service.config.Live`` for the formula.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from service.config import Live

# Upper bounds (ms) of the first-byte buckets; the last bucket is everything above.
FIRST_BYTE_BUCKETS_MS = (
    10,
    25,
    50,
    75,
    100,
    150,
    200,
    300,
    400,
    500,
    750,
    1000,
    1500,
    2000,
    3000,
    5000,
    7500,
    10000,
    20000,
    30000,
    60000,
)
MIN_P95_SAMPLES = 5


def quantile(buckets: list[int], q: float) -> float | None:
    """Quantile ``q`` (ms) of a bucketed distribution, interpolated inside its bucket."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for index, count in enumerate(buckets):
        upper = float(
            FIRST_BYTE_BUCKETS_MS[index]
            if index < len(FIRST_BYTE_BUCKETS_MS)
            else FIRST_BYTE_BUCKETS_MS[-1] * 2
        )
        if count and seen + count >= rank:
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
        lower = upper
    return lower


@dataclass(frozen=True)
class PairFigures:
    """One pair over the live window, fleet-wide."""

    attempts: int
    failures: int
    first_byte: list[int]  # counts per FIRST_BYTE_BUCKETS_MS bucket

    @property
    def error_rate(self) -> float:
        return self.failures / self.attempts if self.attempts else 0.0


@dataclass
class LiveView:
    """What the last update saw: factors, p50 and p95 per pair."""

    factors: dict[tuple[str, str], float] = field(default_factory=dict)
    p50: dict[tuple[str, str], float] = field(default_factory=dict)
    p95: dict[tuple[str, str], float] = field(default_factory=dict)
    error_rates: dict[tuple[str, str], float] = field(default_factory=dict)

    def p95_ms(self, provider: str, model: str) -> float | None:
        return self.p95.get((provider, model))

    def factor(self, provider: str, model: str) -> float:
        return self.factors.get((provider, model), 1.0)


def figures(new: Mapping[str, int], old: Mapping[str, int]) -> dict[tuple[str, str], PairFigures]:
    """Per pair: the difference between two snapshots of the fleet's counters."""
    out: dict[tuple[str, str], PairFigures] = {}
    buckets: dict[str, list[int]] = {}
    for key, value in new.items():
        kind, _, rest = key.partition("|")
        if kind == "fb":
            pair, _, bucket = rest.rpartition("|")
            delta = value - old.get(key, 0)
            if delta > 0:
                counts = buckets.setdefault(pair, [0] * (len(FIRST_BYTE_BUCKETS_MS) + 1))
                counts[min(int(bucket), len(FIRST_BYTE_BUCKETS_MS))] += delta
    for key, value in new.items():
        if not key.startswith("req|"):
            continue
        pair = key[4:]
        attempts = value - old.get(key, 0)
        if attempts <= 0:
            continue
        failures = new.get("fail|" + pair, 0) - old.get("fail|" + pair, 0)
        provider, _, model = pair.partition("|")
        out[(provider, model)] = PairFigures(
            attempts, failures, buckets.get(pair, [0] * (len(FIRST_BYTE_BUCKETS_MS) + 1))
        )
    return out


def compute(
    pairs: Mapping[tuple[str, str], PairFigures], config: Live, previous: LiveView
) -> LiveView:
    """The live factors for the window's figures; a pair with too few attempts keeps its
    previous factor, a pair with none in the window has none (factor 1)."""
    view = LiveView()
    enough: dict[tuple[str, str], PairFigures] = {}
    for pair, fig in pairs.items():
        if fig.attempts >= config.min_attempts:
            enough[pair] = fig
        elif pair in previous.factors:
            view.factors[pair] = previous.factors[pair]
        if sum(fig.first_byte) >= MIN_P95_SAMPLES:
            p95 = quantile(fig.first_byte, 0.95)
            if p95 is not None:
                view.p95[pair] = p95
    fastest: dict[str, float] = {}  # model -> lowest median first byte among its providers
    for (provider, model), fig in enough.items():
        p50 = quantile(fig.first_byte, 0.5)
        if p50 is not None and sum(fig.first_byte) >= config.min_attempts:
            view.p50[(provider, model)] = p50
            fastest[model] = min(p50, fastest.get(model, p50))
    for pair, fig in enough.items():
        view.error_rates[pair] = fig.error_rate
        factor = 1.0 - config.error_weight * fig.error_rate
        p50 = view.p50.get(pair)
        if p50 is not None and config.latency_weight > 0:
            reference = max(fastest[pair[1]], config.latency_floor_ms)
            excess = max(0.0, p50 / reference - 1.0 - config.latency_tolerance)
            factor /= 1.0 + config.latency_weight * excess
        factor = round(max(config.min_factor, min(1.0, factor)), 2)
        if factor < 1.0:
            view.factors[pair] = factor
    return view
