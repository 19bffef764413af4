"""Metric names on both sides of the contract: what /metrics exports and what PromQL uses."""

from __future__ import annotations

import re

# Sample names each metric type exposes in the text format.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "untyped": ("",),
    "info": ("_info",),
}
_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)
_SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", re.MULTILINE)
# BEST's own series start with best_, the OpenTelemetry GenAI ones with gen_ai_ (as do some
# label names: those are removed first, with every label matcher and grouping clause).
_BEST_NAME = re.compile(r"\b(?:best|gen_ai)_[a-z0-9_]+\b")
_LABEL_PARTS = re.compile(
    r"\{[^}]*\}|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
    r"|\{\{[^}]*\}\}"
)


def exported_names(exposition: str) -> set[str]:
    """Every series name the exposition text offers: sample names, plus the names each
    ``# TYPE`` line implies (a labelled metric with no sample yet still has its TYPE line)."""
    names = set(_SAMPLE_LINE.findall(exposition))
    for family, kind in _TYPE_LINE.findall(exposition):
        base = family.removesuffix("_total") if kind == "counter" else family
        names.update(base + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    return names


def referenced_names(promql: str) -> set[str]:
    """The BEST metric names a PromQL expression reads."""
    return set(_BEST_NAME.findall(_LABEL_PARTS.sub(" ", promql)))
