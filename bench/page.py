"""The docs' performance page, written from a results document and the template beside this
module: the method text with the latest run's tables filled in (``$name`` placeholders)."""

from __future__ import annotations

import datetime as dt
import json
import string
from pathlib import Path
from typing import Any

from bench.report import (
    Results,
    baseline_table,
    cache_table,
    capacity_markdown,
    jwt_lines,
    main_table,
    messages_vs_chat,
    notes,
    ratio_table,
    store_cost_markdown,
    sweep_table,
    tracing_table,
)
from bench.soak import render_soak_markdown
from bench.stages import render_markdown as render_breakdown

TEMPLATE = Path(__file__).resolve().parent / "performance_template.md"
SOAK_STORES = ("redis", "embedded")
BREAKDOWN = "breakdown.json"
BREAKDOWN_HEADING = "## Where a request's CPU goes"
NO_BREAKDOWN = "Not measured yet: `uv run python -m bench.breakdown --write`."
PAIRED = "paired.json"
NO_PAIRED = "Not measured yet: `uv run python -m bench.paired`."


def run_line(meta: dict[str, Any]) -> str:
    """When, on which commit and on what machine the run was made."""
    started = dt.datetime.fromisoformat(meta["started_at"]).astimezone(dt.UTC)
    machine = ", ".join(part for part in (meta.get("cpu"), meta.get("machine")) if part)
    return (
        f"Run on {started:%Y-%m-%d} at {started:%H:%M} UTC, commit `{meta['commit']}` "
        f"({meta['mode']}, {meta['duration_s']:g} s per point), on {machine}: "
        f"{meta['pinning']}."
    )


def soak_section(soaks: dict[str, dict[str, Any]]) -> str:
    if not soaks:
        return "Not measured with this run: `uv run python -m bench --soak`, then `--report-only`."
    parts = []
    for store, soak in soaks.items():
        parts.append(render_soak_markdown(soak).rstrip())
        parts.append(f"![Gateway memory during the {store}-store soak](img/soak-{store}.png)")
    return "\n\n".join(parts)


def render_page(
    results: Results,
    soaks: dict[str, dict[str, Any]] | None = None,
    template: str | None = None,
    breakdown: dict[str, Any] | None = None,
    paired: dict[str, Any] | None = None,
) -> str:
    """The page for ``results`` (and the soak documents, by store, the CPU breakdown and the
    features' paired costs)."""
    text = TEMPLATE.read_text() if template is None else template
    store_cost = results.get("store_cost")
    capacity = results.get("capacity")
    extra = notes(results)
    sections = {
        "run": run_line(results["meta"]),
        "concurrency": str(results["meta"]["throughput_concurrency"]),
        "throughput": "\n".join(main_table(results)),
        "ratios": "\n".join(ratio_table(results)),
        "baseline": "\n".join(baseline_table(results))
        or "Not measured in this run (no `--baseline-root`).",
        "features": "\n\n".join(
            part
            for part in (
                "\n".join(messages_vs_chat(results)),
                "\n".join(tracing_table(results)),
                "\n".join(jwt_lines(results)),
                "\n".join(cache_table(results)),
            )
            if part
        ),
        "sweep": "\n".join(sweep_table(results)),
        "store_cost": "\n".join(store_cost_markdown(store_cost, with_commit=False))
        if store_cost
        else "Not measured in this run (`--store-topologies none`).",
        "capacity": "\n".join(capacity_markdown(capacity, with_commit=False))
        if capacity
        else "Not measured in this run.",
        "soak": soak_section(soaks or {}),
        "breakdown": render_breakdown(breakdown) if breakdown else NO_BREAKDOWN,
        "paired": paired_table(paired) if paired else NO_PAIRED,
        "notes": "\n".join(["### Notes on this run", "", *extra]) if extra else "",
    }
    page = string.Template(text).substitute(sections)
    while "\n\n\n" in page:  # an empty section leaves blank lines behind
        page = page.replace("\n\n\n", "\n\n")
    return page


def soak_documents(results_dir: Path) -> dict[str, dict[str, Any]]:
    """The latest soak of each store that has one in ``results_dir``."""
    found: dict[str, dict[str, Any]] = {}
    for store in SOAK_STORES:
        path = results_dir / f"soak-{store}.json"
        if path.exists():
            found[store] = json.loads(path.read_text())
    return found


def paired_table(document: dict[str, Any]) -> str:
    """The markdown table of a run of ``python -m bench.paired``."""
    meta = document["meta"]
    lines = [
        f"Commit `{meta['commit']}`, {meta['started_at'][:16].replace('T', ' ')} UTC, on "
        f"{meta['cpu']}: embedded store, c={meta['connections']}, {meta['seconds']:g} s per run.",
        "",
        "| pair | plain / feature CPU per request | CPU µs per request, plain / feature "
        "| req/s, plain / feature | rounds |",
        "|---|---|---|---|---|",
    ]
    for row in document["rows"]:
        lines.append(
            f"| {row['pair']} | {row['share']:.1%} | {row['plain_cpu_us']:.0f} / "
            f"{row['feature_cpu_us']:.0f} | {row['plain_rps']:,.0f} / {row['feature_rps']:,.0f} "
            f"| {row['rounds']} |"
        )
    return "\n".join(lines)


def paired_document(results_dir: Path) -> dict[str, Any] | None:
    """The latest run of ``python -m bench.paired``, if there is one."""
    path = results_dir / PAIRED
    return json.loads(path.read_text()) if path.exists() else None


def breakdown_document(results_dir: Path) -> dict[str, Any] | None:
    """The latest CPU breakdown (``python -m bench.breakdown``), if there is one."""
    path = results_dir / BREAKDOWN
    return json.loads(path.read_text()) if path.exists() else None


def write_page(results: Results, results_dir: Path, docs_dir: Path) -> Path:
    """Write ``docs_dir/performance.md``; the plots are made by the caller."""
    path = docs_dir / "performance.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    breakdown = breakdown_document(results_dir)
    paired = paired_document(results_dir)
    path.write_text(
        render_page(results, soak_documents(results_dir), breakdown=breakdown, paired=paired)
    )
    return path


def _section(text: str, heading: str) -> tuple[int, int] | None:
    """Where the ``heading`` section of ``text`` starts and ends (at the next ``## ``)."""
    start = text.find(heading + "\n")
    if start < 0:
        return None
    end = text.find("\n## ", start + len(heading))
    return start, len(text) if end < 0 else end + 1


def splice_breakdown(page: str, breakdown: dict[str, Any], template: str | None = None) -> str:
    """``page`` with its CPU breakdown section as the template renders it for ``breakdown``
    (added before "## Method" when the page has none), the rest left as it is: the page
    of a run whose results document is gone keeps its figures."""
    text = TEMPLATE.read_text() if template is None else template
    where = _section(text, BREAKDOWN_HEADING)
    if where is None:
        raise ValueError(f"the template has no {BREAKDOWN_HEADING!r} section")
    chunk = text[where[0] : where[1]]
    section = string.Template(chunk).substitute(breakdown=render_breakdown(breakdown))
    if not section.endswith("\n\n"):
        section += "\n"
    found = _section(page, BREAKDOWN_HEADING)
    if found is not None:
        return page[: found[0]] + section + page[found[1] :]
    method = page.find("## Method\n")
    if method < 0:
        return page.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    return page[:method] + section + page[method:]
