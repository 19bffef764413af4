"""The catalog: configuration, discovered models and leaderboard scores, kept current by
background refreshers, and the routing table built from them.

Discovery results and leaderboard scores are cached in the store; a lock in the store lets
one replica of the fleet refresh a provider while the others read its result.  Nothing here
blocks start-up: the table starts from fixed model lists and caches and fills in as
refreshers finish.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from service.config import (
    ConfigError,
    GatewayConfig,
    ProviderConfig,
    config_fingerprint,
    load_config,
)
from service.observability.metrics import Metrics
from service.routing.leaderboard import fetch_leaderboard
from service.routing.scoring import ModelInfo, score_pair
from service.routing.table import Candidate, ModelTable
from service.settings import Settings
from service.store.backend import StoreError
from service.store.client import Store
from service.upstream.client import UpstreamClient
from service.upstream.errors import CONNECT, UpstreamFailure

log = logging.getLogger("best.catalog")

CONFIG_POLL_S = 2.0
RETRY_S = 15.0
_CONTEXT_FIELDS = ("context_window", "context_length", "max_context_length", "max_model_len")


# Bounds of what discovery may report: an id a client can send back, and a context window
# no real model has (an absurd one would take every priority-auto request).
MAX_MODEL_ID_CHARS = 256
MAX_CONTEXT_TOKENS = 100_000_000


def parse_model_list(data: Any, dropped: list[str] | None = None) -> list[ModelInfo]:
    """Model ids and context sizes from an OpenAI ``/models`` answer.  Entries without a
    usable id are skipped and a context size out of bounds counts as unknown; each is
    described in ``dropped`` when given."""
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError("model list is not an OpenAI list")
    notes = dropped if dropped is not None else []
    models: list[ModelInfo] = []
    seen: set[str] = set()
    for item in items:
        model_id = (
            item if isinstance(item, str) else item.get("id") if isinstance(item, dict) else None
        )
        if not _usable_id(model_id):
            notes.append(f"entry with id {str(model_id)[:80]!r}: not a usable model id")
            continue
        assert isinstance(model_id, str)
        if model_id in seen:
            continue
        seen.add(model_id)
        context = 0
        if isinstance(item, dict):
            for name in _CONTEXT_FIELDS:
                value = item.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    if value > MAX_CONTEXT_TOKENS:
                        notes.append(f"{model_id}: {name} {value} is out of bounds; ignored")
                    else:
                        context = value
                    break
        models.append(ModelInfo(model_id, context))
    return models


def _usable_id(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_MODEL_ID_CHARS
        and value.isprintable()
        and value == value.strip()
        and "," not in value  # a comma separates the ids of a fallback list
    )


class Catalog:
    def __init__(
        self, settings: Settings, store: Store, client: UpstreamClient, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._store = store
        self._client = client
        self._metrics = metrics
        self._owner = f"{os.getpid()}-{id(self)}"
        self.config = load_config(settings.config_dir)
        self._discovered: dict[str, list[ModelInfo]] = {}
        self._scores: dict[str, float] = {}
        self._per_source: dict[str, dict[str, float]] = {}
        self._health: Mapping[tuple[str, str], float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.discovery_errors: dict[str, str] = {}  # provider -> why its last discovery failed
        self._quiet: set[str] = set()  # local providers whose silence was logged
        self.table = ModelTable()
        self._announce(self.config)
        self._rebuild()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._watch_config()),
            asyncio.create_task(self._refresh_discovery()),
            asyncio.create_task(self._refresh_leaderboards()),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def api_key(self, provider: ProviderConfig) -> str | None:
        """The provider's key; "" for a provider that needs none; None when its variable is
        unset (the provider is skipped)."""
        if provider.api_key_env_var is None:
            return ""
        return self._settings.provider_key(provider.api_key_env_var)

    def active_providers(self) -> list[ProviderConfig]:
        return [
            p for p in self.config.providers if p.base_priority > 0 and self.api_key(p) is not None
        ]

    def no_keys_message(self) -> str | None:
        """What to do when no provider can serve for want of a key: none with a key has it
        set, and no local server (a provider without a key) has answered.  None otherwise."""
        enabled = [p for p in self.config.providers if p.base_priority > 0]
        if any(
            not p.keyless or p.models is not None or p.name in self._discovered
            for p in self.active_providers()
        ):
            return None
        names = sorted({p.api_key_env_var for p in enabled if p.api_key_env_var is not None})
        # Named, not located: discovery says once where each did not answer.
        local = [p.name for p in enabled if p.keyless]
        if not names and not local:
            return "No provider is enabled in the configuration (every base_priority is <= 0)."
        message = "No provider has an API key set"
        if names:
            message += "; set at least one of: " + ", ".join(names)
        if local:
            return (
                f"{message}. No local server without a key answers yet either ("
                + ", ".join(local)
                + "): each is used once it does."
            )
        return f"{message}. Until then every routed request answers 503."

    def _announce(self, config: GatewayConfig) -> None:
        for warning in config.warnings:
            log.warning("config: %s", warning)
        for p in config.providers:
            if p.base_priority <= 0:
                log.info("provider %s: base_priority %g <= 0; disabled", p.name, p.base_priority)
            elif self.api_key(p) is None:
                log.warning("provider %s: %s is not set; skipped", p.name, p.api_key_env_var)

    # -- the table ---------------------------------------------------------------------------

    def apply_health(self, live: Mapping[tuple[str, str], float]) -> None:
        """Fleet-wide live factors per pair (see routing/live.py); they reorder the table."""
        if live != self._health:
            self._health = dict(live)
            self._rebuild()

    def _rebuild(self) -> None:
        config = self.config
        pairs: list[Candidate] = []
        for provider in self.active_providers():
            key = self.api_key(provider)
            assert key is not None
            models = (
                [ModelInfo(m) for m in provider.models]
                if provider.models is not None
                else self._discovered.get(provider.name, [])
            )
            timeout = provider.timeout_s or self._settings.request_timeout_s
            for model in models:
                score = score_pair(
                    provider,
                    model,
                    config.weights,
                    config.adjustments,
                    self._scores,
                    config.aliases,
                )
                pairs.append(
                    Candidate.build(
                        provider.name,
                        model.id,
                        score,
                        provider.base_url,
                        key,
                        timeout,
                        provider.apis,
                        provider.first_token_timeout_s,
                    )
                )
        self.table = ModelTable.build(pairs, self._health)
        self._metrics.models_routable.set(self.table.routable)

    # -- configuration hot reload ------------------------------------------------------------

    async def _watch_config(self) -> None:
        directory: Path = self._settings.config_dir
        last_bad: str | None = None
        while True:
            await asyncio.sleep(CONFIG_POLL_S)
            fingerprint = await asyncio.to_thread(config_fingerprint, directory)
            if fingerprint == self.config.fingerprint and last_bad is not None:
                # Put back as it was: say so, or the reload error stays the last word.
                last_bad = None
                log.info("config in %s is valid again (unchanged from the one in use)", directory)
                continue
            if fingerprint in (self.config.fingerprint, last_bad):
                continue
            try:
                config = await asyncio.to_thread(load_config, directory)
            except ConfigError as exc:
                last_bad = fingerprint
                self._metrics.config_reloads.labels("error").inc()
                log.error("config reload failed, keeping the last good configuration: %s", exc)
                continue
            last_bad = None
            old = self.config
            self.config = config
            self._metrics.config_reloads.labels("ok").inc()
            log.info("config reloaded from %s", directory)
            self._announce(config)
            self._rebuild()
            if old.providers != config.providers:
                await self._discover_all()
            if old.leaderboards != config.leaderboards:
                await self._load_leaderboards()

    # -- discovery ---------------------------------------------------------------------------

    async def _refresh_discovery(self) -> None:
        while True:
            pending = await self._discover_all()
            await asyncio.sleep(RETRY_S if pending else self.config.discovery_refresh_s / 4)

    async def refresh_now(self) -> None:
        """Discover every provider and load every leaderboard once (for check-config)."""
        await self._discover_all()
        await self._load_leaderboards()

    async def _discover_all(self) -> bool:
        """Bring every discovered provider's model list up to date; True if some are missing."""
        providers = [p for p in self.active_providers() if p.models is None]
        results = await asyncio.gather(*(self._discover(p) for p in providers))
        self._rebuild()
        return not all(results)

    async def _discover(self, provider: ProviderConfig) -> bool:
        key = self._store.keys.catalog(provider.name)
        try:
            cached = await self._store.get(key)
            if cached is not None:
                self._discovered[provider.name] = [ModelInfo(**m) for m in orjson.loads(cached)]
                return True
            # The lock lasts as long as one attempt may: a provider that failed is tried again
            # at the next retry, by this replica or another.
            lock_s = self.config.discovery_timeout_s + 1
            if not await self._store.try_lock(f"discovery:{provider.name}", self._owner, lock_s):
                return provider.name in self._discovered
        except StoreError as exc:
            log.warning("discovery of %s: store error %s", provider.name, exc)
            return False
        api_key = self.api_key(provider)
        started = time.monotonic()
        try:
            data = await self._client.get_json(
                provider.models_url,
                {"Authorization": f"Bearer {api_key}"} if api_key else {},
                self.config.discovery_timeout_s,
            )
            dropped: list[str] = []
            models = parse_model_list(data, dropped)
        except (UpstreamFailure, ValueError) as exc:
            self.discovery_errors[provider.name] = str(exc)
            if not provider.keyless:
                log.warning(
                    "discovery of %s at %s failed: %s", provider.name, provider.models_url, exc
                )
            elif provider.name not in self._quiet:
                # A local server that is not running is the common case: said once, not at
                # every retry, until it answers.
                self._quiet.add(provider.name)
                connect = isinstance(exc, UpstreamFailure) and exc.reason == CONNECT
                log.info(
                    "local provider %s: no server answers at %s (%s); used once one does",
                    provider.name,
                    provider.base_url,
                    "nothing listens there" if connect else exc,
                )
            return False
        self._quiet.discard(provider.name)
        for note in dropped[:20]:
            log.warning("discovery of %s: dropped %s", provider.name, note)
        if len(dropped) > 20:
            log.warning(
                "discovery of %s: %d more entries dropped", provider.name, len(dropped) - 20
            )
        self.discovery_errors.pop(provider.name, None)
        self._discovered[provider.name] = models
        log.info(
            "discovered %d models at %s in %.2fs",
            len(models),
            provider.name,
            time.monotonic() - started,
        )
        payload = orjson.dumps([{"id": m.id, "context": m.context} for m in models])
        try:
            await self._store.set(key, payload, self.config.discovery_refresh_s)
        except StoreError as exc:
            log.warning("discovery of %s: cannot cache result: %s", provider.name, exc)
        return True

    # -- leaderboards ------------------------------------------------------------------------

    async def _refresh_leaderboards(self) -> None:
        while True:
            await self._load_leaderboards()
            refresh = min((s.refresh_s for s in self.config.leaderboards), default=3600.0)
            await asyncio.sleep(min(refresh, RETRY_S) if not self._scores else refresh / 4)

    async def _load_leaderboards(self) -> None:
        for source in self.config.leaderboards:
            key = self._store.keys.leaderboard(source.name)
            try:
                cached = await self._store.get(key)
                if cached is not None:
                    self._per_source[source.name] = orjson.loads(cached)
                    continue
                lock_s = source.timeout_s + 1
                if not await self._store.try_lock(
                    f"leaderboard:{source.name}", self._owner, lock_s
                ):
                    continue
            except StoreError as exc:
                log.warning("leaderboard %s: store error %s", source.name, exc)
                continue
            try:
                scores = await asyncio.wait_for(
                    fetch_leaderboard(source, self._client), source.timeout_s
                )
            except (UpstreamFailure, ValueError, OSError, TimeoutError) as exc:
                log.warning("leaderboard %s at %s failed: %s", source.name, source.location, exc)
                continue
            self._per_source[source.name] = scores
            log.info("leaderboard %s: %d models", source.name, len(scores))
            try:
                await self._store.set(key, orjson.dumps(scores), source.refresh_s)
            except StoreError as exc:
                log.warning("leaderboard %s: cannot cache: %s", source.name, exc)
        names = {s.name for s in self.config.leaderboards}
        merged: dict[str, float] = {}
        for name, scores in self._per_source.items():
            if name in names:
                for model, value in scores.items():
                    merged[model] = max(value, merged.get(model, 0.0))
        if merged != self._scores:
            self._scores = merged
            self._rebuild()
