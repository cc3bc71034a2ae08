"""What the logging and metrics receivers cost one task, measured in one process.

Usage: ``.venv/bin/python bench/observability_receivers.py [--tasks-per-batch 500] [--batches 60]``

No servers: the signals a solo worker sends for one task (``task_received``, ``task_prerun``,
``task_success``, ``task_postrun``) are sent in a loop with the worker's receivers connected,
JSON lines at INFO written to a temporary file (held and flushed per task, as the solo pool's
loop does), metrics recorded in multiprocess mode. Batches alternate between four sets of
receivers: all of them, all but the lifecycle-line ones, all but the metric ones, and
neither. Alternating batches of a few milliseconds see the same machine, so the differences
of the medians hold even where whole-worker runs swing by more than the effect
(``bench/observability_cost.py``). A worker pays more than this per task, since its caches
are cold between one task's receivers and the next's; the split between the parts is what
this tells. Work moved off the task's path (the metric buffers' and the in-flight gauge's
once-a-second flush, on a thread of their own) is in none of the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from types import SimpleNamespace
from typing import Any, TextIO, cast

# Before prometheus_client is imported: count into per-process files, as a worker does.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="receivers-"))

from celery import signals

from platform_tasks import headers, run_signals
from platform_tasks.app import create_app
from platform_tasks.observability import held_lines, task_context, worker_metrics
from platform_tasks.observability.logging import configure_logging
from platform_tasks.settings import load_settings

TASK = "platform_tasks.default.add_numbers"
SIGNALS = (signals.task_received, signals.task_prerun, signals.task_success,
           signals.task_postrun)
LOG_RECEIVERS = "platform-tasks-log-"
METRIC_RECEIVERS = "platform-tasks-metrics-"
LOG_OBSERVERS = "platform_tasks.observability.task_context"
METRIC_OBSERVERS = "platform_tasks.observability.worker_metrics"


class _Consumer:
    """The sender of task_received (hashable, as Celery's consumer is)."""

    hostname = "default-1@bench"


def _run_one(task: Any, consumer: _Consumer) -> None:
    task_id = str(uuid.uuid4())
    message = {"id": task_id, "task": TASK, "retries": 0, "root_id": task_id,
               "parent_id": None, headers.CORRELATION_ID: str(uuid.uuid4()),
               headers.ENQUEUED_AT: str(time.time())}
    delivery_info = {"exchange": "", "routing_key": "default", "priority": 0,
                     "redelivered": False}
    request = SimpleNamespace(id=task_id, name=TASK, request_dict=message,
                              hostname=consumer.hostname, delivery_info=delivery_info,
                              parent_id=None, root_id=task_id)
    signals.task_received.send(sender=consumer, request=request)
    task.push_request(id=task_id, task=TASK, args=[1, 2], kwargs={}, retries=0,
                      hostname=consumer.hostname, delivery_info=delivery_info,
                      root_id=task_id, parent_id=None, headers=None, is_eager=False,
                      **{headers.CORRELATION_ID: message[headers.CORRELATION_ID],
                         headers.ENQUEUED_AT: message[headers.ENQUEUED_AT]})
    signals.task_prerun.send(sender=task, task_id=task_id, task=task, args=[1, 2], kwargs={})
    signals.task_success.send(sender=task, result=3)
    signals.task_postrun.send(sender=task, task_id=task_id, task=task, args=[1, 2],
                              kwargs={}, retval=3, state="SUCCESS")
    task.pop_request()
    held_lines.flush()


def _without(receivers: list[Any], prefixes: tuple[str, ...]) -> list[Any]:
    # Celery keeps ((dispatch_uid, sender id), receiver) pairs.
    return [entry for entry in receivers
            if not (isinstance(entry[0][0], str) and entry[0][0].startswith(prefixes))]


#: The observers of a run's start, success and end (one receiver per signal calls them).
RUN_OBSERVERS = (run_signals._at_start, run_signals._at_success, run_signals._at_end)


def _observers_without(modules: tuple[str, ...]) -> list[list[Any]]:
    return [[entry for entry in observers if entry[1].__module__ not in modules]
            for observers in RUN_OBSERVERS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks-per-batch", type=int, default=500)
    parser.add_argument("--batches", type=int, default=60, help="batches per receiver set")
    options = parser.parse_args(argv)
    settings = load_settings({"PLATFORM_TASKS_REDIS_URL": "redis://127.0.0.1:1/0"})
    app = create_app(settings)
    app.loader.import_default_modules()
    task = app.tasks[TASK]
    with tempfile.NamedTemporaryFile("w", prefix="receivers-", suffix=".log") as log_file:
        configure_logging(settings, process="worker", stream=cast(TextIO, log_file), level="INFO",
                          log_format="json")
        task_context.install()
        worker_metrics.connect_signals()
        worker_metrics.start_group_member_metrics("default")
        held_lines.enable()
        consumer = _Consumer()
        full = {signal: list(signal.receivers) for signal in SIGNALS}
        all_observers = _observers_without(())
        sets = {
            "all": (full, all_observers),
            "no lines": ({s: _without(full[s], (LOG_RECEIVERS,)) for s in SIGNALS},
                         _observers_without((LOG_OBSERVERS,))),
            "no metrics": ({s: _without(full[s], (METRIC_RECEIVERS,)) for s in SIGNALS},
                           _observers_without((METRIC_OBSERVERS,))),
            "neither": ({s: _without(full[s], (LOG_RECEIVERS, METRIC_RECEIVERS))
                         for s in SIGNALS},
                        _observers_without((LOG_OBSERVERS, METRIC_OBSERVERS))),
        }
        for _ in range(options.tasks_per_batch * 4):
            _run_one(task, consumer)
        timings: dict[str, list[float]] = {name: [] for name in sets}
        for batch in range(options.batches):
            names = list(sets) if batch % 2 == 0 else list(reversed(sets))
            for name in names:
                receivers, observers = sets[name]
                for signal in SIGNALS:
                    signal.receivers[:] = receivers[signal]
                for registered, chosen in zip(RUN_OBSERVERS, observers, strict=True):
                    registered[:] = chosen
                started = time.perf_counter()
                for _ in range(options.tasks_per_batch):
                    _run_one(task, consumer)
                elapsed = time.perf_counter() - started
                timings[name].append(elapsed / options.tasks_per_batch * 1e6)
        for signal in SIGNALS:
            signal.receivers[:] = full[signal]
        for registered, chosen in zip(RUN_OBSERVERS, all_observers, strict=True):
            registered[:] = chosen
    medians = {name: statistics.median(values) for name, values in timings.items()}
    print(f"{'receivers':<12} {'µs per task (median of batches)':>32}")
    for name, value in medians.items():
        print(f"{name:<12} {value:32.1f}")
    print(f"\nlifecycle lines {medians['no metrics'] - medians['neither']:+.1f} µs, metrics "
          f"{medians['no lines'] - medians['neither']:+.1f} µs, both "
          f"{medians['all'] - medians['neither']:+.1f} µs per task")
    return 0


if __name__ == "__main__":
    sys.exit(main())
