"""OTLP protobuf of a batch of spans: the bytes of an ``ExportTraceServiceRequest``.

The OTLP exporters post what this returns (``span_export``).  It is written out by hand
(protobuf's wire format: a tag, then a varint, fixed-width or length-prefixed value) because
building the same message costs about three and a half times as much CPU with
``opentelemetry-proto``'s message classes (KeyValue messages cached), and about thirteen times
as much through the SDK's ``encode_spans`` (``uv run python -m bench.tracing_cost``).  The
KeyValue bytes of repeated (key, value) pairs are cached.  The tests decode the output with
``opentelemetry-proto`` and compare it with the SDK's encoding of the same spans.

Field numbers are those of opentelemetry/proto/trace/v1/trace.proto,
common/v1/common.proto, resource/v1/resource.proto and the trace collector service.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.trace import SpanKind

from service.observability.spans import SpanRecord

_MASK_64 = (1 << 64) - 1
_CACHED = 4096  # distinct (key, value) pairs whose bytes are kept; more are encoded each time
_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack
_pack_times = struct.Struct("<BQBQ").pack  # start_time_unix_nano, end_time_unix_nano


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = tuple(_varint(n) for n in range(1 << 14))  # the length of nearly every field


def _length(size: int) -> bytes:
    return _SMALL[size] if size < 16384 else _varint(size)


def _field(tag: bytes, data: bytes) -> bytes:
    """A length-delimited field: ``tag`` is the key byte (field number << 3 | 2)."""
    return tag + _length(len(data)) + data


# Span: trace_id 1, span_id 2, trace_state 3, parent_span_id 4, name 5, kind 6,
# start_time_unix_nano 7 (fixed64), end_time_unix_nano 8 (fixed64), attributes 9, status 15,
# flags 16 (fixed32).  KeyValue: key 1, value 2.  AnyValue: string_value 1, bool_value 2,
# int_value 3, double_value 4, array_value 5 (ArrayValue: values 1).  Status: code 3.
_TRACE_ID = b"\x0a\x10"
_SPAN_ID = b"\x12\x08"
_TRACE_STATE = b"\x1a"
_PARENT_ID = b"\x22\x08"
_NAME = b"\x2a"
_START = 0x39  # field 7, fixed64
_END = 0x41  # field 8, fixed64
_KINDS = {
    SpanKind.INTERNAL: b"\x30\x01",
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}
_STATUS_UNSET = b"\x7a\x00"  # present, code 0: as the SDK's encoder writes it
_STATUS_ERROR = b"\x7a\x02\x18\x02"
# SpanFlags: the context knows whether its parent is remote (0x100), and it is (0x200).
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", 0x100)
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", 0x300)
_ATTRIBUTE = b"\x4a"  # Span.attributes
# The kind, status and flags of a span, by (kind, error, parent remote).
_TAILS = {
    (kind, error, remote): encoded
    + (_STATUS_ERROR if error else _STATUS_UNSET)
    + (_FLAGS_REMOTE if remote else _FLAGS_LOCAL)
    for kind, encoded in _KINDS.items()
    for error in (False, True)
    for remote in (False, True)
}
# The tails of the two kinds the gateway records, by error + 2 * parent remote: found by
# identity, as an Enum's hash is a call to Python code.
_SERVER = SpanKind.SERVER
_CLIENT = SpanKind.CLIENT
_SERVER_TAILS = tuple(_TAILS[_SERVER, e, r] for r in (False, True) for e in (False, True))
_CLIENT_TAILS = tuple(_TAILS[_CLIENT, e, r] for r in (False, True) for e in (False, True))
_KEY = b"\x0a"
_VALUE = b"\x12"
_FALSE = b"\x10\x00"
_TRUE = b"\x10\x01"


def any_value(value: Any) -> bytes:
    """An AnyValue's fields: a str, bool, int, float, or a sequence of them."""
    kind = value.__class__
    if kind is str:
        data: bytes = value.encode()
        return b"\x0a" + _length(len(data)) + data
    if kind is bool:
        return _TRUE if value else _FALSE
    if kind is int:
        return b"\x18" + _varint(value & _MASK_64)  # int64: two's complement, 10 bytes if < 0
    if kind is float:
        return b"\x21" + _pack_double(value)
    if kind is tuple or kind is list:
        return _field(b"\x2a", b"".join(_field(b"\x0a", any_value(v)) for v in value))
    # Subclasses (a StrEnum, an IntEnum) as their base type.
    if isinstance(value, bool):
        return any_value(bool(value))
    if isinstance(value, int):
        return any_value(int(value))
    if isinstance(value, float):
        return any_value(float(value))
    return any_value(str(value))


