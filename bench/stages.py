"""Where a request's CPU goes: py-spy samples attributed to the gateway's stages, and the
markdown of a breakdown document (``bench/results/breakdown.json``, written by
``python -m bench.breakdown``).

A sample's self time belongs to its innermost frame; coroutine stacks in py-spy start at the
resumed coroutine, so inclusive time would miss whatever the loop ran before it.  Frames of
stdlib helpers that are no stage of their own (weakref sets, enum lookups, a dataclass's
generated ``__init__``) pass their time to the nearest caller that is one.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

SERVER = "server (parse, write)"
AUTH = "auth"
BODY = "body parse and validation"
ADMISSION = "admission (store call)"
SETTLEMENT = "settlement, spend, ledger"
UPSTREAM = "upstream client"
ROUTING = "routing and relay"
METRICS = "metrics"
LOOP = "event loop"
OTHER = "other"
# The order of the table: a request's way through the gateway, then the loop between stages.
STAGES = (SERVER, AUTH, BODY, ADMISSION, UPSTREAM, ROUTING, METRICS, SETTLEMENT, LOOP, OTHER)

# (module path, function or None for any) -> stage; the first match wins, so a function's
# rule precedes its module's.
_FUNCTION_RULES: dict[tuple[str, str], str] = {
    ("service/api/http.py", "parse_json"): BODY,
    ("service/api/chat.py", "validate_chat"): BODY,
    ("service/api/calls.py", "model_field"): BODY,
    ("service/api/calls.py", "stream_field"): BODY,
    ("service/api/calls.py", "int_field"): BODY,
    ("service/api/calls.py", "stream_options"): BODY,
    ("service/quotas/admission.py", "Quotas.authenticate"): AUTH,
    ("service/quotas/admission.py", "Quotas.settle"): SETTLEMENT,
    ("service/quotas/limits.py", "refusal"): AUTH,
    ("service/app.py", "App._observe"): METRICS,
    ("service/app.py", "App._count"): METRICS,
    ("service/app.py", "App._first_piece_sent"): METRICS,
}
_MODULE_RULES: tuple[tuple[str, str], ...] = (
    ("uvicorn/", SERVER),
    ("httptools/", SERVER),
    ("service/protocol.py", SERVER),
    ("service/api/auth.py", AUTH),
    ("service/identities/", AUTH),
    ("service/quotas/tokens.py", AUTH),
    ("service/quotas/settlement.py", SETTLEMENT),
    ("service/quotas/spend.py", SETTLEMENT),
    ("service/quotas/ledger.py", SETTLEMENT),
    ("service/quotas/", ADMISSION),
    ("service/store/", ADMISSION),
    ("redis/", ADMISSION),
    ("service/upstream/", UPSTREAM),
    ("service/routing/", ROUTING),
    ("prometheus_client/", METRICS),
    ("service/observability/metrics.py", METRICS),
    ("asyncio/", LOOP),
    ("uvloop/", LOOP),
)
# Code no stage of its own, whose time is its caller's: the stdlib (but asyncio, the loop),
# and the functions dataclasses and namedtuples generate (``<string>``).
_GENERATED = "<string>"

_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*?)(?::(?P<line>\d+))?\)$")
_SITE = re.compile(r"^.*?/(?:site|dist)-packages/")
_STDLIB = re.compile(r"^.*?/lib/python3\.\d+/")


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    path: str  # relative to sys.path: service/api/chat.py, asyncio/tasks.py


def parse_frame(text: str, roots: Iterable[str] = ()) -> Frame:
    """One frame of py-spy's raw output: ``function (path:line)``; a full path (py-spy's
    ``--full-filenames``) is cut to the part an import names."""
    match = _FRAME.match(text)
    if match is None:
        return Frame(text, "")
    path = match["path"]
    if path.startswith("/"):
        cut = _SITE.sub("", path)
        if cut == path:
            prefixes = [root.rstrip("/") + "/" for root in roots]
            cut = next((path[len(p) :] for p in prefixes if path.startswith(p)), path)
        path = _STDLIB.sub("", cut)
    return Frame(match["function"], path)


def module_of(path: str) -> str:
    """``service/api/chat.py`` -> ``service.api.chat``; ``<frozen runpy>`` stays as it is."""
    if path.startswith("<"):
        return path
    dotted = path.removesuffix(".py").replace("/", ".")
    return dotted.removesuffix(".__init__")


def _top(path: str) -> str:
    return path if path.startswith("<") else module_of(path).split(".", 1)[0]


def stage_of(frame: Frame) -> str | None:
    """The frame's stage; None for a stdlib helper whose time is its caller's; ``OTHER``
    for code of no stage."""
    stage = _FUNCTION_RULES.get((frame.path, frame.function))
    if stage is not None:
        return stage
    for prefix, module_stage in _MODULE_RULES:
        if frame.path.startswith(prefix):
            return module_stage
    top = _top(frame.path)
    if top == _GENERATED or top in sys.stdlib_module_names:
        return None
    return OTHER


def attribute(stack: list[Frame]) -> tuple[str, str]:
    """(stage, module) of a sample's self time: the innermost frame that has a stage.  The
    module names "other" code, and a stack of stdlib helpers only."""
    for frame in reversed(stack):
        stage = stage_of(frame)
        if stage is not None:
            return stage, module_of(frame.path)
    innermost = stack[-1] if stack else Frame("?", "?")
    return OTHER, module_of(innermost.path)


@dataclass
class Profile:
    """Samples by stage, and the modules of the "other" ones."""

    stages: Counter[str]
    other: Counter[str]

    @property
    def total(self) -> int:
        return sum(self.stages.values())


def read_raw(text: str, roots: Iterable[str] = ()) -> Profile:
    """py-spy's ``-f raw`` output (one ``frame;frame;... count`` line per distinct stack,
    outermost first; a ``process``/``thread`` frame of ``--threads`` is skipped)."""
    roots = tuple(roots)
    stages: Counter[str] = Counter()
    other: Counter[str] = Counter()
    for line in text.splitlines():
        stack_text, _, count_text = line.strip().rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        frames = [
            parse_frame(part, roots)
            for part in stack_text.split(";")
            if not part.startswith(("process ", "thread "))
        ]
        stage, module = attribute(frames)
        stages[stage] += int(count_text)
        if stage == OTHER:
            other[module] += int(count_text)
    return Profile(stages, other)


def stage_rows(profile: Profile, cpu_us_per_request: float) -> list[dict[str, Any]]:
    """A row per stage in ``STAGES`` order: samples, share and CPU microseconds per request."""
    total = profile.total or 1
    return [
        {
            "stage": stage,
            "samples": profile.stages.get(stage, 0),
            "share": profile.stages.get(stage, 0) / total,
            "us": profile.stages.get(stage, 0) / total * cpu_us_per_request,
        }
        for stage in STAGES
    ]


def other_rows(profile: Profile, cpu_us_per_request: float, top: int = 8) -> list[dict[str, Any]]:
    total = profile.total or 1
    return [
        {"module": module, "share": count / total, "us": count / total * cpu_us_per_request}
        for module, count in profile.other.most_common(top)
    ]


# --- markdown ----------------------------------------------------------------------------


def command_line(meta: dict[str, Any]) -> str:
    return (
        f"uv run python -m bench.breakdown --store {meta['store']} --kind {meta['kind']} "
        f"--seconds {meta['seconds']:g} --write"
    )


def _core(profile: dict[str, Any]) -> str:
    share = profile.get("core_share")
    return "" if share is None else f" ({share:.0%} of its core)"


def _contention(profile: dict[str, Any]) -> list[str]:
    """A warning when other processes shared the gateway's core: time-sliced, its caches go
    cold, and its CPU per request grows."""
    others = profile.get("others_on_core")
    if others is None or others < 0.1:
        return []
    return [
        f"Other processes used {others:.0%} of the gateway's core during the profiled run: "
        "the machine was shared, and the figures above are inflated by it.",
        "",
    ]


def render_markdown(doc: dict[str, Any]) -> str:
    """The breakdown as the docs' performance page shows it (also printed by the tool)."""
    meta, profile, counters = doc["meta"], doc["profile"], doc["counters"]
    started = dt.datetime.fromisoformat(meta["started_at"]).astimezone(dt.UTC)
    lines = [
        f"Run on {started:%Y-%m-%d} at {started:%H:%M} UTC, commit `{meta['commit']}`, "
        f"{meta['store']} store, {meta['kind'].upper()} at c={meta['connections']}, on "
        f"{meta['cpu']}; load average before the run {meta['load_before']}, after "
        f"{meta['load_after']} (the machine is shared: figures move by 10-20% between runs).",
        "",
        "```sh",
        command_line(meta),
        "```",
        "",
        "### By the profiler",
        "",
        f"py-spy sampled the gateway at {meta['rate']} Hz for {profile['seconds']:g} s "
        f"({profile['samples']:,} samples with the gateway running) while it served "
        f"{profile['requests']:,} requests ({profile['rps']:,.0f} req/s), using "
        f"{profile['cpu_s']:.2f} s of CPU{_core(profile)}: "
        f"**{profile['cpu_us']:.0f} µs per request** "
        f"({profile['unprofiled_cpu_us']:.0f} µs in the same run's span without the "
        "profiler). Each stage's share of the samples times that is its CPU per request.",
        "",
        *_contention(profile),
        "| stage | share of samples | µs per request |",
        "|---|---|---|",
    ]
    for row in profile["stages"]:
        lines.append(f"| {row['stage']} | {row['share']:.1%} | {row['us']:.0f} |")
    lines.append(f"| **total** | 100% | **{profile['cpu_us']:.0f}** |")
    if profile["other"]:
        lines += ["", "The other samples, by module:", ""]
        lines += ["| module | share of samples | µs per request |", "|---|---|---|"]
        for row in profile["other"]:
            lines.append(f"| `{row['module']}` | {row['share']:.1%} | {row['us']:.0f} |")
    lines += [
        "",
        "### By per-stage counters",
        "",
        "Each stage's own code called in a loop in one process, on the same checkout "
        f"({meta['counters_store']} store): CPU time (`time.process_time`) per call, the "
        "least of 5 repeats. No server, no sockets and no other request between the calls, "
        "so these are floors: the profiler's figures add the caches and the loop's work "
        "a real request meets.",
        "",
        "| stage | what one call does | µs per call |",
        "|---|---|---|",
    ]
    for row in counters:
        figure = f"{row['us']:.1f}" if row.get("us") is not None else f"n/a ({row['error']})"
        lines.append(f"| {row['stage']} | {row['what']} | {figure} |")
    return "\n".join(lines)
