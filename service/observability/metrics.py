"""Prometheus metrics: the one place that names every series /metrics exports.

Labels are bounded: routes come from the route table, models and providers from the
configuration (anything else is reported as "other"), reasons and limit kinds from fixed
sets.  No raw tokens and no request ids ever become labels.

With ``WEB_CONCURRENCY > 1`` the workers share a ``PROMETHEUS_MULTIPROC_DIR`` (set by the
CLI before any worker starts) and /metrics aggregates every worker's files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder

# Latency buckets: from tens of microseconds (gateway overhead) to minutes (long streams).
_FAST_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
# OpenTelemetry's advice for gen_ai.client.token.usage: powers of 4.
_TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))
_SLOW_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass(frozen=True)
class Metrics:
    """Every metric of one process; built once at start-up and passed in."""

    registry: CollectorRegistry
    requests: Counter
    request_duration: Histogram
    upstream_duration: Histogram
    time_to_first_token: Histogram
    overhead: Histogram
    tokens: Histogram
    failovers: Counter
    cooldowns_active: Gauge
    breaker_state: Gauge
    models_blocked: Gauge
    hedges: Counter
    quota_rejections: Counter
    auth_failures: Counter
    identity_verifications: Counter
    in_flight: Gauge
    store_errors: Counter
    store_latency: Histogram
    store_degraded: Gauge
    config_reloads: Counter
    models_routable: Gauge
    spend: Counter
    unpriced: Counter
    budget_limit: Gauge
    budget_spent: Gauge
    cache_requests: Counter
    cache_bytes: Gauge
    token_spend: Counter | None = None  # METRICS_PER_TOKEN only: one series per token

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition of this process, or of every worker in multiprocess mode: the
        OpenMetrics format when ``accept`` (the scrape's Accept header) asks for it, the
        only one that carries exemplars (trace ids), else the Prometheus text format.
        Exemplars are kept per process: multiprocess mode has none."""
        encode, content_type = choose_encoder(accept)
        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return encode(registry), content_type
        return encode(self.registry), content_type


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def create_metrics(per_token: bool = False) -> Metrics:
    """Every metric; ``per_token`` adds the per-token spend series (opt-in: one series per
    token id is unbounded in a large fleet)."""
    registry = CollectorRegistry(auto_describe=True)
    gauge_mode = {"multiprocess_mode": "livesum"}
    return Metrics(
        registry=registry,
        requests=Counter(
            "best_requests",
            "Requests answered, by route, HTTP status, served model and provider.",
            ["route", "status", "model", "provider"],
            registry=registry,
        ),
        request_duration=Histogram(
            "best_request_duration_seconds",
            "Time from request received to response finished, by route.",
            ["route"],
            buckets=_SLOW_BUCKETS,
            registry=registry,
        ),
        # The three GenAI series follow the OpenTelemetry GenAI semantic conventions
        # (gen_ai.client.operation.duration, gen_ai.client.token.usage,
        # gen_ai.server.time_to_first_token), with their attributes as labels.
        upstream_duration=Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of each upstream attempt, by operation, provider, model and outcome "
            "(ok or the failure reason).",
            ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "outcome"],
            buckets=_SLOW_BUCKETS,
            registry=registry,
        ),
        time_to_first_token=Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Streaming: time from request received to the first chunk sent to the client.",
            ["gen_ai_provider_name", "gen_ai_request_model"],
            buckets=_SLOW_BUCKETS,
            registry=registry,
        ),
        overhead=Histogram(
            "best_gateway_overhead_seconds",
            "Time the gateway spent on a request that was not spent waiting on an upstream.",
            ["route"],
            buckets=_FAST_BUCKETS,
            registry=registry,
        ),
        tokens=Histogram(
            "gen_ai_client_token_usage",
            "Tokens per request from upstream usage, by operation, provider, model and type "
            "(input|output); rate(..._sum) is tokens per second.",
            [
                "gen_ai_operation_name",
                "gen_ai_provider_name",
                "gen_ai_request_model",
                "gen_ai_token_type",
            ],
            buckets=_TOKEN_BUCKETS,
            registry=registry,
        ),
        failovers=Counter(
            "best_failovers",
            "Upstream attempts that failed and moved on to the next candidate, by reason.",
            ["provider", "reason"],
            registry=registry,
        ),
        cooldowns_active=Gauge(
            "best_cooldowns_active",
            "Cooldowns currently in force in the fleet, by provider (pairs and whole provider).",
            ["provider"],
            registry=registry,
            multiprocess_mode="max",
        ),
        breaker_state=Gauge(
            "best_breaker_state",
            "Circuit breaker of a (provider, model) pair: 0 closed, 1 half-open (one probe at "
            "a time, fleet-wide), 2 open. A pair has a series once its breaker first tripped.",
            ["provider", "model"],
            registry=registry,
            multiprocess_mode="max",
        ),
        models_blocked=Gauge(
            "best_models_blocked",
            "Routable models every candidate of which is out of rotation (breaker open or "
            "provider cooling): requests for them answer 503 or 429.",
            registry=registry,
            multiprocess_mode="max",
        ),
        hedges=Counter(
            "best_hedges",
            "Hedged attempts, by the hedge's provider and event: started (the first candidate "
            "had no first byte in time), won (the hedge answered first).",
            ["provider", "event"],
            registry=registry,
        ),
        quota_rejections=Counter(
            "best_quota_rejections",
            "Requests refused by a token or team limit, by limit kind "
            "(rpm|tpm|concurrency|budget|store).",
            ["limit"],
            registry=registry,
        ),
        auth_failures=Counter(
            "best_auth_failures",
            "Requests refused for a missing, unknown, revoked or expired token, or a JWT "
            "refused (reason: the error's code).",
            ["reason"],
            registry=registry,
        ),
        identity_verifications=Counter(
            "best_identity_verifications",
            "Signature checks of JWTs of a trusted issuer, by issuer name and result (ok, or "
            "the refusal's code); a remembered token is not checked again.",
            ["issuer", "result"],
            registry=registry,
        ),
        in_flight=Gauge(
            "best_requests_in_flight",
            "Requests being served right now, by route.",
            ["route"],
            registry=registry,
            **gauge_mode,  # type: ignore[arg-type]
        ),
        store_errors=Counter(
            "best_store_errors",
            "Store (Redis) operations that failed, by operation.",
            ["op"],
            registry=registry,
        ),
        store_latency=Histogram(
            "best_store_latency_seconds",
            "Latency of store (Redis) operations, by operation.",
            ["op"],
            buckets=_FAST_BUCKETS,
            registry=registry,
        ),
        store_degraded=Gauge(
            "best_store_degraded",
            "1 while the shared store is unreachable and the replica runs on local state.",
            registry=registry,
            multiprocess_mode="max",
        ),
        config_reloads=Counter(
            "best_config_reloads",
            "Configuration reloads, by result (ok|error).",
            ["result"],
            registry=registry,
        ),
        models_routable=Gauge(
            "best_models_routable",
            "Scored (provider, model) pairs that priority-auto may route to.",
            registry=registry,
            multiprocess_mode="max",
        ),
        spend=Counter(
            "best_spend_usd",
            "Cost of served requests in USD (provider-reported cost, else prices.yaml), by "
            "team ('' for tokens without one), provider and model.",
            ["team", "provider", "model"],
            registry=registry,
        ),
        unpriced=Counter(
            "best_unpriced_requests",
            "Served requests with no price in prices.yaml and no provider-reported cost "
            "(counted at 0 USD), by provider and model.",
            ["provider", "model"],
            registry=registry,
        ),
        budget_limit=Gauge(
            "best_team_budget_usd",
            "Spend budget of each team with one, per its period.",
            ["team", "period"],
            registry=registry,
            multiprocess_mode="max",
        ),
        budget_spent=Gauge(
            "best_team_budget_spent_usd",
            "Settled spend of each team with a budget in its current period (fleet-wide).",
            ["team", "period"],
            registry=registry,
            multiprocess_mode="max",
        ),
        cache_requests=Counter(
            "best_cache_requests",
            "Requests that opted into the response cache, by result: hit (answered from the "
            "cache, no upstream call), miss (answered upstream; stored when it may be), "
            "bypass (Cache-Control no-cache or no-store: no lookup).",
            ["result"],
            registry=registry,
        ),
        cache_bytes=Gauge(
            "best_cache_bytes",
            "Bytes of answers the embedded store's response cache holds (bounded by "
            "CACHE_MAX_BYTES; 0 on Redis, where each entry has its TTL).",
            registry=registry,
            multiprocess_mode="max",
        ),
        token_spend=Counter(
            "best_token_spend_usd",
            "Cost of served requests in USD per token id (opt-in: METRICS_PER_TOKEN), by "
            "provider and model.",
            ["token", "provider", "model"],
            registry=registry,
        )
        if per_token
        else None,
    )