class OtlpEncoder:
    """Encodes batches of spans of one resource and one instrumentation scope.

    Not thread-safe: one export thread uses it (its caches are unsynchronised).
    ``repeated`` names the attributes whose values repeat across requests (a method, a
    provider, an outcome): their KeyValue bytes are cached, up to ``_CACHED`` pairs."""

    def __init__(
        self, resource: Mapping[str, Any], scope: str, repeated: Iterable[str] = ()
    ) -> None:
        # Attribute -> value (or (type, value)) -> its KeyValue bytes, for ``repeated``.
        self._by_key: dict[str, dict[Any, bytes]] = {key: {} for key in repeated}
        self._cached = 0
        self._keys: dict[str, bytes] = {}
        self._names: dict[str, bytes] = {}
        encoded_resource = b"".join(  # Resource.attributes (1)
            _field(b"\x0a", _field(_KEY, k.encode()) + _field(_VALUE, any_value(v)))
            for k, v in resource.items()
        )
        self._resource = _field(b"\x0a", encoded_resource)  # ResourceSpans.resource
        self._scope = _field(b"\x0a", _field(b"\x0a", scope.encode()))  # ScopeSpans.scope

    def encode(self, spans: Sequence[SpanRecord]) -> bytes:
        """The ExportTraceServiceRequest of ``spans``, joined once: the spans' fields are
        appended to one list, behind the request's headers, filled in last."""
        parts: list[bytes] = [b""] * 6
        span = self._span
        size = 0
        for record in spans:
            size += span(record, parts)
        scope_spans = len(self._scope) + size  # ScopeSpans: scope, spans
        length = _length(scope_spans)
        parts[0] = b"\x0a"  # ExportTraceServiceRequest.resource_spans
        parts[1] = _length(len(self._resource) + 1 + len(length) + scope_spans)
        parts[2] = self._resource
        parts[3] = b"\x12"  # ResourceSpans.scope_spans
        parts[4] = length
        parts[5] = self._scope
        return b"".join(parts)

    def _span(self, span: SpanRecord, out: list[bytes]) -> int:
        """Appends the ScopeSpans.spans field of ``span`` to ``out``; returns its size."""
        name = self._names.get(span.name)
        if name is None:
            name = _field(_NAME, span.name.encode())
            if len(self._names) < _CACHED:
                self._names[span.name] = name
        kind = span.kind
        if kind is _SERVER:
            tail = _SERVER_TAILS[span.error + 2 * span.parent_remote]
        elif kind is _CLIENT:
            tail = _CLIENT_TAILS[span.error + 2 * span.parent_remote]
        else:
            tail = _TAILS[kind, span.error, span.parent_remote]
        parts = [
            _TRACE_ID,
            span.trace_id.to_bytes(16, "big"),
            _SPAN_ID,
            span.span_id.to_bytes(8, "big"),
            name,
            tail,
            _pack_times(_START, span.start_ns, _END, span.end_ns),
        ]
        if span.parent_id:
            parts += (_PARENT_ID, span.parent_id.to_bytes(8, "big"))
        if span.trace_state:
            parts.append(_field(_TRACE_STATE, span.trace_state.encode()))
        by_key, keys = self._by_key, self._keys
        for key, value in span.attributes.items():
            cache = by_key.get(key)
            kind = value.__class__
            if cache is not None:
                # By value and type (1, 1.0 and True are equal keys), a float by its bits
                # (0.0 and -0.0 are equal too); a list is unhashable.
                if kind is str:
                    pair = value
                elif kind is float:
                    pair = (kind, _pack_double(value))
                else:
                    pair = None if kind is list else (kind, value)
                found = cache.get(pair)
                if found is None:
                    found = self._key_value(key, value)
                    if pair is not None and self._cached < _CACHED:
                        cache[pair] = found
                        self._cached += 1
                parts.append(found)
                continue
            prefix = keys.get(key)
            if prefix is None:
                parts.append(self._key_value(key, value))
                continue
            # The AnyValue of the commonest types inline; any_value for the others.
            if kind is str:
                data = value.encode()
                encoded = b"\x0a" + _length(len(data)) + data
            elif kind is int and 0 <= value < 16384:
                encoded = b"\x18" + _SMALL[value]
            elif kind is float:
                encoded = b"\x21" + _pack_double(value)
            else:
                encoded = any_value(value)
            encoded = prefix + _VALUE + _length(len(encoded)) + encoded
            parts += (_ATTRIBUTE, _length(len(encoded)), encoded)
        body = b"".join(parts)
        length = _length(len(body))
        out += (b"\x12", length, body)  # ScopeSpans.spans
        return 1 + len(length) + len(body)

    def _key_value(self, key: str, value: Any) -> bytes:
        prefix = self._keys.get(key)
        if prefix is None:
            prefix = _field(_KEY, key.encode())
            if len(self._keys) < _CACHED:
                self._keys[key] = prefix
        return _field(_ATTRIBUTE, prefix + _field(_VALUE, any_value(value)))
