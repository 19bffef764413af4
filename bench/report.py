"""Tables from a results document: terminal text, markdown, and the derived figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.capacity import BUSY_ENOUGH, shape

Results = dict[str, Any]
KINDS = ("json", "sse")


def _targets(results: Results) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = results["targets"]
    return targets


def _target(results: Results, name: str) -> dict[str, Any] | None:
    for target in _targets(results):
        if target["name"] == name:
            return target
    return None


def run_at(target: dict[str, Any] | None, kind: str, connections: int) -> dict[str, Any] | None:
    if target is None or target["status"] != "ok":
        return None
    kind_data = target["kinds"].get(kind)
    if not kind_data:
        return None
    for run in kind_data["sweep"]:
        if run["connections"] == connections:
            found: dict[str, Any] = run
            return found
    return None


def derive(results: Results) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per target and kind: req/s at the throughput concurrency, overhead, ratios."""
    top = results["meta"]["throughput_concurrency"]
    direct = _target(results, "direct")
    litellm = _target(results, "litellm")
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for target in _targets(results):
        per_kind: dict[str, dict[str, float | None]] = {}
        for kind in KINDS:
            run = run_at(target, kind, top)
            single = run_at(target, kind, 1)
            direct_run = run_at(direct, kind, top)
            direct_single = run_at(direct, kind, 1)
            litellm_run = run_at(litellm, kind, top)
            rps = run["rps"] if run else None
            per_kind[kind] = {
                "rps": rps,
                "overhead_p50_ms": (
                    single["p50_ms"] - direct_single["p50_ms"] if single and direct_single else None
                ),
                "vs_direct": rps / direct_run["rps"] if rps and direct_run else None,
                "vs_litellm": rps / litellm_run["rps"] if rps and litellm_run else None,
            }
        out[target["name"]] = per_kind
    return out


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}x"


def _latencies(run: dict[str, Any] | None) -> str:
    if run is None:
        return "n/a"
    return f"{run['p50_ms']:.2f} / {run['p90_ms']:.2f} / {run['p99_ms']:.2f}"


def _errors(target: dict[str, Any]) -> str:
    if target["status"] != "ok":
        return "n/a"
    total = sum(kind["errors"] for kind in target["kinds"].values())
    failed_checks = sum(1 for kind in target["kinds"].values() if kind["check"])
    return str(total) + (f" (+{failed_checks} failed check)" if failed_checks else "")


def _rss(target: dict[str, Any]) -> str:
    rss = target.get("rss_bytes")
    return "n/a" if not rss else f"{rss / 2**20:.0f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def main_table(results: Results) -> list[str]:
    top = results["meta"]["throughput_concurrency"]
    derived = derive(results)
    header = [
        "",
        f"JSON req/s (c={top})",
        f"SSE req/s (c={top})",
        f"JSON p50 / p90 / p99 ms (c={top})",
        f"SSE p50 / p90 / p99 ms (c={top})",
        "overhead p50 c=1 JSON / SSE ms",
        "RSS MiB",
        "errors",
    ]
    rows: list[list[str]] = []
    for target in _targets(results):
        name = target["name"]
        figures = derived[name]
        overhead = (
            "baseline"
            if name == "direct"
            else f"{_num(figures['json']['overhead_p50_ms'], '.3f')} / "
            f"{_num(figures['sse']['overhead_p50_ms'], '.3f')}"
        )
        rows.append(
            [
                target["label"],
                _num(figures["json"]["rps"], ",.0f"),
                _num(figures["sse"]["rps"], ",.0f"),
                _latencies(run_at(target, "json", top)),
                _latencies(run_at(target, "sse", top)),
                overhead,
                _rss(target) if name != "direct" else "-",
                _errors(target),
            ]
        )
    return _table(header, rows)


