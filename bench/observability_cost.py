"""What logging and metrics cost a worker: drain time of N no-op tasks, on versus off.

Usage: ``.venv/bin/python bench/observability_cost.py [--tasks 2000] [--rounds 3]``

One Sentinel topology on loopback; each round pre-enqueues ``--tasks`` ``add_numbers`` on the
``default`` queue, then starts one ``platform-tasks worker --queue default`` (a group of 2
single-loop processes, as the chart runs it) and waits until every result is stored. The drain
time is the spread of the results' completion times (first to last), so worker start-up
is not counted. "on" is the shipped configuration (JSON logs at INFO to a file, /metrics served);
"off" is ``PLATFORM_TASKS_LOG_LEVEL=WARNING`` and ``PLATFORM_TASKS_METRICS_PORT=0`` (no
lifecycle lines, no metric handlers). The two alternate, round by round, so drift in the
machine's speed hits both. Prints medians, min/max and the on/off ratio, and the median of
the rounds' own on/off ratios (each round's pair ran back to back, so a machine whose speed
drifts during the run moves both alike).

``--side-by-side``: on a machine whose speed swings from second to second (a shared VM), even
back-to-back drains differ by more than the cost being measured. This mode runs "on" and
"off" at the same time instead, each worker with its own pair of databases on the same
servers, so every swing hits both alike. It counts the tasks each finishes in the window
while both are draining (from both having run a tenth of their tasks to the first one
running dry): the ratio of the two rates is what the observability costs when the two share
the cores equally. The databases swap every round and the start order every second round,
so use a multiple of 4 rounds. ``--pair off off-again`` runs the method against itself (an
A/A check: its ratio should be 1).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from platform_tasks.devstack.ports import free_port
from platform_tasks.devstack.processes import ManagedProcess
from platform_tasks.devstack.stack import worker_argv
from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.observability.logging import configure_logging
from platform_tasks.producer import TaskProducer
from platform_tasks.redis_client import connect
from platform_tasks.settings import load_settings

ADD = "platform_tasks.default.add_numbers"
CONFIGURATIONS: dict[str, dict[str, str]] = {
    "on": {"PLATFORM_TASKS_LOG_LEVEL": "INFO"},
    "off": {"PLATFORM_TASKS_LOG_LEVEL": "WARNING", "PLATFORM_TASKS_METRICS_PORT": "0"},
    # With --split: which of the two costs what.
    "logs-only": {"PLATFORM_TASKS_LOG_LEVEL": "INFO", "PLATFORM_TASKS_METRICS_PORT": "0"},
    "metrics-only": {"PLATFORM_TASKS_LOG_LEVEL": "WARNING"},
    # With --side-by-side --pair off off-again: the method against itself.
    "off-again": {"PLATFORM_TASKS_LOG_LEVEL": "WARNING", "PLATFORM_TASKS_METRICS_PORT": "0"},
}


def drain(topology: SentinelTopology, run_dir: Path, name: str, tasks: int,
          round_index: int) -> tuple[float, float]:
    """One drain: its wall seconds (first to last result) and the worker's CPU s per task."""
    env = {
        **topology.settings_env(),
        "PLATFORM_TASKS_METRICS_HOST": "127.0.0.1",
        "PLATFORM_TASKS_METRICS_PORT": str(free_port()),
        "PLATFORM_TASKS_METRICS_DIR": str(run_dir / "metrics"),
        "PYTHONUNBUFFERED": "1",
        **CONFIGURATIONS[name],
    }
    settings = load_settings(env)
    results = connect(settings, db=settings.result_db)
    connect(settings).flushdb()
    results.flushdb()
    with TaskProducer(settings) as producer:
        ids = [producer.enqueue(ADD, queue="default", args=[n, 1]) for n in range(tasks)]
    worker = ManagedProcess(f"worker-{name}-{round_index}", worker_argv("default"),
                            {**_base_env(), **env}, run_dir / f"worker-{name}-{round_index}.log",
                            cwd=run_dir)
    worker.start()
    try:
        deadline = time.monotonic() + 600
        while not results.dbsize():
            _check(worker, deadline, name)
            time.sleep(0.01)
        assert worker.pid is not None
        cpu_start, done_start = tree_cpu_seconds(worker.pid), results.dbsize()
        while results.dbsize() < tasks:
            _check(worker, deadline, name)
            time.sleep(0.05)
        cpu_per_task = (tree_cpu_seconds(worker.pid) - cpu_start) / (tasks - done_start)
        keys = [f"celery-task-meta-{task_id}" for task_id in ids]
        stored = results.mget(keys)
        if any(raw is None for raw in stored):
            raise SystemExit(f"{name}: a result the drain counted is gone (expired?)")
        done = [
            datetime.fromisoformat(json.loads(raw)["date_done"]).timestamp()
            for raw in stored if raw is not None
        ]
    finally:
        worker.stop(30)
        results.close()
    return max(done) - min(done), cpu_per_task


