"""The worker's Prometheus metrics: collectors built from the catalog, fed by Celery signals.

Importing this module imports ``prometheus_client``; a worker calls
:func:`platform_tasks.observability.multiprocess_dir.prepare` first, so that prefork pool
children write to per-process files the main process merges on each scrape. Outside a worker
(tests, producers) the same collectors simply count in memory.

Recording a metric must never disturb the task it watches: every handler swallows and logs
its own errors.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer

from billiard.exceptions import TimeLimitExceeded
from celery import signals
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from platform_tasks import headers, run_signals
from platform_tasks.observability import catalog, metric_buffer
from platform_tasks.observability.catalog import MetricSpec
from platform_tasks.observability.multiprocess_dir import ENV_VAR

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"


def _help(spec: MetricSpec) -> str:
    return spec.description


def _counter(spec: MetricSpec) -> Counter:
    return Counter(spec.name, _help(spec), spec.labels)


task_runtime = Histogram(
    catalog.TASK_RUNTIME.name, _help(catalog.TASK_RUNTIME), catalog.TASK_RUNTIME.labels,
    buckets=catalog.TASK_RUNTIME.buckets,
)
task_wait = Histogram(
    catalog.TASK_WAIT.name, _help(catalog.TASK_WAIT), catalog.TASK_WAIT.labels,
    buckets=catalog.TASK_WAIT.buckets,
)
task_retries = _counter(catalog.TASK_RETRIES)
task_failures = _counter(catalog.TASK_FAILURES)
tasks_rejected = _counter(catalog.TASKS_REJECTED)
tasks_revoked = _counter(catalog.TASKS_REVOKED)
dead_letters = _counter(catalog.DEAD_LETTERS)
payments_deduplicated = _counter(catalog.PAYMENTS_DEDUPLICATED)
pool_process_starts = _counter(catalog.POOL_PROCESS_STARTS)
tasks_in_flight = Gauge(
    catalog.TASKS_IN_FLIGHT.name, _help(catalog.TASKS_IN_FLIGHT), catalog.TASKS_IN_FLIGHT.labels,
    multiprocess_mode=catalog.TASKS_IN_FLIGHT.gauge_mode,
)
worker_start_time = Gauge(
    catalog.WORKER_START_TIME.name, _help(catalog.WORKER_START_TIME),
    catalog.WORKER_START_TIME.labels, multiprocess_mode=catalog.WORKER_START_TIME.gauge_mode,
)

_OUTCOME_BY_STATE = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}

# task id -> (monotonic start, its series), for runtime and the in-flight gauge. One dict
# operation per access (atomic under the GIL): thread pools need no lock around it.
_running: dict[str, tuple[float, _TaskSeries]] = {}

#: The queue this worker consumes, set once at start: the label for worker-wide series.
_worker_queue: str = UNKNOWN

#: Whether this process records metrics at all (set by connect_signals).
_recording = False


def queue_of(request: Any) -> str:
    delivery_info = getattr(request, "delivery_info", None) or {}
    return str(delivery_info.get("routing_key") or delivery_info.get("queue") or _worker_queue)


def _exception_name(exception: Any) -> str:
    # A Retry carries the exception that caused it.
    cause = getattr(exception, "exc", None) or exception
    return type(cause).__name__ if cause is not None else UNKNOWN


def _float_header(request: Any, name: str) -> float | None:
    value = headers.read(request, name)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _eta_epoch(request: Any) -> float | None:
    eta = getattr(request, "eta", None)
    if eta is None:
        return None
    try:
        from datetime import datetime

        parsed = eta if isinstance(eta, datetime) else datetime.fromisoformat(str(eta))
        return parsed.timestamp()
    except (TypeError, ValueError):
        return None


def wait_seconds(request: Any, now: float) -> float | None:
    """How long a task waited to start, from when it could first run.

    That is its publish time, or its ETA for a countdown task: a task scheduled for an hour
    from now has not been waiting for that hour.
    """
    enqueued_at = _float_header(request, headers.ENQUEUED_AT)
    if enqueued_at is None:
        return None
    eta = _eta_epoch(request)
    ready_at = max(enqueued_at, eta) if eta is not None else enqueued_at
    return max(0.0, now - ready_at)


def _guarded(what: str, function: Any, *args: Any, **kwargs: Any) -> None:
    try:
        function(*args, **kwargs)
    except Exception:
        logger.warning("could not record %s in the metrics", what, exc_info=True)


# -- signal handlers ---------------------------------------------------------------------


#: (metric, labels) -> its labelled child, buffered: ``labels()`` validates and locks on
#: every call, and each update of a child writes to a memory-mapped file; the per-task
#: handlers below make six updates per task for the same few combinations.
_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (id(metric), labels)
    child = _children.get(key)
    if child is None:
        labelled = metric.labels(*labels)
        child = _children[key] = (
            metric_buffer.BufferedHistogram(labelled) if isinstance(metric, Histogram)
            else metric_buffer.BufferedValue(labelled)
        )
    return child


class _TaskSeries:
    """The buffered children one task name on one queue updates on every run, looked up
    once per run instead of once per update."""

    __slots__ = ("_runtimes", "in_flight", "name", "queue", "wait", "written_in_flight")

    def __init__(self, queue: str, name: str) -> None:
        self.queue, self.name = queue, name
        # Not buffered: set from the running tasks at each flush (_write_in_flight).
        self.in_flight = tasks_in_flight.labels(queue, name)
        self.written_in_flight = 0
        self.wait = _child(task_wait, queue, name)
        self._runtimes: dict[str | None, Any] = {}

    def runtime(self, state: str | None) -> Any:
        child = self._runtimes.get(state)
        if child is None:
            outcome = _OUTCOME_BY_STATE.get(str(state), str(state).lower() if state else UNKNOWN)
            child = self._runtimes[state] = _child(task_runtime, self.queue, self.name, outcome)
        return child


_series: dict[tuple[str, str], _TaskSeries] = {}


def _series_of(queue: str, name: str) -> _TaskSeries:
    series = _series.get((queue, name))
    if series is None:
        series = _series[(queue, name)] = _TaskSeries(queue, name)
    return series


def _write_in_flight() -> None:
    """Set each series' in-flight gauge to the number of its tasks running now.

    Called by the buffer's flusher once a second: counting the running tasks then costs
    nothing per task, where an increment and a decrement per run did.
    """
    # The flusher thread and a shutdown's flush on the main thread may both get here.
    with _in_flight_lock:
        # One C-level copy, atomic under the GIL: the running dict changes on other threads.
        running = [series for _started, series in list(_running.values())]
        counts: dict[_TaskSeries, int] = {}
        for series in running:
            counts[series] = counts.get(series, 0) + 1
        for series in list(_series.values()):
            count = counts.get(series, 0)
            if count != series.written_in_flight:
                series.in_flight.set(count)
                series.written_in_flight = count


_in_flight_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A forked process starts its own gauge file at zero and runs none of its parent's tasks;
    # the parent's flusher may have held the lock at the fork, and no thread here releases it.
    global _in_flight_lock
    _in_flight_lock = threading.Lock()
    _running.clear()
    for series in list(_series.values()):
        series.written_in_flight = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


# The two observers every task runs through guard themselves (a wrapper per call was a
# sizeable part of what metrics cost a task).
def _prerun(task_id: str | None, task: Any, request: Any) -> None:
    if task_id is None:
        return
    try:
        series = _series_of(queue_of(request), str(task.name))
        _running[task_id] = (time.monotonic(), series)
        waited = wait_seconds(request, time.time())
        if waited is not None:
            series.wait.observe(waited)
    except Exception:
        logger.warning("could not record a task start in the metrics", exc_info=True)


def _postrun(task_id: str | None, task: Any, state: str | None) -> None:
    if task_id is None:
        return
    try:
        running = _running.pop(task_id, None)
        if running is None:
            return
        started, series = running
        series.runtime(state).observe(time.monotonic() - started)
    except Exception:
        logger.warning("could not record a task end in the metrics", exc_info=True)


def _retry(request: Any = None, reason: Any = None, sender: Any = None, **_: Any) -> None:
    name = str(getattr(sender, "name", None) or getattr(request, "task", None) or UNKNOWN)
    task_retries.labels(queue_of(request), name, _exception_name(reason)).inc()


def _failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
    **_: Any,
) -> None:
    request = getattr(sender, "request", None)
    queue, name = queue_of(request), str(getattr(sender, "name", UNKNOWN))
    task_failures.labels(queue, name, _exception_name(exception)).inc()
    if task_id not in _running:
        # The main process reports a pool process killed at the hard time limit (or lost),
        # and no postrun follows: count the run in the runtime histogram here, at the limit
        # it ran to, so that its _count stays the number of runs.
        limit = getattr(sender, "time_limit", None) if isinstance(exception, TimeLimitExceeded) \
            else None
        task_runtime.labels(queue, name, "failed").observe(float(limit or 0.0))
    # The dead letter itself is counted where it is written: platform_tasks.dead_letters.


def _message_queue(message: Any) -> str:
    delivery_info = getattr(message, "delivery_info", None) or {}
    return str(delivery_info.get("routing_key") or _worker_queue)


def _unknown(message: Any = None, name: Any = None, **_: Any) -> None:
    queue = _message_queue(message)
    tasks_rejected.labels(queue, "unknown_task").inc()


def _rejected(message: Any = None, exc: Any = None, **_: Any) -> None:
    queue = _message_queue(message)
    reason = "invalid_task" if exc is not None else "unknown_message"
    tasks_rejected.labels(queue, reason).inc()


def _revoked(request: Any = None, **_: Any) -> None:
    name = str(getattr(request, "name", None) or getattr(request, "task", None) or UNKNOWN)
    tasks_revoked.labels(queue_of(request), name).inc()


def _pool_process_init(**_: Any) -> None:
    pool_process_starts.labels(_worker_queue).inc()
    # A forked pool process inherits the main process's listening socket; only the main
    # process serves /metrics, so the child lets go of its copy.
    if _server is not None:
        _server.socket.close()


def _write_buffered(**_: Any) -> None:
    # A prefork child leaves by os._exit, which runs no atexit hook.
    metric_buffer.flush()


def _guard(what: str, handler: Any) -> Any:
    def receiver(*args: Any, **kwargs: Any) -> None:
        _guarded(what, handler, *args, **kwargs)

    receiver.__name__ = handler.__name__
    return receiver


_RECEIVERS: tuple[tuple[Any, Any], ...] = (
    (signals.task_retry, _retry),
    (signals.task_failure, _failure),
    (signals.task_unknown, _unknown),
    (signals.task_rejected, _rejected),
    (signals.task_revoked, _revoked),
    (signals.worker_process_init, _pool_process_init),
    (signals.worker_process_shutdown, _write_buffered),
    (signals.worker_shutdown, _write_buffered),
)


def connect_signals() -> None:
    """Start recording task metrics in this process (and the pool processes it forks)."""
    global _recording
    _recording = True
    run_signals.observe(run_signals.Stage.METRICS, start=_prerun, end=_postrun)
    for signal, handler in _RECEIVERS:
        signal.connect(_guard(handler.__name__, handler), weak=False,
                       dispatch_uid=f"platform-tasks-metrics-{handler.__name__}")
    metric_buffer.before_each_flush(_write_in_flight)


def disconnect_signals() -> None:
    global _recording
    _recording = False
    run_signals.forget(_prerun, _postrun)
    for signal, handler in _RECEIVERS:
        signal.disconnect(dispatch_uid=f"platform-tasks-metrics-{handler.__name__}")


def record_dead_letter(queue: str, task: str, reason: str) -> None:
    """A task or message was given up on (called by :mod:`platform_tasks.dead_letters`).

    Counted only in a worker that records metrics (``PLATFORM_TASKS_METRICS_PORT`` not 0).
    """
    if _recording:
        _guarded("a dead letter", dead_letters.labels(queue or _worker_queue, task, reason).inc)


def record_payment_deduplicated(queue: str, task: str) -> None:
    """A payment run found its idempotency key already charged."""
    _guarded("a deduplicated payment", payments_deduplicated.labels(queue, task).inc)


# -- the /metrics endpoint ---------------------------------------------------------------

_server: WSGIServer | None = None
_DEAD_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _LiveProcessesCollector:
    """Merges every process's files, after dropping the live gauges of processes that died.

    A SIGKILLed pool process never runs an exit hook, so the main process checks at each
    scrape instead; its counters stay, since a counter must not go down.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._merged = MultiProcessCollector(None, path)
        self._pruning = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        # The HTTP server is threaded: two scrapes at once must not both delete a file.
        with self._pruning:
            for file in glob.glob(os.path.join(self.path, "gauge_live*_*.db")):
                match = _DEAD_FILE.match(os.path.basename(file))
                if match and not _pid_alive(int(match.group(1))):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(file)
        metrics: Iterable[Metric] = self._merged.collect()
        return metrics


def start_group_member_metrics(queue: str) -> None:
    """Label a worker group member's series with ``queue``.

    Its supervisor serves /metrics from the directory every member writes to. The solo pool
    sends ``worker_process_init`` as it starts, so each member's start (a replacement too)
    counts as a pool process start, as a prefork child's does.
    """
    global _worker_queue
    _worker_queue = queue


def start_worker_metrics(queue: str, host: str, port: int) -> int:
    """Label this worker's series with ``queue``, mark its start, serve /metrics on ``port``.

    Returns the bound port; ``port`` 0 marks the start without serving anything.
    """
    global _server, _worker_queue
    _worker_queue = queue
    worker_start_time.labels(queue).set(time.time())
    if port == 0:
        return 0
    if os.environ.get(ENV_VAR):
        registry = CollectorRegistry()
        registry.register(_LiveProcessesCollector(os.environ[ENV_VAR]))
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise OSError(
            f"cannot serve worker metrics on {host}:{port} (PLATFORM_TASKS_METRICS_PORT): "
            f"{error.strerror or error}"
        ) from None
    _server = server
    return int(server.server_port)