def cache_table(results: Results) -> list[str]:
    """The response cache: a hit (the same body again, no upstream call) against a miss (a
    new body every request: lookup, upstream call, store) on each gateway row."""
    top = results["meta"]["throughput_concurrency"]
    header = [
        "",
        f"miss req/s (c={top})",
        f"hit req/s (c={top})",
        "hit / miss",
        "miss p50 c=1 ms",
        "hit p50 c=1 ms",
        f"hit p50 / p99 ms (c={top})",
    ]
    rows: list[list[str]] = []
    for target in _targets(results):
        if "hit" not in target["kinds"] and "miss" not in target["kinds"]:
            continue
        hit, miss = run_at(target, "hit", top), run_at(target, "miss", top)
        hit_one, miss_one = run_at(target, "hit", 1), run_at(target, "miss", 1)
        ratio = hit["rps"] / miss["rps"] if hit and miss and miss["rps"] else None
        rows.append(
            [
                target["label"],
                _num(miss["rps"] if miss else None, ",.0f"),
                _num(hit["rps"] if hit else None, ",.0f"),
                _times(ratio),
                _num(miss_one["p50_ms"] if miss_one else None, ".3f"),
                _num(hit_one["p50_ms"] if hit_one else None, ".3f"),
                f"{hit['p50_ms']:.3f} / {hit['p99_ms']:.3f}" if hit else "n/a",
            ]
        )
    return [
        "Response cache (JSON, x-best-cache-ttl; the same nginx upstream; a miss is also a "
        "lookup and a store):",
        "",
        *_table(header, rows),
    ]


def ratio_table(results: Results) -> list[str]:
    derived = derive(results)
    header = ["", "JSON vs direct", "SSE vs direct", "JSON vs LiteLLM", "SSE vs LiteLLM"]
    rows: list[list[str]] = []
    for target in _targets(results):
        figures = derived[target["name"]]
        if target["name"] == "direct":
            continue
        rows.append(
            [
                target["label"],
                _num(figures["json"]["vs_direct"], ".1%"),
                _num(figures["sse"]["vs_direct"], ".1%"),
                _times(figures["json"]["vs_litellm"]),
                _times(figures["sse"]["vs_litellm"]),
            ]
        )
    return _table(header, rows)


TRACED = "-traced"  # a target measured again with tracing on: "<name>-traced"


def tracing_table(results: Results) -> list[str]:
    """Each traced gateway's req/s as a share of the same gateway untraced, in the same run."""
    derived = derive(results)
    names = {target["name"]: target for target in _targets(results)}
    rows: list[list[str]] = []
    for name, target in names.items():
        if not name.endswith(TRACED) or name.removesuffix(TRACED) not in derived:
            continue
        untraced = derived[name.removesuffix(TRACED)]
        cells = []
        for kind in KINDS:
            on, off = derived[name][kind]["rps"], untraced[kind]["rps"]
            cells.append(_num(on / off if on and off else None, ".1%"))
        rows.append([target["label"], *cells])
    if not rows:
        return []
    return _table(["tracing on (every request sampled) vs off", "JSON req/s", "SSE req/s"], rows)


def messages_vs_chat(results: Results) -> list[str]:
    """The Messages API row against chat's, both on the embedded store, in the same run."""
    derived = derive(results)
    messages, chat = derived.get("gateway-messages"), derived.get("gateway-embedded")
    if messages is None or chat is None:
        return []
    shares = []
    for kind in KINDS:
        ours, theirs = messages[kind]["rps"], chat[kind]["rps"]
        shares.append(f"{kind.upper()} {_num(ours / theirs if ours and theirs else None, '.1%')}")
    return [f"Messages API throughput as a share of chat's (same run): {', '.join(shares)}"]


