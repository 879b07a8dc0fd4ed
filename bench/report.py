"""The benchmark's figures: summary statistics, targets, the table, JSON and the chart."""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sendonce.bench.intents import RunResult
    from sendonce.bench.memory import RestoreFigures

# The targets (measured and reported, never asserted).
TARGET_NULL_RATE = 5_000.0
TARGET_CEILING_RATIO = 0.3
TARGET_NAIVE_RATIO = 10.0
TARGET_GRAPH_150_RATE = 1_000.0
TARGET_DEDUPE_P99_MS = 50.0
TARGET_DEDUPE_RATE = 1_000.0
TARGET_RSS_MB = 400.0
TARGET_RSS_KEYS = 10_000_000
TARGET_RESTORE_RATE = 50_000.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _latency(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values) if values else None,
    }


def run_json(run: RunResult) -> dict[str, Any]:
    """One run as JSON (rates and percentiles, not every latency)."""
    doc: dict[str, Any] = {"config": run.config, "round": run.round + 1, "error": run.error}
    for name, phase in (("burst", run.burst), ("paced", run.paced)):
        if phase is None:
            doc[name] = None
            continue
        doc[name] = {
            "intents": phase.intents,
            "seconds": phase.seconds,
            "intents_per_s": phase.rate,
            "not_sent": phase.not_sent,
            **_latency(phase.latencies_ms),
        }
    if doc["paced"] is not None:
        doc["paced"]["offered_per_s"] = run.paced_rate
    if run.provider_called_ms:
        doc["produced_to_provider_called"] = _latency(run.provider_called_ms)
        doc["decided_to_provider_called"] = _latency(run.decided_to_called_ms)
    doc["rss_mb"] = run.rss_mb
    doc["burst_cores"] = run.burst_cores
    return doc


def _summary(config: str, runs: Sequence[RunResult]) -> dict[str, Any]:
    mine = [r for r in runs if r.config == config]
    rates = [r.burst.rate for r in mine if r.burst is not None]
    paced = [x for r in mine if r.paced is not None for x in r.paced.latencies_ms]
    burst_lat = [x for r in mine if r.burst is not None for x in r.burst.latencies_ms]
    offered = [r.paced_rate for r in mine if r.paced_rate is not None]
    summary: dict[str, Any] = {
        "rounds_ok": len(rates),
        "rounds_failed": sum(1 for r in mine if r.error),
        "intents_per_s": {
            "median": _median(rates),
            "min": min(rates) if rates else None,
            "max": max(rates) if rates else None,
            "per_round": rates,
        },
        # Latency at a steady offered rate (the paced phase), pooled over rounds.
        "latency": {**_latency(paced), "offered_per_s": min(offered) if offered else None},
        # Latency in the burst: mostly the time an intent waited behind the backlog.
        "burst_latency": _latency(burst_lat),
        "not_sent": sum(p.not_sent for r in mine for p in (r.burst, r.paced) if p is not None),
        "rss_mb": _median([r.rss_mb for r in mine if r.rss_mb is not None]),
        # Which process was busy: a worker near 1.0 is bound by its one Python thread.
        "burst_cores": {
            name: _median([r.burst_cores[name] for r in mine if name in r.burst_cores])
            for name in sorted({n for r in mine for n in r.burst_cores})
        },
        "intents_per_core_s": _median(
            [x for x in (per_core_second(r) for r in mine) if x is not None]
        ),
    }
    called = [x for r in mine for x in r.provider_called_ms]
    if called:
        summary["produced_to_provider_called"] = _latency(called)
        summary["decided_to_provider_called"] = _latency(
            [x for r in mine for x in r.decided_to_called_ms]
        )
    return summary


def _burst_rate(run: RunResult) -> float | None:
    return run.burst.rate if run.burst is not None else None


def _ratios(
    runs: Sequence[RunResult],
    config: str,
    base: str,
    figure: Callable[[RunResult], float | None] = _burst_rate,
) -> float | None:
    """Median over rounds of this round's figure / the base's figure in the same round."""
    rates: dict[tuple[str, int], float] = {}
    for r in runs:
        value = figure(r)
        if value is not None:
            rates[(r.config, r.round)] = value
    ratios = [
        rate / rates[(base, rnd)]
        for (name, rnd), rate in rates.items()
        if name == config and rates.get((base, rnd))
    ]
    return _median(ratios)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    # Only the benchmark's own options: `sendonce dev bench` adds its dispatch
    # function and command names to the namespace.
    plain = (int, float, str, bool, list, type(None))
    return {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in sorted(vars(args).items())
        if isinstance(v, (Path, *plain)) and k not in ("command", "dev_command")
    }


