"""A recorded span, its ids and ``traceparent``, and the sampling decision.

The SDK's ``Span`` costs tens of microseconds a request (attribute cleaning under a lock,
context objects, a processor chain); a ``SpanRecord`` (the tracer's ``RequestTrace`` and
``AttemptSpan`` are ones) is a plain object with an attributes dict, queued when it ends and
turned into OTLP by the export thread (``span_export``).  The attributes it holds are already
of OTLP's types (str, bool, int, float, tuples of str), so nothing cleans them.

Ids are drawn as the SDK's ``RandomIdGenerator`` draws them (``random.getrandbits``: the
module's generator, which is reseeded in a forked child).  The sampling decision is made once
per trace, with the same rule as the SDK's samplers (``Sampling``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import SpanKind

_TRACE_ID_BITS = 128
_SPAN_ID_BITS = 64
_LOW_64 = (1 << 64) - 1
# W3C Trace Context: version-traceid-parentid-flags, lower-case hex; a later version may add
# fields after a dash, version 00 may not; ff is invalid.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_SAMPLED = 0x01


class SpanRecord:
    """One span: ``kind`` is ``SpanKind.SERVER`` or ``CLIENT``; ``parent_id`` is 0 for a
    root; ``error`` sets its status to ERROR.  Its owner mutates it until it is queued
    (``end_ns`` set), and never after: the export thread reads it then."""

    __slots__ = (
        "attributes",
        "end_ns",
        "error",
        "kind",
        "name",
        "parent_id",
        "parent_remote",
        "span_id",
        "start_ns",
        "trace_id",
        "trace_state",
    )

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        parent_id: int,
        parent_remote: bool,
        trace_state: str,
        name: str,
        kind: SpanKind,
        start_ns: int,
        attributes: dict[str, Any],
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.parent_remote = parent_remote
        self.trace_state = trace_state  # the W3C tracestate header's value ("" when none)
        self.name = name
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = 0
        self.attributes = attributes
        self.error = False


def new_trace_id() -> int:
    while True:
        found = random.getrandbits(_TRACE_ID_BITS)
        if found:
            return found


def new_span_id() -> int:
    while True:
        found = random.getrandbits(_SPAN_ID_BITS)
        if found:
            return found


def traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    """The W3C ``traceparent`` header of a span: its ids in lower-case hex, zero-padded
    (``bytes.hex``, cheaper than a ``:032x`` format)."""
    flags = "-01" if sampled else "-00"
    return f"00-{trace_id.to_bytes(16, 'big').hex()}-{span_id.to_bytes(8, 'big').hex()}{flags}"


@dataclass(frozen=True, slots=True)
class Parent:
    """The caller's span, from its ``traceparent``."""

    trace_id: int
    span_id: int
    sampled: bool


def parse_traceparent(value: str) -> Parent | None:
    """The caller's span, or None when ``value`` is not a valid ``traceparent`` (then the
    request starts a trace of its own, as the W3C recommends)."""
    found = _TRACEPARENT.fullmatch(value.strip())
    if found is None:
        return None
    version, trace, span, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return Parent(trace_id, span_id, bool(int(flags, 16) & _SAMPLED))


@dataclass(frozen=True, slots=True)
class Sampling:
    """Which traces are kept, decided once per trace as the SDK's samplers decide.

    A trace the gateway starts is kept when the low 64 bits of its id are below ``bound``
    (the SDK's ``TraceIdRatioBased`` rule; ``ALWAYS`` keeps every id, 0 none).  With
    ``parent_based``, a trace continued from a caller is kept when the caller kept it
    (the SDK's ``ParentBased`` defaults); without, the same id rule applies to it."""

    parent_based: bool
    bound: int

    ALWAYS = 1 << 64

    @classmethod
    def ratio(cls, rate: float, parent_based: bool) -> Sampling:
        return cls(parent_based, TraceIdRatioBased.get_bound_for_rate(rate))

    def sampled(self, trace_id: int, parent: Parent | None) -> bool:
        if parent is not None and self.parent_based:
            return parent.sampled
        return trace_id & _LOW_64 < self.bound
