"""Every metric the platform exports: name, type, labels, meaning and which process serves it.

This module is the one place metric names are spelled. The worker and monitor define their
collectors from it, ``docs/metrics.md`` is generated from it, and the dashboards, alert rules
and the Prometheus-backed test read it. It imports nothing from ``prometheus_client`` on
purpose: the worker must set the multiprocess directory before that import happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class Source(StrEnum):
    """The process that serves a metric on its ``/metrics`` endpoint."""

    WORKER = "worker"
    MONITOR = "monitor"


MetricKind = Literal["counter", "gauge", "histogram"]

#: How a gauge written by several processes of one pod is combined (prometheus_client's
#: multiprocess modes); counters and histograms are always summed.
GaugeMode = Literal["livesum", "liveall", "max", "mostrecent"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: MetricKind
    source: Source
    labels: tuple[str, ...]
    description: str
    buckets: tuple[float, ...] = ()
    gauge_mode: GaugeMode = "livesum"

    @property
    def exposed_names(self) -> tuple[str, ...]:
        """The series names Prometheus stores for this metric."""
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


#: Seconds; from a 5 ms no-op to the longest hard time limit (media: 15 min).
RUNTIME_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    900.0,
)
#: Seconds a message waited; scheduled (countdown) tasks can wait hours.
WAIT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 14400.0,
)

QUEUE_TASK = ("queue", "task")

# -- served by every worker ---------------------------------------------------------------

TASK_RUNTIME = MetricSpec(
    "platform_tasks_task_runtime_seconds", "histogram", Source.WORKER,
    (*QUEUE_TASK, "outcome"),
    "Time a task ran, by outcome (succeeded, failed, retried); its _count is throughput.",
    buckets=RUNTIME_BUCKETS,
)
TASK_WAIT = MetricSpec(
    "platform_tasks_task_wait_seconds", "histogram", Source.WORKER, QUEUE_TASK,
    "Time from when a task could first run (its publish, from the enqueued-at header, or "
    "its ETA for a countdown) to its start.",
    buckets=WAIT_BUCKETS,
)
TASK_RETRIES = MetricSpec(
    "platform_tasks_task_retries_total", "counter", Source.WORKER, (*QUEUE_TASK, "exception"),
    "Retries scheduled, by the exception that caused them.",
)
TASK_FAILURES = MetricSpec(
    "platform_tasks_task_failures_total", "counter", Source.WORKER, (*QUEUE_TASK, "exception"),
    "Runs that ended in FAILURE, by exception type.",
)
TASKS_IN_FLIGHT = MetricSpec(
    "platform_tasks_tasks_in_flight", "gauge", Source.WORKER, QUEUE_TASK,
    "Tasks running right now in this worker.",
    gauge_mode="livesum",
)
TASKS_REJECTED = MetricSpec(
    "platform_tasks_tasks_rejected_total", "counter", Source.WORKER, ("queue", "reason"),
    "Messages the worker refused to run (unknown task, undecodable, disallowed content).",
)
TASKS_REVOKED = MetricSpec(
    "platform_tasks_tasks_revoked_total", "counter", Source.WORKER, QUEUE_TASK,
    "Tasks dropped or stopped because they were revoked or expired.",
)
DEAD_LETTERS = MetricSpec(
    "platform_tasks_dead_letters_total", "counter", Source.WORKER, (*QUEUE_TASK, "reason"),
    "Tasks given up on: retries exhausted, permanent errors, rejected messages.",
)
PAYMENTS_DEDUPLICATED = MetricSpec(
    "platform_tasks_payments_deduplicated_total", "counter", Source.WORKER, QUEUE_TASK,
    "Payment runs that found their idempotency key already charged and charged nothing.",
)
WORKER_START_TIME = MetricSpec(
    "platform_tasks_worker_start_time_seconds", "gauge", Source.WORKER, ("queue",),
    "Unix time the worker's main process started; changes() of it counts restarts.",
    gauge_mode="max",
)
POOL_PROCESS_STARTS = MetricSpec(
    "platform_tasks_pool_process_starts_total", "counter", Source.WORKER, ("queue",),
    "Pool processes started: prefork children, and the single-loop processes of a worker "
    "group (a replacement after a crash or time limit counts too).",
)

# -- served by the singleton monitor ------------------------------------------------------

QUEUE_READY = MetricSpec(
    "platform_tasks_queue_ready_messages", "gauge", Source.MONITOR, ("queue", "priority"),
    "Messages waiting in a queue, per priority sub-list: kombu files priorities 0-9 into "
    "the sub-lists 0 (the plain list), 3, 6 and 9.",
)
QUEUE_UNACKED = MetricSpec(
    "platform_tasks_queue_unacked_messages", "gauge", Source.MONITOR, ("queue",),
    "Messages delivered to a worker and not yet acknowledged (prefetched, running, or held "
    "by the worker until their countdown/ETA).",
)
QUEUE_OLDEST_AGE = MetricSpec(
    "platform_tasks_queue_oldest_message_age_seconds", "gauge", Source.MONITOR, ("queue",),
    "Age of the oldest waiting message (0 when the queue is empty).",
)
QUEUE_CONSUMERS = MetricSpec(
    "platform_tasks_queue_consumers", "gauge", Source.MONITOR, ("queue",),
    "Workers consuming the queue, from their heartbeats.",
)
BEAT_LAST_TICK = MetricSpec(
    "platform_tasks_beat_last_tick_timestamp_seconds", "gauge", Source.MONITOR, (),
    "Unix time of the leader beat's last scheduler tick (0 when no beat ever ticked).",
)
BEAT_DUE_ENTRIES = MetricSpec(
    "platform_tasks_beat_due_entries", "gauge", Source.MONITOR, (),
    "Schedule entries whose run time has passed and that beat has not sent yet.",
)
BROKER_UP = MetricSpec(
    "platform_tasks_broker_up", "gauge", Source.MONITOR, (),
    "1 when the monitor reached the broker's master and it answered as master, else 0.",
)
BROKER_CONNECTED_REPLICAS = MetricSpec(
    "platform_tasks_broker_connected_replicas", "gauge", Source.MONITOR, (),
    "Replicas connected to the master, as the master reports them.",
)
SENTINEL_MASTER = MetricSpec(
    "platform_tasks_sentinel_master_info", "gauge", Source.MONITOR, ("address",),
    "1 for the master address the first answering Sentinel names (the label changes at a "
    "failover; no series while no Sentinel answers).",
)
SENTINEL_REACHABLE = MetricSpec(
    "platform_tasks_sentinel_reachable_sentinels", "gauge", Source.MONITOR, (),
    "Sentinels from the configured list that answered the monitor.",
)
SENTINEL_KNOWN = MetricSpec(
    "platform_tasks_sentinel_known_sentinels", "gauge", Source.MONITOR, (),
    "Sentinels watching the master, as the first reachable Sentinel sees them (itself too).",
)
SENTINEL_QUORUM = MetricSpec(
    "platform_tasks_sentinel_quorum", "gauge", Source.MONITOR, (),
    "Sentinels that must agree the master is down before a failover.",
)
SENTINEL_REPLICAS = MetricSpec(
    "platform_tasks_sentinel_replicas", "gauge", Source.MONITOR, (),
    "Healthy replicas of the master, as the Sentinels see them.",
)
MONITOR_POLL_ERRORS = MetricSpec(
    "platform_tasks_monitor_poll_errors_total", "counter", Source.MONITOR, ("check",),
    "Monitor polls that failed, by what it was reading.",
)
MONITOR_LAST_POLL = MetricSpec(
    "platform_tasks_monitor_last_poll_timestamp_seconds", "gauge", Source.MONITOR, (),
    "Unix time the monitor last finished a poll of the broker.",
)

METRICS: tuple[MetricSpec, ...] = (
    TASK_RUNTIME, TASK_WAIT, TASK_RETRIES, TASK_FAILURES, TASKS_IN_FLIGHT, TASKS_REJECTED,
    TASKS_REVOKED, DEAD_LETTERS, PAYMENTS_DEDUPLICATED, WORKER_START_TIME, POOL_PROCESS_STARTS,
    QUEUE_READY, QUEUE_UNACKED, QUEUE_OLDEST_AGE, QUEUE_CONSUMERS, BEAT_LAST_TICK,
    BEAT_DUE_ENTRIES, BROKER_UP, BROKER_CONNECTED_REPLICAS, SENTINEL_MASTER, SENTINEL_REACHABLE,
    SENTINEL_KNOWN, SENTINEL_QUORUM, SENTINEL_REPLICAS, MONITOR_POLL_ERRORS, MONITOR_LAST_POLL,
)

#: Prometheus job names the chart's ServiceMonitors/PodMonitors and the local test config use.
WORKER_JOB = "platform-tasks-worker"
MONITOR_JOB = "platform-tasks-monitor"
EXPORTER_JOB = "celery-exporter"

#: Default ports (the chart's container ports; the local stack picks free ones instead).
WORKER_METRICS_PORT = 9808
MONITOR_METRICS_PORT = 9809


def by_source(source: Source) -> tuple[MetricSpec, ...]:
    return tuple(spec for spec in METRICS if spec.source is source)


def markdown_table() -> str:
    """The metrics reference for ``docs/metrics.md``."""
    rows = ["| metric | type | labels | served by | meaning |", "|---|---|---|---|---|"]
    for spec in METRICS:
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "—"
        rows.append(
            f"| `{spec.name}` | {spec.kind} | {labels} | {spec.source.value} | "
            f"{spec.description} |"
        )
    return "\n".join(rows)
