"""The long-lived objects of one process, built once at start-up and passed to the handlers."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

from service.ids import IdGenerator
from service.observability.metrics import Metrics, create_metrics, prime
from service.quotas.admission import Quotas
from service.quotas.teams import Teams
from service.quotas.tokens import TokenRegistry
from service.routing.breakers import Breakers
from service.routing.catalog import Catalog
from service.routing.conversations import Conversations
from service.routing.fleet_stats import FleetStats
from service.routing.router import Router
from service.settings import Settings
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
    draining: bool = False
    started: bool = False

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics | None = None) -> Gateway:
        """Wire every component; raises ConfigError for an unusable configuration."""
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
        )

    async def start(self) -> None:
        prime(self.metrics, [p.name for p in self.catalog.active_providers()], REASONS)
        await self.store.start()
        await self.client.start()
        await self.tokens.start()
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
        if not self.tokens.auth_enabled:
            log.warning(
                "auth is DISABLED: AUTH_TOKENS and ADMIN_TOKENS are unset and no managed token "
                "exists; anyone who can reach this port can use every provider"
            )
        no_keys = self.catalog.no_keys_message()
        if no_keys is not None:
            log.warning("%s Until then every chat and embeddings request answers 503.", no_keys)
        log.info(
            "store: %s; %d providers active, %d routable pairs",
            self.store.kind,
            len(self.catalog.active_providers()),
            self.catalog.table.routable,
        )

    async def close(self) -> None:
        await self.quotas.close()
        await self.catalog.close()
        await self.stats.close()
        await self.breakers.close()
        await self.tokens.close()
        await self.client.close()
        await self.store.close()