def side_by_side(topology: SentinelTopology, run_dir: Path, tasks: int, round_index: int,
                 pair: tuple[str, str] = ("on", "off")) -> dict[str, tuple[float, float]]:
    """Two configurations (``pair``) draining at once: each one's tasks/s and CPU s per task
    in the window while both drain."""
    first, second = pair
    databases = {first: (0, 1), second: (2, 3)}
    if round_index % 2:
        databases = {first: (2, 3), second: (0, 1)}
    results: dict[str, Any] = {}
    workers: dict[str, ManagedProcess] = {}
    envs: dict[str, dict[str, str]] = {}
    for name, (broker_db, result_db) in databases.items():
        envs[name] = {
            **topology.settings_env(),
            "PLATFORM_TASKS_BROKER_DB": str(broker_db),
            "PLATFORM_TASKS_RESULT_DB": str(result_db),
            "PLATFORM_TASKS_METRICS_HOST": "127.0.0.1",
            "PLATFORM_TASKS_METRICS_PORT": str(free_port()),
            "PLATFORM_TASKS_METRICS_DIR": str(run_dir / f"metrics-{name}"),
            # Two default workers on one host: each its own liveness files.
            "PLATFORM_TASKS_HEARTBEAT_FILE": str(run_dir / f"{name}.alive"),
            "PYTHONUNBUFFERED": "1",
            **CONFIGURATIONS[name],
        }
        settings = load_settings(envs[name])
        connect(settings).flushdb()
        results[name] = connect(settings, db=settings.result_db)
        results[name].flushdb()
        with TaskProducer(settings) as producer:
            producer.enqueue_many(ADD, [([n, 1], {}) for n in range(tasks)], queue="default")
    # Whichever starts first gets the cores while the other imports: the order alternates
    # (with the databases), and the window opens once both have run a tenth of their tasks.
    order = list(databases) if round_index % 4 < 2 else list(reversed(databases))
    warmed = max(1, tasks // 10)
    try:
        for name in order:
            workers[name] = ManagedProcess(
                f"worker-{name}-{round_index}", worker_argv("default"),
                {**_base_env(), **envs[name]}, run_dir / f"worker-{name}-{round_index}.log",
                cwd=run_dir)
            workers[name].start()
        deadline = time.monotonic() + 600
        while not all(results[name].dbsize() >= warmed for name in databases):
            for name in databases:
                _check(workers[name], deadline, name)
            time.sleep(0.01)
        start = time.monotonic()
        done_start = {name: results[name].dbsize() for name in databases}
        cpu_start = {name: tree_cpu_seconds(_pid(workers[name])) for name in databases}
        while True:
            done = {name: results[name].dbsize() for name in databases}
            if any(count >= tasks for count in done.values()):
                break
            for name in databases:
                _check(workers[name], deadline, name)
            time.sleep(0.02)
        elapsed = time.monotonic() - start
        measured: dict[str, tuple[float, float]] = {}
        for name in databases:
            finished = done[name] - done_start[name]
            cpu = tree_cpu_seconds(_pid(workers[name])) - cpu_start[name]
            measured[name] = (finished / elapsed, cpu / max(finished, 1))
        return measured
    finally:
        for worker in workers.values():
            worker.stop(30)
        for client in results.values():
            client.close()


def _pid(worker: ManagedProcess) -> int:
    assert worker.pid is not None
    return worker.pid


def _run_side_by_side(tasks: int, rounds: int, pair: tuple[str, str]) -> int:
    first, second = pair
    if first == second:
        raise SystemExit("--pair needs two different configurations (off off-again for A/A)")
    run_dir = Path(tempfile.mkdtemp(prefix="platform-tasks-bench-"))
    rates: dict[str, list[float]] = {first: [], second: []}
    cpu: dict[str, list[float]] = {first: [], second: []}
    with SentinelTopology(run_dir / "topology", password=secrets.token_urlsafe(12),
                          sentinel_password=secrets.token_urlsafe(12)) as topology:
        for round_index in range(rounds):
            measured = side_by_side(topology, run_dir, tasks, round_index, pair)
            for name, (rate, cpu_per_task) in measured.items():
                rates[name].append(rate)
                cpu[name].append(cpu_per_task)
            one, other = measured[first], measured[second]
            print(f"round {round_index + 1}: {first} {one[0]:7.1f} tasks/s ({one[1] * 1000:.3f} "
                  f"ms CPU/task), {second} {other[0]:7.1f} tasks/s ({other[1] * 1000:.3f} ms "
                  f"CPU/task); {first}/{second} {one[0] / other[0]:.3f}", flush=True)
    paired = [one / other for one, other in zip(rates[first], rates[second], strict=True)]
    paired_cpu = [one / other for one, other in zip(cpu[first], cpu[second], strict=True)]
    ratio = statistics.median(paired)
    print(f"\nside by side, per round {first}/{second} throughput: "
          f"{', '.join(f'{r:.3f}' for r in paired)}; median {ratio:.3f} "
          f"({(1 - ratio) * 100:+.1f}% slower with {first}; "
          f"min {min(paired):.3f}, max {max(paired):.3f})")
    print(f"side by side, per round {first}/{second} worker CPU per task: median "
          f"{statistics.median(paired_cpu):.3f}; logs in {run_dir}")
    return 0


def _check(worker: ManagedProcess, deadline: float, name: str) -> None:
    if time.monotonic() > deadline or not worker.alive:
        raise RuntimeError(f"{name}: drain did not finish; see {worker.log_path}")


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat; index 11 and 12 after the command name.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of the worker's main process and its pool processes so far."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return _cpu_seconds(pid) + sum(_cpu_seconds(int(child)) for child in children)


def _base_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items()
            if not key.startswith("PLATFORM_TASKS_")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--split", action="store_true",
                        help="also run logs-only and metrics-only")
    parser.add_argument("--side-by-side", action="store_true",
                        help="run on and off at the same time, each on its own databases")
    parser.add_argument("--pair", nargs=2, default=("on", "off"), metavar=("FIRST", "SECOND"),
                        choices=list(CONFIGURATIONS),
                        help="with --side-by-side: the two configurations (default: on off)")
    options = parser.parse_args(argv)
    # The producer's per-message debug lines would otherwise fill the terminal.
    configure_logging(None, process="bench", level="WARNING")
    if options.side_by_side:
        return _run_side_by_side(options.tasks, options.rounds, tuple(options.pair))
    names = list(CONFIGURATIONS) if options.split else ["on", "off"]
    run_dir = Path(tempfile.mkdtemp(prefix="platform-tasks-bench-"))
    timings: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with SentinelTopology(run_dir / "topology", password=secrets.token_urlsafe(12),
                          sentinel_password=secrets.token_urlsafe(12)) as topology:
        for round_index in range(options.rounds):
            order = names if round_index % 2 == 0 else list(reversed(names))
            for name in order:
                seconds, cpu_per_task = drain(topology, run_dir, name, options.tasks,
                                              round_index)
                timings[name].append(seconds)
                cpu[name].append(cpu_per_task)
                print(f"round {round_index + 1} {name:>12}: {options.tasks / seconds:8.1f} "
                      f"tasks/s, worker CPU {cpu_per_task * 1000:.3f} ms/task", flush=True)
    rates = {name: [options.tasks / s for s in values] for name, values in timings.items()}
    print(f"\n{'config':<12} {'median/s':>9} {'min':>8} {'max':>8} {'CPU ms/task':>12}")
    for name, values in rates.items():
        print(f"{name:<12} {statistics.median(values):9.1f} {min(values):8.1f} "
              f"{max(values):8.1f} {statistics.median(cpu[name]) * 1000:12.3f}")
    ratio = statistics.median(rates["on"]) / statistics.median(rates["off"])
    print(f"\non/off throughput ratio: {ratio:.3f} ({(1 - ratio) * 100:+.1f}% slower with "
          f"logging and metrics on)")
    cpu_ratio = statistics.median(cpu["on"]) / statistics.median(cpu["off"])
    print(f"on/off worker CPU per task: {cpu_ratio:.3f}")
    # Each round's on and off ran back to back: their ratio is untouched by the machine
    # getting faster or slower over the run, which the ratio of medians is not.
    paired = [on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
    paired_cpu = [on / off for on, off in zip(cpu["on"], cpu["off"], strict=True)]
    print(f"per round, on/off throughput: {', '.join(f'{r:.3f}' for r in paired)}; median "
          f"{statistics.median(paired):.3f} ({(1 - statistics.median(paired)) * 100:+.1f}% "
          f"slower)")
    print(f"per round, on/off worker CPU per task: median {statistics.median(paired_cpu):.3f}"
          f"; logs in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
