"""What logging and metrics cost a worker: drain time of N no-op tasks, on versus off.

Usage: ``.venv/bin/python bench/observability_cost.py [--tasks 2000] [--rounds 3]``

One Sentinel topology on loopback; each round pre-enqueues ``--tasks`` ``add_numbers`` on the
``default`` queue, then starts one ``platform-tasks worker --queue default`` (prefork, 2
processes, as the chart runs it) and waits until every result is stored. The drain time is
the spread of the results' completion times (first to last), so worker start-up is not
counted. "on" is the shipped configuration (JSON logs at INFO to a file, /metrics served);
"off" is ``PLATFORM_TASKS_LOG_LEVEL=WARNING`` and ``PLATFORM_TASKS_METRICS_PORT=0`` (no
lifecycle lines, no metric handlers). The two alternate, round by round, so drift in the
machine's speed hits both. Prints medians, min/max and the on/off ratio.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from platform_tasks.devstack.ports import free_port
from platform_tasks.devstack.processes import ManagedProcess
from platform_tasks.devstack.stack import worker_argv
from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.producer import TaskProducer
from platform_tasks.redis_client import connect
from platform_tasks.settings import load_settings

ADD = "platform_tasks.default.add_numbers"
CONFIGURATIONS: dict[str, dict[str, str]] = {
    "on": {"PLATFORM_TASKS_LOG_LEVEL": "INFO"},
    "off": {"PLATFORM_TASKS_LOG_LEVEL": "WARNING", "PLATFORM_TASKS_METRICS_PORT": "0"},
}


def drain_seconds(topology: SentinelTopology, run_dir: Path, name: str, tasks: int,
                  round_index: int) -> float:
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
        keys = [f"celery-task-meta-{task_id}" for task_id in ids]
        deadline = time.monotonic() + 600
        while results.exists(*keys[-200:]) < 200 or results.exists(*keys) < tasks:
            if time.monotonic() > deadline or not worker.alive:
                raise RuntimeError(f"{name}: drain did not finish; see {worker.log_path}")
            time.sleep(0.25)
        done = [
            datetime.fromisoformat(json.loads(raw)["date_done"]).timestamp()
            for raw in results.mget(keys)
        ]
    finally:
        worker.stop(30)
        results.close()
    return max(done) - min(done)


def _base_env() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items()
            if not key.startswith("PLATFORM_TASKS_")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args(argv)
    run_dir = Path(tempfile.mkdtemp(prefix="platform-tasks-bench-"))
    timings: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
    with SentinelTopology(run_dir / "topology", password=secrets.token_urlsafe(12),
                          sentinel_password=secrets.token_urlsafe(12)) as topology:
        for round_index in range(options.rounds):
            order = list(CONFIGURATIONS) if round_index % 2 == 0 else list(reversed(CONFIGURATIONS))
            for name in order:
                seconds = drain_seconds(topology, run_dir, name, options.tasks, round_index)
                timings[name].append(seconds)
                print(f"round {round_index + 1} {name:>3}: {options.tasks / seconds:8.1f} tasks/s",
                      flush=True)
    rates = {name: [options.tasks / s for s in values] for name, values in timings.items()}
    print(f"\n{'config':<6} {'median tasks/s':>15} {'min':>8} {'max':>8}")
    for name, values in rates.items():
        print(f"{name:<6} {statistics.median(values):15.1f} {min(values):8.1f} {max(values):8.1f}")
    ratio = statistics.median(rates["on"]) / statistics.median(rates["off"])
    print(f"\non/off throughput ratio: {ratio:.3f} ({(1 - ratio) * 100:+.1f}% slower with "
          f"logging and metrics on); logs in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
