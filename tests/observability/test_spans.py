"""Ids, ``traceparent`` and sampling of recorded spans, held against the OpenTelemetry SDK:
the same headers are accepted, and the same traces are kept, as the SDK's propagator and
samplers would."""

from __future__ import annotations

import random
import re

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service.observability.spans import (
    Parent,
    Sampling,
    new_span_id,
    new_trace_id,
    parse_traceparent,
    traceparent,
)
from service.observability.tracing import Tracing, TracingError, check_env

W3C = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]")


def test_ids_are_random_nonzero_and_fit_their_width() -> None:
    traces = {new_trace_id() for _ in range(2000)}
    spans = {new_span_id() for _ in range(2000)}
    assert len(traces) == 2000 and len(spans) == 2000
    assert all(0 < t < 1 << 128 for t in traces)
    assert all(0 < s < 1 << 64 for s in spans)
    assert any(t >= 1 << 127 for t in traces)  # the high bits are drawn too


def test_traceparent_is_w3c_and_round_trips() -> None:
    for sampled in (True, False):
        trace_id, span_id = new_trace_id(), new_span_id()
        header = traceparent(trace_id, span_id, sampled)
        assert W3C.fullmatch(header), header
        assert header.endswith("-01" if sampled else "-00")
        assert parse_traceparent(header) == Parent(trace_id, span_id, sampled)
    assert traceparent(1, 2, True) == f"00-{'0' * 31}1-{'0' * 15}2-01"
    for trace_id, span_id in ((1 << 128) - 1, (1 << 64) - 1), (0xABC << 100, 0xDEF << 40):
        expected = f"00-{trace_id:032x}-{span_id:016x}-00"
        assert traceparent(trace_id, span_id, False) == expected


HEADERS = [
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",  # other flags set
    " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",  # a later version
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # 00 has no more
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper case
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
    "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
    "",
    "garbage",
]


@pytest.mark.parametrize("header", HEADERS)
def test_a_traceparent_is_accepted_exactly_when_the_sdk_accepts_it(header: str) -> None:
    context = get_current_span(
        TraceContextTextMapPropagator().extract({"traceparent": header})
    ).get_span_context()
    expected = (
        Parent(context.trace_id, context.span_id, context.trace_flags.sampled)
        if context.is_valid
        else None
    )
    assert parse_traceparent(header) == expected


def sampling_of(env: dict[str, str]) -> Sampling:
    tracing = Tracing.from_env(env, exporter=InMemorySpanExporter())
    assert tracing is not None
    tracing.shutdown()
    return tracing.sampling


SAMPLERS: list[tuple[dict[str, str], Sampler]] = [
    ({"OTEL_TRACES_SAMPLER": "always_on"}, ALWAYS_ON),
    ({"OTEL_TRACES_SAMPLER": "always_off"}, ALWAYS_OFF),
    ({}, DEFAULT_ON),  # parentbased_always_on
    ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, DEFAULT_OFF),
    (
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.3"},
        TraceIdRatioBased(0.3),
    ),
    (
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.3"},
        ParentBasedTraceIdRatio(0.3),
    ),
]


@pytest.mark.parametrize(("env", "sdk"), SAMPLERS, ids=lambda x: str(x))
def test_each_sampler_keeps_the_traces_the_sdk_s_keeps(env: dict[str, str], sdk: Sampler) -> None:
    sampling = sampling_of(env)
    draw = random.Random(26)
    for _ in range(3000):
        trace_id = draw.getrandbits(128) or 1
        parent: Parent | None = None
        context = None
        if draw.random() < 0.5:  # continued from a caller who kept it or not
            parent = Parent(trace_id, draw.getrandbits(64) or 1, draw.random() < 0.5)
            flags = TraceFlags(TraceFlags.SAMPLED if parent.sampled else TraceFlags.DEFAULT)
            span = NonRecordingSpan(SpanContext(trace_id, parent.span_id, True, flags))
            context = set_span_in_context(span)
        decision = sdk.should_sample(
            context, trace_id, "POST /v1/chat/completions", SpanKind.SERVER
        )
        assert sampling.sampled(trace_id, parent) is decision.decision.is_sampled()


def test_the_ratio_sampler_keeps_its_share_of_traces() -> None:
    for rate in (0.0, 0.01, 0.25, 0.5, 1.0):
        sampling = Sampling.ratio(rate, parent_based=False)
        kept = sum(sampling.sampled(new_trace_id(), None) for _ in range(20_000))
        # Binomial: 6 standard deviations at most.
        assert abs(kept / 20_000 - rate) <= 6 * (rate * (1 - rate) / 20_000) ** 0.5


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_SAMPLER": "sometimes"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
    ],
)
def test_an_unusable_sampler_is_refused_by_name(env: dict[str, str]) -> None:
    with pytest.raises(TracingError, match="OTEL_TRACES_SAMPLER"):
        check_env(env)