def baseline_table(results: Results) -> list[str]:
    """This checkout's gateway against the baseline's, row by row, in the same run."""
    derived = derive(results)
    rows: list[list[str]] = []
    labels = {target["name"]: target["label"] for target in _targets(results)}
    for store in ("embedded", "redis"):
        ours, theirs = derived.get(f"gateway-{store}"), derived.get(f"baseline-{store}")
        if ours is None or theirs is None:
            continue
        cells = []
        for kind in KINDS:
            now, then = ours[kind]["rps"], theirs[kind]["rps"]
            cells.append(_times(now / then if now and then else None))
        for kind in KINDS:
            now, then = ours[kind]["overhead_p50_ms"], theirs[kind]["overhead_p50_ms"]
            cells.append(f"{_num(now, '.3f')} / {_num(then, '.3f')}")
        rows.append([f"{labels[f'gateway-{store}']} vs {labels[f'baseline-{store}']}", *cells])
    if not rows:
        return []
    header = [
        "same run",
        "JSON req/s ratio (c=32)",
        "SSE req/s ratio (c=32)",
        "JSON added p50 c=1 ms, now / then",
        "SSE added p50 c=1 ms, now / then",
    ]
    return _table(header, rows)


def sweep_table(results: Results) -> list[str]:
    concurrencies: list[int] = results["meta"]["concurrencies"]
    header = ["", "kind", *[f"c={c} p50 ms (req/s)" for c in concurrencies]]
    rows: list[list[str]] = []
    for target in _targets(results):
        for kind in results["meta"]["kinds"]:
            cells = []
            for connections in concurrencies:
                run = run_at(target, kind, connections)
                cells.append("n/a" if run is None else f"{run['p50_ms']:.2f} ({run['rps']:,.0f})")
            rows.append([target["label"], kind.upper(), *cells])
    return _table(header, rows)


def jwt_ratio(results: Results) -> dict[str, float | None]:
    """Per kind: the JWT identity row's req/s over the static-token row's (same store)."""
    derived = derive(results)
    jwt_row, static_row = derived.get("gateway-jwt"), derived.get("gateway-embedded")
    out: dict[str, float | None] = {}
    for kind in KINDS:
        jwt_rps = jwt_row[kind]["rps"] if jwt_row else None
        static_rps = static_row[kind]["rps"] if static_row else None
        out[kind] = jwt_rps / static_rps if jwt_rps and static_rps else None
    return out


def jwt_lines(results: Results) -> list[str]:
    """The JWT row against the static-token row, as a line (none when not measured)."""
    ratio = jwt_ratio(results)
    if not any(value is not None for value in ratio.values()):
        return []
    shares = ", ".join(f"{kind.upper()} {_num(value, '.1%')}" for kind, value in ratio.items())
    return [f"JWT identity vs static token (embedded store), req/s: {shares}"]


def notes(results: Results) -> list[str]:
    """The JWT row against the static-token row; skipped or failed rows, failed checks,
    crashes and first wrong answers."""
    out: list[str] = [f"- {line}" for line in jwt_lines(results)]
    derived = derive(results)
    for target in _targets(results):
        cached = target.get("rss_cache_bytes")
        if cached:
            out.append(
                f"- {target['label']}: RSS {cached / 2**20:.0f} MiB after the response cache's "
                "rows too (an embedded store keeps the cached answers in the process, up to "
                "`CACHE_MAX_BYTES`)."
            )
        for kind in KINDS:
            share = derived[target["name"]][kind]["vs_direct"]
            if target["name"] != "direct" and share is not None and share > 0.5:
                out.append(
                    f"- {target['label']} {kind.upper()}: {share:.0%} of the direct upstream's "
                    "req/s: the upstream or wrk may be limiting this figure."
                )
        for kind, data in target["kinds"].items():
            for run in data["sweep"]:
                cpu = run.get("cpu") or {}
                if "proc_cpu" not in cpu:
                    continue  # the direct row: nothing of ours runs on the measured core
                foreign = cpu["core_busy"] - cpu["proc_cpu"]
                if foreign > 0.1:
                    out.append(
                        f"- {target['label']} {kind.upper()} c={run['connections']}: other "
                        f"processes used {foreign:.0%} of the measured core during the run."
                    )
        if target["status"] != "ok":
            message = (target["message"] or "").strip().splitlines()
            out.append(f"- {target['label']}: {target['status']}: {message[0] if message else ''}")
        for kind, data in target["kinds"].items():
            if data["check"]:
                out.append(f"- {target['label']} {kind.upper()}: check failed: {data['check']}")
            validation = data.get("validation") or {}
            if validation.get("first_bad"):
                out.append(
                    f"- {target['label']} {kind.upper()}: first wrong answer under load: "
                    f"`{validation['first_bad'][:200]}`"
                )
    return out


