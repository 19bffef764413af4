"""The hand-written OTLP encoder gives the message the SDK's encoder gives for the same
spans, as a collector decodes it (with opentelemetry-proto)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind

from service.observability.otlp import OtlpEncoder
from service.observability.span_export import readable_span
from service.observability.spans import SpanRecord

RESOURCE = Resource.create({"service.name": "best", "deployment.environment": "test"})
REPEATED = ("http.request.method", "best.outcome", "best.hedge", "gen_ai.request.temperature")


def decoded(encoder: OtlpEncoder, spans: list[SpanRecord]) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(encoder.encode(spans))


def the_sdk_s(spans: list[SpanRecord]) -> ExportTraceServiceRequest:
    return encode_spans([readable_span(s, RESOURCE) for s in spans])


def record(
    attributes: dict[str, Any],
    parent_id: int = 0,
    remote: bool = False,
    state: str = "",
    kind: SpanKind = SpanKind.CLIENT,
    error: bool = False,
    name: str = "chat gpt-4o-mini",
) -> SpanRecord:
    span = SpanRecord(
        (1 << 127) + 12345,
        0xFEDCBA9876543210,
        parent_id,
        remote,
        state,
        name,
        kind,
        1_700_000_000_123_456_789,
        attributes,
    )
    span.end_ns = span.start_ns + 987_654_321
    span.error = error
    return span


def test_a_request_s_spans_encode_as_the_sdk_encodes_them() -> None:
    encoder = OtlpEncoder(RESOURCE.attributes, "best", REPEATED)
    server = record(
        {"http.request.method": "POST", "http.response.status_code": 200},
        parent_id=0x00F067AA0BA902B7,
        remote=True,
        state="vendor=x,other=y",
        kind=SpanKind.SERVER,
        name="POST /v1/chat/completions",
    )
    attempt = record(
        {
            "gen_ai.request.model": "gpt-4o-mini",
            "best.hedge": False,
            "gen_ai.request.temperature": 0.7,
            "gen_ai.response.finish_reasons": ("stop", "length"),
            "gen_ai.usage.input_tokens": 0,
            "best.outcome": "failed",
            "gen_ai.input.messages": "ünïcode ☃ " * 3000,  # a length past two varint bytes
        },
        parent_id=server.span_id,
        error=True,
    )
    root = record({})
    got = decoded(encoder, [server, attempt, root])
    assert got == the_sdk_s([server, attempt, root])
    spans = got.resource_spans[0].scope_spans[0].spans
    assert [s.name for s in spans] == ["POST /v1/chat/completions"] + ["chat gpt-4o-mini"] * 2
    assert spans[1].parent_span_id == server.span_id.to_bytes(8, "big")
    assert spans[1].status.code == 2  # ERROR
    assert spans[0].trace_state == "vendor=x,other=y"
    assert got.resource_spans[0].scope_spans[0].scope.name == "best"


def test_cached_pairs_keep_their_types() -> None:
    """A repeated attribute's bytes are cached by value and type: 1, 1.0 and True differ."""
    encoder = OtlpEncoder(RESOURCE.attributes, "best", REPEATED)
    spans = [
        record({"gen_ai.request.temperature": value, "best.hedge": value})
        for value in (1, 1.0, True, 1, 1.0, True)
    ]
    assert decoded(encoder, spans) == the_sdk_s(spans)
    assert decoded(encoder, spans) == the_sdk_s(spans)  # now from the cache


def test_cached_floats_keep_their_sign() -> None:
    """0.0 and -0.0 are equal keys of a dict, not equal values to a collector."""
    encoder = OtlpEncoder(RESOURCE.attributes, "best", REPEATED)
    spans = [record({"gen_ai.request.temperature": value}) for value in (0.0, -0.0, -0.0, 0.0)]
    got = decoded(encoder, spans).resource_spans[0].scope_spans[0].spans
    signs = [math.copysign(1.0, s.attributes[0].value.double_value) for s in got]
    assert signs == [1.0, -1.0, -1.0, 1.0]


values = st.one_of(
    st.text(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.floats(allow_nan=False),
    st.lists(st.text(), max_size=4).map(tuple),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.sampled_from([*REPEATED, "a", "b.c", "ünï"]), values),
            st.integers(min_value=0, max_value=(1 << 64) - 1),
            st.booleans(),
            st.booleans(),
            st.text(min_size=1),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_any_spans_encode_as_the_sdk_encodes_them(
    cases: list[tuple[dict[str, Any], int, bool, bool, str]],
) -> None:
    encoder = OtlpEncoder(RESOURCE.attributes, "best", REPEATED)
    spans = [
        record(attributes, parent_id, remote and parent_id > 0, error=error, name=name)
        for attributes, parent_id, remote, error, name in cases
    ]
    assert decoded(encoder, spans) == the_sdk_s(spans)


def test_unrepeated_attributes_encode_alike_once_their_key_is_known() -> None:
    """After a key's first span its values are encoded inline, by type: ints either side
    of the one-byte and two-byte varints and negative, floats, long strings, bools."""
    encoder = OtlpEncoder(RESOURCE.attributes, "best", REPEATED)
    values = (0, 127, 128, 16383, 16384, -1, 1 << 62, 0.0, -0.0, 2.5, "", "x" * 20000, True)
    spans = [record({"gen_ai.usage.input_tokens": value}) for value in values]
    assert decoded(encoder, spans) == the_sdk_s(spans)
