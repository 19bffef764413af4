"""A gateway in this process whose spans go to an in-memory exporter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.app import App
from service.gateway import Gateway
from tests.inprocess import client, inprocess_settings

CHAT = {"model": "m", "messages": [{"role": "user", "content": "the secret word is plum"}]}


@dataclass
class Traced:
    app: App
    http: httpx.AsyncClient
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        tracing = self.app.gateway.tracing
        assert tracing is not None
        assert tracing.flush()
        return list(self.exporter.get_finished_spans())

    def servers(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind is SpanKind.SERVER]

    def clients(self) -> list[ReadableSpan]:
        return sorted(
            (s for s in self.spans() if s.kind is SpanKind.CLIENT),
            key=lambda s: s.start_time or 0,
        )


@asynccontextmanager
async def gateway(
    config_dir: Path,
    data_dir: Path,
    env: Mapping[str, str] | None = None,
    exporter: SpanExporter | None = None,
) -> AsyncIterator[App]:
    settings = inprocess_settings(
        config_dir, data_dir, env={"A_KEY": "ka", "B_KEY": "kb", **(env or {})}
    )
    app = App(Gateway.build(settings, span_exporter=exporter))
    await app.gateway.start()
    try:
        yield app
    finally:
        await app.gateway.close()


@asynccontextmanager
async def traced_gateway(
    config_dir: Path, data_dir: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    async with gateway(config_dir, data_dir, env, exporter) as app, client(app) as http:
        yield Traced(app, http, exporter)