def _failed(label: str, failure: str, columns: int) -> list[str]:
    """A table row for a point that could not be measured."""
    return [label, f"failed: {failure[:120]}", *["n/a"] * (columns - 2)]


def _labelled(label: str, commit: str, with_commit: bool) -> str:
    return f"{label} (`{commit}`)" if with_commit else label


def store_cost_table(rows: list[dict[str, Any]], with_commit: bool = True) -> list[str]:
    """Per gateway request, counted at Redis (bench/storecost.py says how)."""
    header = [
        "Redis store, token",
        "req/s (c=32)",
        "commands run / sent",
        "script calls",
        "round trips",
        "Redis CPU us (INFO cpu) raw / less idle",
        "in commands us (commandstats)",
        "in plain commands",
        "fleet req/s per Redis core",
        "errors",
    ]
    lines: list[list[str]] = []
    for row in rows:
        label = _labelled(row["label"], row["commit"], with_commit)
        if row.get("failure"):
            lines.append(_failed(label, row["failure"], len(header)))
            continue
        sent = row["commands_sent"]
        fleet = row["fleet_rps_per_core"]
        lines.append(
            [
                label,
                f"{row['rps']:,.0f}",
                f"{row['commands_run']:.2f} / {'n/a' if sent is None else f'{sent:.2f}'}",
                f"{row['script_calls']:.2f}",
                f"{row['round_trips']:.2f}",
                f"{row['cpu_us']:.1f} / {row.get('cpu_us_net', row['cpu_us']):.1f}",
                f"{row['command_us']:.1f}",
                "n/a" if not row.get("plain_commands") else f"{row['plain_commands']:.1f}",
                "no store call" if fleet is None else f"{fleet:,.0f}",
                str(row["errors"]),
            ]
        )
    return _table(header, lines)


def _by_name(counts: dict[str, float]) -> str:
    shown = [f"{name} {value:.2f}" for name, value in counts.items() if value >= 0.005]
    return ", ".join(shown) or "none"


def store_cost_details(rows: list[dict[str, Any]], with_commit: bool = True) -> list[str]:
    """Commands per request by name (MONITOR run) and how script calls spread over masters."""
    out: list[str] = []
    for row in rows:
        if row.get("failure"):
            continue
        line = (
            f"- {_labelled(row['label'], row['commit'], with_commit)}: "
            f"sent {_by_name(row['sent_by_name'])}; "
            f"in scripts {_by_name(row['in_scripts_by_name'])}"
        )
        if "idle_cpu_us_per_s" in row:
            line += (
                f"; idle (no requests): {row['idle_commands_per_s']:.1f} commands/s, Redis CPU "
                f"{row['idle_cpu_us_per_s'] / 1e4:.2f}% of a core"
            )
        if row.get("plain_us"):
            line += f"; one plain pipelined HINCRBY: {row['plain_us']:.2f} us of Redis CPU"
        if row.get("connections_per_s"):
            line += f"; {row['connections_per_s']:.1f} new connections/s under load"
        if len(row["script_share"]) > 1:
            shares = " / ".join(f"{share:.0%}" for share in row["script_share"])
            line += f"; script calls per master {shares}"
        out.append(line + ".")
    return out


def store_cost_markdown(rows: list[dict[str, Any]], with_commit: bool = True) -> list[str]:
    return [
        "Store cost per request (JSON, c=32, 8 tokens in turn; counted at Redis, summed over "
        "masters):",
        "",
        *store_cost_table(rows, with_commit),
        "",
        "Commands per request by name (from a separate run under MONITOR):",
        "",
        *store_cost_details(rows, with_commit),
    ]


