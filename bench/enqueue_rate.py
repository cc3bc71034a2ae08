"""Enqueue rate of one producer: a ``.delay()`` loop vs ``enqueue`` vs ``enqueue_many``.

Usage: ``.venv/bin/python bench/enqueue_rate.py [--tasks 5000] [--rounds 3] [--smoke]``

One Sentinel topology on loopback (the chart's settings: AOF, ``min-replicas-to-write``), no
worker: each scenario publishes ``--tasks`` ``add_numbers`` messages onto ``default`` and is
timed from the first call to the last return; the queue is checked to hold exactly that many
and emptied before the next. Scenarios alternate order round by round, each warmed up first
(connections, declarations) so only the steady state is timed:

- ``seed-delay``: plain Celery as the seed tutorial configures it (``Celery(broker=redis://…,
  backend=redis://…)``, a local ``add`` task, ``add.delay(i, i)`` in a loop);
- ``send_task``: the platform's app, ``app.send_task(name, args, queue=…)`` in a loop
  (what ``enqueue`` does, without its checks);
- ``enqueue``: ``TaskProducer.enqueue`` in a loop (checks, headers, publish retry);
- ``enqueue_many``: one ``TaskProducer.enqueue_many`` call for all tasks.

Prints medians, min/max and the ratios of ``enqueue_many`` to the loops.
"""

from __future__ import annotations

import argparse
import logging
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import structlog
from celery import Celery

from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.producer import TaskProducer
from platform_tasks.settings import load_settings

ADD = "platform_tasks.default.add_numbers"
QUEUE = "default"
WARMUP = 50

Scenario = Callable[[int, int], None]


def seed_app(topology: SentinelTopology) -> tuple[Celery, Any]:
    """Celery as the seed tutorial sets it up, pointed at the current master."""
    host, port = topology.master_address()
    url = f"redis://:{topology.password}@{host}:{port}"
    app = Celery("seed", broker=f"{url}/0", backend=f"{url}/1", set_as_current=False)
    app.conf.task_default_queue = QUEUE

    @app.task(name=ADD)  # type: ignore[untyped-decorator]
    def add(x: int, y: int) -> int:
        return x + y

    return app, add


def scenarios(producer: TaskProducer, seed_add: Any) -> dict[str, Scenario]:
    def seed_delay(start: int, count: int) -> None:
        for n in range(start, start + count):
            seed_add.delay(n, n)

    def send_task(start: int, count: int) -> None:
        for n in range(start, start + count):
            producer.app.send_task(ADD, args=[n, n], queue=QUEUE)

    def enqueue(start: int, count: int) -> None:
        for n in range(start, start + count):
            producer.enqueue(ADD, queue=QUEUE, args=[n, n])

    def enqueue_many(start: int, count: int) -> None:
        producer.enqueue_many(ADD, [([n, n], None) for n in range(start, start + count)],
                              queue=QUEUE)

    return {"seed-delay": seed_delay, "send_task": send_task, "enqueue": enqueue,
            "enqueue_many": enqueue_many}


def run_once(name: str, scenario: Scenario, tasks: int, master: Any) -> float:
    """Publish ``tasks`` messages with ``scenario``; the rate in messages per second."""
    master.delete(QUEUE)
    scenario(0, WARMUP)
    master.delete(QUEUE)
    started = time.perf_counter()
    scenario(0, tasks)
    elapsed = time.perf_counter() - started
    landed = master.llen(QUEUE)
    if landed != tasks:
        raise RuntimeError(f"{name}: {landed} of {tasks} messages on {QUEUE!r}")
    master.delete(QUEUE)
    return tasks / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="200 tasks, 1 round: checks the harness runs, not the timings")
    options = parser.parse_args(argv)
    tasks, rounds = (200, 1) if options.smoke else (options.tasks, options.rounds)
    # A producer process keeps structlog's defaults: its per-task debug line would be timed.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    run_dir = Path(tempfile.mkdtemp(prefix="platform-tasks-bench-"))
    print(f"python {platform.python_version()}, celery {version('celery')}, "
          f"kombu {version('kombu')}, redis-py {version('redis')}, "
          f"{platform.machine()}; {tasks} tasks x {rounds} rounds", flush=True)
    with SentinelTopology(run_dir / "topology", password=secrets.token_urlsafe(12),
                          sentinel_password=secrets.token_urlsafe(12)) as topology:
        env = {**topology.settings_env(), "PLATFORM_TASKS_LOG_LEVEL": "WARNING"}
        master = topology.client(topology.master_address()[1])
        app, seed_add = seed_app(topology)
        with TaskProducer(load_settings(env)) as producer:
            runs = scenarios(producer, seed_add)
            rates: dict[str, list[float]] = {name: [] for name in runs}
            for round_index in range(rounds):
                order = list(runs) if round_index % 2 == 0 else list(reversed(runs))
                for name in order:
                    rate = run_once(name, runs[name], tasks, master)
                    rates[name].append(rate)
                    print(f"round {round_index + 1} {name:>13}: {rate:9.0f} tasks/s",
                          flush=True)
        app.close()
        master.close()
    print(f"\n{'scenario':<13} {'median/s':>9} {'min':>9} {'max':>9}")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        print(f"{name:<13} {medians[name]:9.0f} {min(values):9.0f} {max(values):9.0f}")
    print()
    for baseline in ("seed-delay", "send_task", "enqueue"):
        print(f"enqueue_many / {baseline}: {medians['enqueue_many'] / medians[baseline]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