def build(
    *,
    args: argparse.Namespace,
    command: str,
    configs: Sequence[str],
    runs: Sequence[RunResult],
    memory: Sequence[RestoreFigures],
    memory_error: str | None,
    seconds: float,
) -> dict[str, Any]:
    """The whole report as one JSON document."""
    summaries: dict[str, Any] = {}
    for config in configs:
        summary = _summary(config, runs)
        summary["x_ceiling"] = _ratios(runs, config, "ceiling")
        summary["x_naive"] = _ratios(runs, config, "naive")
        if f"{config}@baseline" in configs:
            summary["x_baseline"] = _ratios(runs, config, f"{config}@baseline")
            summary["x_baseline_per_core"] = _ratios(
                runs, config, f"{config}@baseline", per_core_second
            )
        summaries[config] = summary
    doc: dict[str, Any] = {
        "command": command,
        "options": _options(args),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "seconds": seconds,
        "configs": summaries,
        "runs": [run_json(r) for r in runs],
        "memory": {"error": memory_error, "sizes": [m.to_json() for m in memory]},
    }
    doc["targets"] = targets(doc)
    return doc


def _target(
    name: str, value: float | None, goal: float, *, at_most: bool = False, note: str = ""
) -> dict[str, Any]:
    if value is None:
        status = "not measured"
    elif at_most:
        status = "met" if value <= goal else "missed"
    else:
        status = "met" if value >= goal else "missed"
    return {"target": name, "value": value, "goal": goal, "status": status, "note": note}


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the measured value and met / missed / not measured."""
    configs = doc["configs"]
    null = configs.get("sendonce-null", {})
    graph = configs.get("sendonce-graph-150ms", {})
    null_rate = null.get("intents_per_s", {}).get("median")
    called = null.get("produced_to_provider_called", {})
    decided = null.get("decided_to_provider_called", {})
    offered = null.get("latency", {}).get("offered_per_s")
    dedupe_note = (
        "intent produced -> provider called (an upper bound of consumed -> called); "
        f"decided -> called p99 {_fmt(decided.get('p99_ms'), 1)} ms"
    )
    if offered is not None and offered < TARGET_DEDUPE_RATE:
        dedupe_note += f"; measured at {offered:,.0f}/s, below 1,000/s"
    sizes = [m for m in doc["memory"]["sizes"] if m["keys"] >= TARGET_RSS_KEYS]
    largest = max(sizes, key=lambda m: m["keys"]) if sizes else None
    mem_note = ""
    if largest is not None:
        mem_note = f"{largest['keys']:,} keys; peak RSS {_fmt(largest['peak_rss_mb'], 0)} MB"
    return [
        _target("sendonce null provider intents/s per worker", null_rate, TARGET_NULL_RATE),
        _target("sendonce null / ceiling", null.get("x_ceiling"), TARGET_CEILING_RATIO),
        _target("sendonce null / naive baseline", null.get("x_naive"), TARGET_NAIVE_RATIO),
        _target(
            "sendonce Graph 150 ms intents/s per worker",
            graph.get("intents_per_s", {}).get("median"),
            TARGET_GRAPH_150_RATE,
        ),
        _target(
            "dedupe latency p99 ms at 1,000 intents/s",
            called.get("p99_ms"),
            TARGET_DEDUPE_P99_MS,
            at_most=True,
            note=dedupe_note,
        ),
        _target(
            "worker RSS MB with a 10M-key ledger",
            largest["rss_mb"] if largest else None,
            TARGET_RSS_MB,
            at_most=True,
            note=mem_note,
        ),
        _target(
            "restore keys/s (10M-key ledger)",
            largest["restore_keys_per_s"] if largest else None,
            TARGET_RESTORE_RATE,
            note=mem_note,
        ),
    ]


# --------------------------------------------------------------------- text


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def run_line(run: RunResult) -> str:
    """A one-line progress report of a run."""
    if run.error:
        return f"FAILED: {run.error}"
    parts = []
    if run.burst is not None:
        parts.append(f"burst {run.burst.rate:,.0f} intents/s")
    if run.paced is not None:
        latencies = run.paced.latencies_ms
        parts.append(
            f"paced {run.paced_rate or 0:,.0f}/s p50 {_fmt(percentile(latencies, 50), 1)}"
            f" p99 {_fmt(percentile(latencies, 99), 1)} ms"
        )
    if run.rss_mb is not None:
        parts.append(f"RSS {run.rss_mb:,.0f} MB")
    if run.burst_cores:
        parts.append(_cores(run.burst_cores))
    per_core = per_core_second(run)
    if per_core is not None:
        parts.append(f"{per_core:,.0f} intents per process core-second")
    return ", ".join(parts)


def per_core_second(run: RunResult) -> float | None:
    """Burst intents per CPU-second of the measured process (worker, passthrough or naive).

    Throughput divided by the cores the process used: far less sensitive than the
    rate itself to whatever else the machine runs, so it compares code versions
    measured at different times.
    """
    if run.burst is None:
        return None
    cores = run.burst_cores.get("worker", run.burst_cores.get(run.config))
    return run.burst.rate / cores if cores else None


def _cores(cores: Mapping[str, float | None]) -> str:
    return "cores " + " ".join(f"{name} {_fmt(value, 2)}" for name, value in cores.items())


def memory_line(figure: RestoreFigures) -> str:
    """A one-line progress report of a restore."""
    return (
        f"{figure.keys:,} keys: restore {_fmt(figure.restore_s, 1)} s "
        f"({_fmt(figure.restore_keys_per_s)} keys/s), ready after "
        f"{figure.start_to_ready_s:,.1f} s, RSS {_fmt(figure.rss_mb)} MB "
        f"(peak {_fmt(figure.peak_rss_mb)} MB)"
    )


def render(doc: dict[str, Any]) -> str:
    """The printed report: throughput/latency table, memory table, targets, command."""
    lines: list[str] = []
    header = (
        f"{'configuration':<22}{'intents/s':>10}{'(min-max)':>18}{'x ceiling':>11}"
        f"{'x naive':>9}{'paced/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'not SENT':>10}"
    )
    lines += [header, "-" * len(header)]
    for name, s in doc["configs"].items():
        rate = s["intents_per_s"]
        span = (
            f"({_fmt(rate['min'])}-{_fmt(rate['max'])})" if rate["min"] is not None else "(failed)"
        )
        lines.append(
            f"{name:<22}{_fmt(rate['median']):>10}{span:>18}{_fmt(s['x_ceiling'], 2):>11}"
            f"{_fmt(s['x_naive'], 1):>9}{_fmt(s['latency']['offered_per_s']):>9}"
            f"{_fmt(s['latency']['p50_ms'], 1):>8}{_fmt(s['latency']['p99_ms'], 1):>8}"
            f"{s['not_sent']:>10}"
        )
    compared = [(n, s) for n, s in doc["configs"].items() if s.get("x_baseline") is not None]
    if compared:
        lines.append(
            "\nagainst the baseline checkout (median over rounds of the same round's ratio):"
        )
        for name, s in compared:
            lines.append(
                f"  {name:<22}x{_fmt(s['x_baseline'], 2)} intents/s, "
                f"x{_fmt(s.get('x_baseline_per_core'), 2)} intents per worker core-second"
            )
    lines.append("\nCPU during the burst (cores; median over rounds):")
    for name, s in doc["configs"].items():
        per_core = s.get("intents_per_core_s")
        lines.append(
            f"  {name:<22}{_cores(s['burst_cores'])}"
            + (f"; {per_core:,.0f} intents per process core-second" if per_core else "")
        )
    null = doc["configs"].get("sendonce-null", {})
    if "produced_to_provider_called" in null:
        called = null["produced_to_provider_called"]
        decided = null["decided_to_provider_called"]
        lines.append(
            "\nsendonce-null, paced: intent produced -> provider called "
            f"p50 {_fmt(called['p50_ms'], 1)} / p99 {_fmt(called['p99_ms'], 1)} ms; "
            f"of which decided -> called (PENDING acked, then the call) "
            f"p50 {_fmt(decided['p50_ms'], 1)} / p99 {_fmt(decided['p99_ms'], 1)} ms"
        )
    sizes = doc["memory"]["sizes"]
    if sizes or doc["memory"]["error"]:
        mem_header = (
            f"\n{'ledger keys':>12}{'fill s':>9}{'restore s':>11}{'keys/s':>10}"
            f"{'start->ready s':>16}{'RSS MB':>9}{'peak RSS MB':>13}"
        )
        lines += [mem_header, "-" * (len(mem_header) - 1)]
        for m in sizes:
            lines.append(
                f"{m['keys']:>12,}{m['fill_seconds']:>9.1f}{_fmt(m['restore_s'], 1):>11}"
                f"{_fmt(m['restore_keys_per_s']):>10}{m['start_to_ready_s']:>16.1f}"
                f"{_fmt(m['rss_mb']):>9}{_fmt(m['peak_rss_mb']):>13}"
            )
        if doc["memory"]["error"]:
            lines.append(f"memory run failed: {doc['memory']['error']}")
    failed = [r for r in doc["runs"] if r["error"]]
    for r in failed:
        lines.append(f"FAILED {r['config']} round {r['round']}: {r['error']}")
    lines.append("\ntargets (measured, not asserted):")
    for t in doc["targets"]:
        op = "<=" if t["target"].startswith(("dedupe", "worker RSS")) else ">="
        value = _fmt(t["value"], 2 if t["goal"] < 100 else 0)
        note = f"  ({t['note']})" if t["note"] else ""
        lines.append(f"  {t['status']:<13}{t['target']}: {value} {op} {t['goal']:,g}{note}")
    lines.append(f"\nmachine: {doc['machine']['cpus']} CPUs, {doc['machine']['platform']}")
    lines.append(f"took {doc['seconds'] / 60:.1f} min; JSON and chart in {doc['options']['out']}")
    lines.append(f"reproduce: {doc['command']}")
    return "\n".join(lines)


# --------------------------------------------------------------------- chart


def draw(doc: dict[str, Any], path: Path) -> None:
    """Throughput per configuration, latency percentiles and memory, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display; set before pyplot is imported
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _pos: f"{value:,.0f}")

    configs = doc["configs"]
    names = list(configs)
    # Short axis labels: the baseline's runs sit beside their configuration.
    labels = [n.replace("sendonce-", "").replace("@baseline", "\n(before)") for n in names]
    sizes = doc["memory"]["sizes"]
    panels = 3 if sizes else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 5.5))
    ax = axes[0]
    medians = [configs[n]["intents_per_s"]["median"] or 0 for n in names]
    ax.bar(range(len(names)), medians, color="#4c72b0")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    for i, n in enumerate(names):
        per_round = configs[n]["intents_per_s"]["per_round"]
        ax.scatter([i] * len(per_round), per_round, color="black", s=12, zorder=3)
        ax.annotate(f"{medians[i]:,.0f}", (i, medians[i]), ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plain)
    ax.set_ylabel("intents/s (burst; bar = median, dots = rounds)")
    ax.set_title("Throughput per worker")

    ax = axes[1]
    width = 0.27
    for j, (pct, color) in enumerate(
        (("p50_ms", "#55a868"), ("p90_ms", "#dd8452"), ("p99_ms", "#c44e52"))
    ):
        values = [configs[n]["latency"][pct] or 0 for n in names]
        ax.bar(
            [i + (j - 1) * width for i in range(len(names))],
            values,
            width,
            label=pct[:3],
            color=color,
        )
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(
        [
            f"{label} @{_fmt(configs[n]['latency']['offered_per_s'])}/s"
            for label, n in zip(labels, names, strict=True)
        ],
        rotation=45,
        ha="right",
        fontsize=8,
    )
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plain)
    ax.set_ylabel("ms, intent produced -> result visible (paced)")
    ax.set_title("Latency percentiles")
    ax.legend()

    if sizes:
        ax = axes[2]
        keys = [f"{m['keys'] / 1e6:g}M keys" for m in sizes]
        xs = range(len(sizes))
        ax.bar([x - 0.2 for x in xs], [m["rss_mb"] or 0 for m in sizes], 0.4, label="RSS MB")
        ax.bar(
            [x + 0.2 for x in xs], [m["peak_rss_mb"] or 0 for m in sizes], 0.4, label="peak RSS MB"
        )
        ax.axhline(TARGET_RSS_MB, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(
            [
                f"{label}\nrestore {_fmt(m['restore_keys_per_s'])} keys/s"
                for label, m in zip(keys, sizes, strict=True)
            ]
        )
        ax.yaxis.set_major_formatter(plain)
        ax.set_ylabel("MB")
        ax.set_title("Worker memory after restore")
        ax.legend()
    command = textwrap.fill(doc["command"], width=60 * panels)
    fig.suptitle(f"sendonce benchmark ({doc['machine']['cpus']} CPUs): {command}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
