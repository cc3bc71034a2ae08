"""What ``bench/compare.py`` prints and writes: the table, the JSON document, the PNG plot."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from compare_scenarios import Measurement

#: ``results[scenario][system]`` is one measurement per round.
Results = dict[str, dict[str, list[Measurement]]]

PLATFORM = "platform"


def direction(metric: str) -> str:
    """Which way is better for ``metric``: rates up, times and memory down."""
    if "per_s" in metric or metric == "bulk_over_single":
        return "higher is better"
    if metric == "processes":
        return "a count"
    return "lower is better"


def machine() -> dict[str, Any]:
    """The machine the numbers were taken on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "loadavg": list(os.getloadavg())}


def checkout() -> dict[str, Any]:
    """Which platform code was measured: where ``platform_tasks`` was imported from (a
    snapshot put first on PYTHONPATH wins over the editable install), the checkout's commit,
    and whether its src/ had uncommitted changes (read-only git)."""
    import platform_tasks

    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        reply = subprocess.run(["git", *args], capture_output=True, text=True, check=False,
                               timeout=10, cwd=repo)
        return reply.stdout.strip()

    return {"platform_tasks_from": str(Path(platform_tasks.__file__).resolve().parent),
            "commit": git("rev-parse", "--short", "HEAD"),
            "src_uncommitted": bool(git("status", "--porcelain", "--", "src"))}