AUTH_FAILURE_REASONS = ("missing", "unknown", "revoked", "expired", "admin")
# Why a JWT of a trusted issuer was refused (the error's code), and an unknown team claim.
IDENTITY_REFUSALS = (
    "token_expired",
    "token_not_yet_valid",
    "invalid_signature",
    "invalid_algorithm",
    "invalid_audience",
    "unknown_key",
    "missing_claim",
    "invalid_claim",
    "unknown_team",
)
QUOTA_LIMITS = ("rpm", "tpm", "concurrency", "budget", "store")
STORE_OPS = ("admit", "settle", "cool", "other", "cache")
CACHE_RESULTS = ("hit", "miss", "bypass")


def prime(metrics: Metrics, providers: list[str], failover_reasons: tuple[str, ...]) -> None:
    """Create the known label sets at zero, so every series exists before its first event
    (in multiprocess mode a series with no sample is not exported at all)."""
    for reason in (*AUTH_FAILURE_REASONS, *IDENTITY_REFUSALS):
        metrics.auth_failures.labels(reason)
    for limit in QUOTA_LIMITS:
        metrics.quota_rejections.labels(limit)
    for result in ("ok", "error"):
        metrics.config_reloads.labels(result)
    for op in STORE_OPS:
        metrics.store_errors.labels(op)
    for result in CACHE_RESULTS:
        metrics.cache_requests.labels(result)
    metrics.cache_bytes.set(0)
    metrics.store_degraded.set(0)
    metrics.models_blocked.set(0)
    for provider in providers:
        metrics.cooldowns_active.labels(provider).set(0)
        for event in ("started", "won"):
            metrics.hedges.labels(provider, event)
        for reason in failover_reasons:
            metrics.failovers.labels(provider, reason)