def capacity_markdown(rows: list[dict[str, Any]], with_commit: bool = True) -> list[str]:
    """Redis at saturation, driven through the store client (bench/capacity.py says how)."""
    if not rows:
        return []
    header = [
        "Redis store, tokens",
        "admissions/s",
        "Redis core busy",
        "Redis CPU us per admission",
        "fleet req/s per Redis core",
        "admissions per script call / per windows read",
        "errors",
    ]
    lines: list[list[str]] = []
    for row in rows:
        what = shape(row["tokens"], row.get("alone", False))
        label = _labelled(f"{row['topology']}, {what}", row["commit"], with_commit)
        if row.get("failure"):
            lines.append(_failed(label, row["failure"], len(header)))
            continue
        fleet = row["fleet_rps_per_core"]
        lines.append(
            [
                label,
                f"{row['admissions_per_s']:,.0f}",
                f"{row['busy']:.0%}",
                f"{row['cpu_us']:.1f}",
                "n/a" if fleet is None else f"{fleet:,.0f}",
                f"{row['per_script_call']:.1f} / {row['per_windows_read']:.1f}",
                str(row["errors"]),
            ]
        )
    cold = [
        "",
        f"Redis was under {BUSY_ENOUGH:.0%} busy in some rows: the driver's Python, not Redis, "
        "was the bottleneck there, and a Redis that is not kept busy runs cold and costs more "
        "per request. `uv run python -m bench.script_replay` keeps it busy on such a machine.",
    ]
    driver_bound = any(row.get("driver_bound") for row in rows if not row.get("failure"))
    return [
        "Redis at saturation (the gateway's store client and quota.lua driven directly: 4 "
        "replicas x 32 admissions in flight in one process on core 0, Redis alone on core 1; "
        "settlements ride with their token's next admission on a replica, or travel alone when it "
        "does not come within their wait, as in the gateway):",
        "",
        *_table(header, lines),
        *(cold if driver_bound else []),
    ]


def render_markdown(results: Results) -> str:
    meta = results["meta"]
    lines = [
        f"Run {meta['started_at']} on commit `{meta['commit']}` ({meta['mode']}, "
        f"{meta['duration_s']:g} s per point; {meta['cpu']}; {meta['pinning']}).",
        "",
        *main_table(results),
        "",
        *ratio_table(results),
        *messages_vs_chat(results),
        "",
        *tracing_table(results),
        "",
        *baseline_table(results),
        "",
        "Latency sweep (p50 ms, with req/s):",
        "",
        *sweep_table(results),
    ]
    if any(kind in meta["kinds"] for kind in ("hit", "miss")):
        lines += ["", *cache_table(results)]
    if results.get("store_cost"):
        lines += ["", *store_cost_markdown(results["store_cost"])]
    if results.get("capacity"):
        lines += ["", *capacity_markdown(results["capacity"])]
    extra = notes(results)
    if extra:
        lines += ["", "Notes:", "", *extra]
    return "\n".join(lines) + "\n"


def write_outputs(results: Results, results_dir: Path) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / "latest.json"
    md_path = results_dir / "latest.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(render_markdown(results))
    return json_path, md_path


def write_store_cost(cost: Results, results_dir: Path) -> Path:
    """``store-cost-<commit>.json`` and ``.md`` of a ``--store-cost`` run; the .md path."""
    meta = cost["meta"]
    header = (
        f"Store cost {meta['started_at']} on commit `{meta['commit']}` ({meta['duration_s']:g} s "
        f"per point; {meta['cpu']}; {meta['pinning']}; load average before {meta['loadavg']})."
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"store-cost-{str(meta['commit']).split('+')[0]}"
    (results_dir / f"{stem}.json").write_text(json.dumps(cost, indent=2) + "\n")
    md_path = results_dir / f"{stem}.md"
    body = "\n".join(
        [*store_cost_markdown(cost["store_cost"]), "", *capacity_markdown(cost.get("capacity", []))]
    )
    md_path.write_text(f"{header}\n\n{body}\n")
    return md_path