def versions(redis_server: Path) -> dict[str, str]:
    """Versions of everything measured."""
    found = {"python": platform.python_version()}
    for package in ("celery", "kombu", "redis", "dramatiq", "rq", "pillow"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "missing"
    reply = subprocess.run([str(redis_server), "--version"], capture_output=True, text=True,
                           check=False, timeout=10)
    found["redis-server"] = reply.stdout.strip()
    return found


def _finite(values: list[float | None]) -> list[float]:
    return [value for value in values
            if value is not None and not (isinstance(value, float) and math.isnan(value))]


def summarize(measurements: list[Measurement]) -> dict[str, dict[str, Any] | None]:
    """Per metric: the rounds' values, median, min and max; ``None`` where not applicable."""
    metrics: list[str] = []
    for measurement in measurements:
        metrics.extend(key for key in measurement if key not in metrics)
    summary: dict[str, dict[str, Any] | None] = {}
    for metric in metrics:
        values = [measurement.get(metric) for measurement in measurements]
        finite = _finite(values)
        if not finite:
            summary[metric] = None
            continue
        summary[metric] = {"values": values, "median": statistics.median(finite),
                           "min": min(finite), "max": max(finite)}
    return summary


def ratios(summaries: dict[str, dict[str, dict[str, Any] | None]]) -> dict[str, Any]:
    """Platform median / baseline median, per metric and baseline (``None``: n/a)."""
    mine = summaries.get(PLATFORM)
    if not mine:
        return {}
    found: dict[str, dict[str, float | None]] = {}
    for metric, own in mine.items():
        for system, summary in summaries.items():
            if system == PLATFORM:
                continue
            theirs = (summary or {}).get(metric)
            ratio = None
            if own and theirs and theirs["median"] and direction(metric) != "a count":
                ratio = own["median"] / theirs["median"]
            found.setdefault(metric, {})[system] = ratio
    return found


def document(results: Results, meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON the run writes: settings, machine, versions, summaries and ratios."""
    scenarios: dict[str, Any] = {}
    order = list(meta["settings"]["systems"])
    for scenario, by_system in results.items():
        summaries = {system: summarize(by_system[system]) for system in order
                     if system in by_system}
        scenarios[scenario] = {"systems": summaries, "ratios_platform_over": ratios(summaries)}
    return {**meta, "scenarios": scenarios}


def _number(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(doc: dict[str, Any]) -> str:
    """Medians, min/max and ratios, one block per scenario."""
    lines: list[str] = []
    for scenario, block in doc["scenarios"].items():
        lines.append(f"\n== {scenario} ==")
        lines.append(f"{'metric':<22} {'system':<12} {'median':>10} {'min':>10} {'max':>10} "
                     f"{'platform/this':>14}")
        metrics: list[str] = []
        for summary in block["systems"].values():
            metrics.extend(key for key in summary if key not in metrics)
        for metric in metrics:
            for system, summary in block["systems"].items():
                entry = summary.get(metric)
                ratio = block["ratios_platform_over"].get(metric, {}).get(system)
                shown = "" if system == PLATFORM else (
                    "n/a" if ratio is None else f"{ratio:.2f}x")
                if entry is None:
                    lines.append(f"{metric:<22} {system:<12} {'n/a':>10}")
                    continue
                lines.append(f"{metric:<22} {system:<12} {_number(entry['median']):>10} "
                             f"{_number(entry['min']):>10} {_number(entry['max']):>10} "
                             f"{shown:>14}")
            lines.append(f"{'':<22} ({direction(metric)})")
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    """The same numbers as :func:`table`, as Markdown tables for docs/benchmarks.md."""
    systems = _systems(doc)
    baselines = [system for system in systems if system != PLATFORM]
    head = ["metric", *systems, *(f"platform / {name}" for name in baselines)]
    lines: list[str] = []
    for scenario, block in doc["scenarios"].items():
        lines += [f"\n**{scenario}** (median, min-max)\n", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        metrics: list[str] = []
        for summary in block["systems"].values():
            metrics.extend(key for key in summary if key not in metrics)
        for metric in metrics:
            cells = [f"`{metric}` ({direction(metric)})"]
            for system in systems:
                entry = block["systems"].get(system, {}).get(metric)
                cells.append("-" if system not in block["systems"] else "n/a" if entry is None
                             else f"{_number(entry['median'])} ({_number(entry['min'])}-"
                                  f"{_number(entry['max'])})")
            for name in baselines:
                ratio = block["ratios_platform_over"].get(metric, {}).get(name)
                cells.append("n/a" if ratio is None else f"{ratio:.2f}x")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n")


def json_safe(value: Any) -> Any:
    """NaN (a drain too small to time) becomes ``null``: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return value


def _medians(doc: dict[str, Any], scenario: str, metric: str) -> dict[str, float]:
    block = doc["scenarios"].get(scenario, {}).get("systems", {})
    return {system: summary[metric]["median"] for system, summary in block.items()
            if summary.get(metric)}


def plot(doc: dict[str, Any], path: Path) -> None:
    """Throughput and latency vs load: drain/mix throughput, scaling with processes,
    latency at light and heavy load, and cost per task vs queue depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    _bars(axes[0][0], doc)
    _scaling(axes[0][1], doc)
    _latency(axes[1][0], doc)
    _depth(axes[1][1], doc)
    figure.suptitle(f"platform vs baselines ({doc['machine']['nproc']} cores, "
                    f"{doc['machine']['cpu_model']}), medians of {doc['settings']['rounds']} "
                    f"round(s)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _systems(doc: dict[str, Any]) -> list[str]:
    return list(doc["settings"]["systems"])


def _bars(axis: Any, doc: dict[str, Any]) -> None:
    systems = _systems(doc)
    width = 0.38
    for offset, (scenario, label) in enumerate((("drain", "no-op drain"), ("mix", "mix drain"))):
        medians = _medians(doc, scenario, "tasks_per_s")
        positions = [index + (offset - 0.5) * width for index in range(len(systems))]
        axis.bar(positions, [medians.get(system, 0) for system in systems], width, label=label)
    for container in axis.containers:
        axis.bar_label(container, fmt="%.0f", fontsize="x-small")
    axis.set_xticks(range(len(systems)), systems)
    axis.set_ylabel("tasks/s")
    axis.set_title("drain throughput (higher is better)")
    axis.legend()


def _scaling(axis: Any, doc: dict[str, Any]) -> None:
    for system in _systems(doc):
        points = sorted(
            (int(metric.split("@")[1]), value)
            for metric, value in _all_medians(doc, "scaling", system).items()
        )
        if points:
            axis.plot([p for p, _ in points], [v for _, v in points], marker="o", label=system)
    axis.set_xticks(list(doc["settings"]["scaling"]))
    axis.set_xlabel("worker processes")
    axis.set_ylabel("tasks/s")
    axis.set_title("throughput vs worker processes")
    axis.legend()


def _latency(axis: Any, doc: dict[str, Any]) -> None:
    systems = _systems(doc)
    width = 0.2
    series = (("light_p50_ms", "light p50"), ("light_p99_ms", "light p99"),
              ("heavy_p50_ms", "heavy p50"), ("heavy_p99_ms", "heavy p99"))
    for offset, (metric, label) in enumerate(series):
        medians = _medians(doc, "latency", metric)
        positions = [index + (offset - 1.5) * width for index in range(len(systems))]
        axis.bar(positions, [medians.get(system, 0) for system in systems], width, label=label)
    axis.set_xticks(range(len(systems)), systems)
    axis.set_yscale("log")
    bottom, top = axis.get_ylim()
    axis.set_ylim(bottom, top * 20)  # room for the legend above the bars
    axis.set_ylabel("enqueue -> start, ms (log)")
    axis.set_title(f"latency: light load, and behind a {doc['settings']['heavy_backlog']:,}-task "
                   "backlog (lower is better)", fontsize="medium")
    axis.legend(fontsize="small", ncol=4, loc="upper center")


def _depth(axis: Any, doc: dict[str, Any]) -> None:
    for system in _systems(doc):
        points = sorted(
            (int(metric.split("@")[1]), value)
            for metric, value in _all_medians(doc, "depth", system).items()
        )
        if points:
            axis.plot([p for p, _ in points], [v for _, v in points], marker="o", label=system)
    axis.set_xscale("log")
    axis.set_ylim(bottom=0)
    axis.set_xlabel("tasks waiting")
    axis.set_ylabel("ms per task")
    axis.set_title("cost per task vs queue depth (flat is good)")
    axis.legend(loc="center right")


def _all_medians(doc: dict[str, Any], scenario: str, system: str) -> dict[str, float]:
    summary = doc["scenarios"].get(scenario, {}).get("systems", {}).get(system, {})
    return {metric: entry["median"] for metric, entry in summary.items() if entry}
