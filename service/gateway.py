"""The long-lived objects of one process, built once at start-up and passed to the handlers."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

from opentelemetry.sdk.trace.export import SpanExporter

from service.caching.cache import ResponseCache
from service.caching.policy import CachePolicy
from service.identities.identities import Identities
from service.ids import IdGenerator
from service.observability.metrics import Metrics, create_metrics, prime
from service.observability.tracing import Tracing
from service.quotas.admission import Quotas
from service.quotas.teams import Teams
from service.quotas.tokens import TokenRegistry
from service.routing.breakers import Breakers
from service.routing.catalog import Catalog
from service.routing.conversations import Conversations
from service.routing.fleet_stats import FleetStats
from service.routing.router import Router
from service.settings import Settings
from service.store.cache import open_answers
from service.store.client import Store
from service.store.open import open_store
from service.upstream.client import UpstreamClient
from service.upstream.errors import REASONS

log = logging.getLogger("best")

GC_THRESHOLD = 20_000


@dataclass
class Gateway:
    settings: Settings
    metrics: Metrics
    store: Store
    client: UpstreamClient
    catalog: Catalog
    stats: FleetStats
    tokens: TokenRegistry
    teams: Teams
    quotas: Quotas
    breakers: Breakers
    router: Router
    ids: IdGenerator
    conversations: Conversations
    identities: Identities
    cache: ResponseCache
    tracing: Tracing | None = None  # None: tracing is off (no OTLP endpoint set)
    draining: bool = False
    started: bool = False

    @classmethod
    def build(
        cls,
        settings: Settings,
        metrics: Metrics | None = None,
        span_exporter: SpanExporter | None = None,
    ) -> Gateway:
        """Wire every component; raises ConfigError for an unusable configuration, and
        TracingError for unusable OTEL_* variables.  ``span_exporter`` replaces the OTLP
        exporter (tests)."""
        metrics = metrics or create_metrics(per_token=settings.metrics_per_token)
        store = open_store(settings, metrics)
        client = UpstreamClient()
        catalog = Catalog(settings, store, client, metrics)
        breakers = Breakers(store, lambda: catalog.config.breaker)
        stats = FleetStats(
            store,
            metrics,
            providers=lambda: [p.name for p in catalog.active_providers()],
            on_health=catalog.apply_health,
            config=lambda: catalog.config,
            breakers=breakers,
            table=lambda: catalog.table,
        )
        tokens = TokenRegistry(settings, store)
        quotas = Quotas(
            tokens,
            store,
            metrics,
            refuse_degraded=settings.on_store_failure == "closed",
            prices=lambda: catalog.config.prices,
        )
        ids = IdGenerator()
        router = Router(settings, catalog, breakers, client, stats, metrics, ids)
        conversations = Conversations(store, catalog, breakers, client)
        identities = Identities(settings, tokens, metrics)
        tracing = Tracing.from_env(settings.env, lambda: catalog.config.prices, span_exporter)
        cache = ResponseCache(
            CachePolicy(tokens, settings.cache_default_ttl_s),
            open_answers(store, settings.cache_max_bytes, metrics.cache_bytes),
            metrics,
            settings.cache_max_entry_bytes,
        )
        return cls(
            settings,
            metrics,
            store,
            client,
            catalog,
            stats,
            tokens,
            Teams(tokens),
            quotas,
            breakers,
            router,
            ids,
            conversations,
            identities,
            cache,
            tracing,
        )

    async def start(self) -> None:
        prime(self.metrics, [p.name for p in self.catalog.active_providers()], REASONS)
        await self.store.start()
        await self.client.start()
        await self.tokens.start()
        await self.identities.start()
        await self.quotas.start()
        await self.breakers.start()
        await self.catalog.start()
        await self.stats.start()
        self.started = True
        # Everything built so far lives as long as the process: move it out of the cyclic
        # collector's view, and collect less often (requests make short-lived garbage only),
        # which trims GC pauses from the latency tail.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 100)
        if not self.tokens.auth_enabled and not self.identities.configured:
            log.warning(
                "auth is DISABLED: AUTH_TOKENS and ADMIN_TOKENS are unset and no managed token "
                "exists; anyone who can reach this port can use every provider"
            )
        no_keys = self.catalog.no_keys_message()
        if no_keys is not None:
            log.warning("%s", no_keys)
        log.info(
            "store: %s; %d providers active, %d routable pairs",
            self.store.kind,
            len(self.catalog.active_providers()),
            self.catalog.table.routable,
        )

    async def close(self) -> None:
        await self.cache.close()
        await self.quotas.close()
        await self.catalog.close()
        await self.stats.close()
        await self.breakers.close()
        await self.identities.close()
        await self.tokens.close()
        await self.client.close()
        await self.store.close()
        if self.tracing is not None:
            await self.tracing.close()
