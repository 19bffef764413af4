"""Plots, run in a throwaway environment that has matplotlib.

``uv run --no-project --with matplotlib python -m bench.plot latency RESULTS.json OUT.png``
``uv run --no-project --with matplotlib python -m bench.plot soak SOAK.json OUT.png``

The benchmark calls this through :func:`render` so matplotlib never becomes a dependency of
the project.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STYLES = {
    "direct": ("#555555", "o"),
    "gateway-embedded": ("#1f77b4", "s"),
    "gateway-jwt": ("#9467bd", "v"),
    "gateway-redis": ("#2ca02c", "^"),
    "gateway-embedded-traced": ("#9467bd", "s"),
    "gateway-redis-traced": ("#8c564b", "^"),
    "litellm": ("#d62728", "D"),
}


def latency_plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    kinds: list[str] = results["meta"]["kinds"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 5.2), squeeze=False)
    for axis, kind in zip(axes[0], kinds, strict=True):
        for target in results["targets"]:
            if target["status"] != "ok" or kind not in target["kinds"]:
                continue
            sweep = target["kinds"][kind]["sweep"]
            if not sweep:
                continue
            color, marker = STYLES.get(target["name"], ("#9467bd", "x"))
            xs = [run["connections"] for run in sweep]
            axis.plot(
                xs,
                [run["p50_ms"] for run in sweep],
                marker=marker,
                color=color,
                label=f"{target['label']} p50",
            )
            axis.plot(
                xs,
                [run["p99_ms"] for run in sweep],
                linestyle=":",
                color=color,
                alpha=0.6,
                label=f"{target['label']} p99",
            )
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(results["meta"]["concurrencies"])
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_xlabel("concurrent connections")
        axis.set_ylabel("latency ms (log)")
        axis.set_title(f"{'streaming (SSE)' if kind == 'sse' else 'non-streaming (JSON)'}")
        axis.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    meta = results["meta"]
    fig.suptitle(
        f"Latency against concurrency (p50 solid, p99 dotted), {meta['duration_s']:g} s per "
        f"point, commit {meta['commit']}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(out, dpi=110)


def soak_plot(soak: dict[str, Any], out: Path) -> None:
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    samples = soak["samples"]
    xs = [0.0, *[s["elapsed_s"] for s in samples]]
    ys = [soak["idle_rss_bytes"] / 2**20, *[s["rss_bytes"] / 2**20 for s in samples]]
    fig, axis = plt.subplots(figsize=(7, 4))
    axis.plot(xs, ys, marker=".")
    axis.set_xlabel("seconds (0 = idle, before the load)")
    axis.set_ylabel("gateway RSS MiB")
    axis.set_ylim(0, max(ys) * 1.2)
    axis.set_title(
        f"Soak: {soak['requests']:,} requests ({soak['store']} store), "
        f"growth after warm-up {soak['growth_pct']:+.1f}%",
        fontsize=10,
    )
    axis.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def render(kind: str, data_path: Path, out: Path) -> str | None:
    """Run this module under ``uv run --with matplotlib``; return an error message or None."""
    argv = [
        "uv",
        "run",
        "--no-project",
        "--with",
        "matplotlib",
        "python",
        "-m",
        "bench.plot",
        kind,
        str(data_path),
        str(out),
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"plot failed: {exc!r}"
    if proc.returncode != 0:
        return f"plot failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in {"latency", "soak"}:
        print(__doc__)
        return 2
    data = json.loads(Path(argv[1]).read_text())
    if argv[0] == "latency":
        latency_plot(data, Path(argv[2]))
    else:
        soak_plot(data, Path(argv[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
