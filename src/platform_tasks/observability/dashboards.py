"""The Grafana dashboards: an overview of every queue, and a drill-down into one queue.

They are built here as plain dicts from the metric catalog, so a renamed metric renames every
query that reads it, and each panel's description names the process serving its series
because that is derived from the catalog too. ``python -m
platform_tasks.observability.dashboards --write`` writes the JSON the chart provisions
(``deploy/helm/platform-tasks/dashboards/``) and the panel tables in ``docs/dashboards.md``;
without ``--write`` it reports what drifted, and a test runs that check.

:func:`panel_queries` lists every query of every panel, also made concrete for a plain
Prometheus API call, for the end-to-end test that runs them against the real platform.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from platform_tasks import generated_files as generated
from platform_tasks.observability import catalog

# The stats turn red where the beat-not-ticking and monitor-stale alerts start counting.
from platform_tasks.observability.alert_rules import BEAT_STALE_SECONDS, MONITOR_STALE_SECONDS
from platform_tasks.observability.catalog import MetricSpec, Source
from platform_tasks.queues import QUEUE_NAMES, QUEUES
from platform_tasks.reference import render

OVERVIEW_UID = "platform-tasks-overview"
QUEUE_UID = "platform-tasks-queue"
DASHBOARD_DIR = Path("deploy/helm/platform-tasks/dashboards")
DOC = Path("docs/dashboards.md")

#: What Grafana 10.3 to 11.x write; older 10.x releases read it without migrating.
SCHEMA_VERSION = 39
TAGS = ("platform-tasks", "celery")

RATE_INTERVAL = "$__rate_interval"
QUEUE_MATCHER = 'queue="$queue"'
#: On every selector: one Prometheus often scrapes several releases (staging and production
#: in two namespaces); "All" (the default) is ``.*``, which also matches series that carry
#: no namespace label at all, as on the local stack.
NAMESPACE_MATCHER = 'namespace=~"$namespace"'
#: Panels and targets both name it: a target without a datasource falls back to the
#: panel's, and a panel without one to Grafana's default, which may not be Prometheus.
DATASOURCE: Mapping[str, str] = MappingProxyType({"type": "prometheus", "uid": "${datasource}"})

SERVED_BY = {
    Source.WORKER: (
        f"every worker's /metrics (job `{catalog.WORKER_JOB}`, port "
        f"{catalog.WORKER_METRICS_PORT})"
    ),
    Source.MONITOR: (
        f"the `platform-tasks monitor` process's /metrics (job `{catalog.MONITOR_JOB}`, port "
        f"{catalog.MONITOR_METRICS_PORT})"
    ),
}

Unit = Literal["s", "ops", "short", "percentunit"]


_EXPOSED = {
    exposed: spec for spec in catalog.METRICS for exposed in spec.exposed_names
}
_METRIC_TOKEN = re.compile(r"\b(?:" + "|".join(sorted(_EXPOSED, key=len, reverse=True)) + r")\b")


# -- PromQL pieces --------------------------------------------------------------------------


def _series(spec: MetricSpec, suffix: str = "", matchers: str = "") -> str:
    name = spec.name + suffix
    if name not in spec.exposed_names:
        raise ValueError(f"{name} is not a series of {spec.name}")
    return f"{name}{{{', '.join(m for m in (NAMESPACE_MATCHER, matchers) if m)}}}"


def _rate(selector: str) -> str:
    return f"rate({selector}[{RATE_INTERVAL}])"


def _by(labels: Sequence[str]) -> str:
    return f"sum by ({', '.join(labels)})" if labels else "sum"


def _quantile(q: float, spec: MetricSpec, by: Sequence[str], matchers: str = "") -> str:
    inner = _rate(_series(spec, "_bucket", matchers))
    return f"histogram_quantile({q}, {_by((*by, 'le'))} ({inner}))"


def _backlog(by: Sequence[str], matchers: str = "") -> str:
    # Ready (every priority sub-list) plus delivered-but-unacked: the work not done yet,
    # which is what KEDA's single LLEN on the plain list undercounts.
    ready = _series(catalog.QUEUE_READY, matchers=matchers)
    unacked = _series(catalog.QUEUE_UNACKED, matchers=matchers)
    return f"{_by(by)} ({ready}) + {_by(by)} ({unacked})"


def _failure_ratio(by: Sequence[str], matchers: str = "") -> str:
    failures = f"{_by(by)} ({_rate(_series(catalog.TASK_FAILURES, matchers=matchers))})"
    runs = f"{_by(by)} ({_rate(_series(catalog.TASK_RUNTIME, '_count', matchers))})"
    # No failure series exist before the first failure; "or 0 * runs" turns that into 0 %
    # instead of an empty panel that could also mean "no metrics at all".
    return f"({failures} or 0 * {runs}) / {runs}"


def metrics_in(expr: str) -> tuple[MetricSpec, ...]:
    """The catalog metrics an expression reads, in catalog order."""
    found = {_EXPOSED[token].name for token in _METRIC_TOKEN.findall(expr)}
    return tuple(spec for spec in catalog.METRICS if spec.name in found)


def concrete(expr: str, *, rate_interval: str = "1m") -> str:
    """``expr`` as a plain Prometheus query: every queue instead of ``$queue``, and a fixed
    window instead of Grafana's ``$__rate_interval``."""
    every_queue = "|".join(QUEUE_NAMES)
    return (
        expr.replace(QUEUE_MATCHER, f'queue=~"{every_queue}"')
        .replace(NAMESPACE_MATCHER, 'namespace=~".*"')
        .replace(RATE_INTERVAL, rate_interval)
    )


# -- panel specifications -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    expr: str
    legend: str
    instant: bool = False


@dataclass(frozen=True, slots=True)
class _Panel:
    title: str
    what: str
    targets: tuple[_Target, ...]
    unit: Unit
    kind: Literal["timeseries", "stat"] = "timeseries"
    width: int = 8
    height: int = 8
    #: What must happen before the panel's series exist, for panels empty on a healthy day.
    empty_until: str | None = None
    stack: bool = False
    #: Legend names (a regex) drawn against a second axis on the right.
    right_axis: str | None = None
    #: Stat thresholds: (value, colour) steps above a green base.
    thresholds: tuple[tuple[float, str], ...] = ()
    value_texts: tuple[tuple[int, str, str], ...] = ()
    stat_text: Literal["auto", "name", "value"] = "auto"
    links_to_queue: bool = False

    @property
    def needs_failure(self) -> bool:
        return self.empty_until is not None

    @property
    def sources(self) -> tuple[Source, ...]:
        used = {spec.source for t in self.targets for spec in metrics_in(t.expr)}
        return tuple(source for source in Source if source in used)

    @property
    def description(self) -> str:
        served = " and ".join(SERVED_BY[source] for source in self.sources)
        text = f"{self.what} Served by {served}."
        if self.empty_until:
            text += f" Empty until {self.empty_until}: no data here is good news."
        return text


@dataclass(frozen=True, slots=True)
class _Row:
    title: str
    panels: tuple[_Panel, ...]


@dataclass(frozen=True, slots=True)
class _Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[_Row, ...]
    variables: tuple[dict[str, Any], ...]
    intro: str | None = None


def _overview() -> _Dashboard:
    runs = _series(catalog.TASK_RUNTIME, "_count")
    q = ("queue",)
    latency = tuple(
        _Panel(
            f"{label} p{round(quantile * 100)} by queue",
            f"{what}, {round(quantile * 100)}th percentile per queue.",
            (_Target(_quantile(quantile, spec, q), "{{queue}}"),),
            "s", links_to_queue=True,
        )
        for label, what, spec in (
            ("Wait time", "Time from publish (or ETA) to start", catalog.TASK_WAIT),
            ("Runtime", "Time tasks ran, every outcome", catalog.TASK_RUNTIME),
        )
        for quantile in (0.5, 0.95, 0.99)
    )
    rows = (
        _Row("Is work flowing", (
            _Panel(
                "Throughput by queue",
                "Tasks finished per second (any outcome), per queue.",
                (_Target(f"{_by(q)} ({_rate(runs)})", "{{queue}}"),),
                "ops", stack=True, links_to_queue=True,
            ),
            _Panel(
                "Throughput by outcome",
                "Tasks finished per second over every queue, split into succeeded, failed "
                "and retried.",
                (_Target(f"{_by(('outcome',))} ({_rate(runs)})", "{{outcome}}"),),
                "ops", stack=True,
            ),
            _Panel(
                "Tasks in flight by queue",
                "Tasks running right now, summed over every worker of the queue.",
                (_Target(f"{_by(q)} ({_series(catalog.TASKS_IN_FLIGHT)})", "{{queue}}"),),
                "short", stack=True, links_to_queue=True,
            ),
        )),
        _Row("Backlog", (
            _Panel(
                "Backlog by queue",
                "Messages not done yet: ready in every priority sub-list plus delivered and "
                "unacknowledged.",
                (_Target(_backlog(q), "{{queue}}"),),
                "short", links_to_queue=True,
            ),
            _Panel(
                "Oldest waiting message by queue",
                "Age of the oldest message still waiting to be delivered (0 when the queue "
                "is empty): how late the queue is running.",
                (_Target(
                    f"max by (queue) ({_series(catalog.QUEUE_OLDEST_AGE)})", "{{queue}}"
                ),),
                "s", links_to_queue=True,
            ),
            _Panel(
                "Worker replicas vs backlog by queue",
                "Consumers (workers seen by their heartbeats: one per pod, so the replica "
                "count KEDA scaled to), dashed on the right axis, against the backlog. "
                "Backlog with zero consumers means nothing is working the queue.",
                (
                    _Target(_backlog(q), "{{queue}} backlog"),
                    _Target(
                        f"{_by(q)} ({_series(catalog.QUEUE_CONSUMERS)})", "{{queue}} consumers"
                    ),
                ),
                "short", right_axis=".* consumers", links_to_queue=True,
            ),
        )),
        _Row("How late, how long", latency),
        _Row("What is failing", (
            _Panel(
                "Failure ratio by queue",
                "Share of finished runs that ended in FAILURE (a retried run is not a "
                "failure).",
                (_Target(_failure_ratio(q), "{{queue}}"),),
                "percentunit", width=12, links_to_queue=True,
            ),
            _Panel(
                "Failures by queue and exception",
                "Runs per second that ended in FAILURE, by exception type.",
                (_Target(
                    f"{_by(('queue', 'exception'))} "
                    f"({_rate(_series(catalog.TASK_FAILURES))})",
                    "{{queue}}: {{exception}}",
                ),),
                "ops", width=12, empty_until="a task fails",
            ),
            _Panel(
                "Retries by queue and exception",
                "Retries scheduled per second, by the exception that caused them.",
                (_Target(
                    f"{_by(('queue', 'exception'))} ({_rate(_series(catalog.TASK_RETRIES))})",
                    "{{queue}}: {{exception}}",
                ),),
                "ops", empty_until="a task retries",
            ),
            _Panel(
                "Dead letters by queue and reason",
                "Tasks given up on per second: retries exhausted, permanent errors, "
                "rejected messages.",
                (_Target(
                    f"{_by(('queue', 'reason'))} ({_rate(_series(catalog.DEAD_LETTERS))})",
                    "{{queue}}: {{reason}}",
                ),),
                "ops", empty_until="a task is dead-lettered",
            ),
            _Panel(
                "Rejected and revoked by queue",
                "Messages refused by a worker (unknown task, undecodable, disallowed "
                "content), and tasks dropped because they were revoked or expired.",
                (
                    _Target(
                        f"{_by(('queue', 'reason'))} "
                        f"({_rate(_series(catalog.TASKS_REJECTED))})",
                        "{{queue}} rejected: {{reason}}",
                    ),
                    _Target(
                        f"{_by(q)} ({_rate(_series(catalog.TASKS_REVOKED))})",
                        "{{queue}} revoked",
                    ),
                ),
                "ops", empty_until="a message is rejected or a task revoked",
            ),
        )),
        _Row("Workers", (
            _Panel(
                "Worker restarts by queue (15 min)",
                "Times a worker's main process restarted in place within the last 15 "
                "minutes. A pod replaced by a new one is not a restart here: it shows in "
                "the pods scraped instead.",
                (_Target(
                    f"{_by(q)} (changes({_series(catalog.WORKER_START_TIME)}[15m]))",
                    "{{queue}}",
                ),),
                "short", width=12, links_to_queue=True,
            ),
            _Panel(
                "Worker pods scraped by queue",
                "Worker pods Prometheus scrapes, per queue; compare with the consumers "
                "in the backlog row: a pod that serves metrics but sends no heartbeat is "
                "stuck.",
                (_Target(
                    f"count by (queue) ({_series(catalog.WORKER_START_TIME)})", "{{queue}}"
                ),),
                "short", width=12, links_to_queue=True,
            ),
        )),
        _Row("Beat", (
            _Panel(
                "Seconds since beat's last tick",
                "How long ago the leader beat last ran its scheduler loop; it ticks at "
                "least every 5 s, so half a minute means beat is stuck, restarting or "
                "waiting for the lock.",
                (_Target(
                    f"time() - max({_series(catalog.BEAT_LAST_TICK)})", "last tick",
                    instant=True,
                ),),
                "s", kind="stat", width=6, thresholds=((30, "orange"), (BEAT_STALE_SECONDS, "red")),
            ),
            _Panel(
                "Beat due entries",
                "Schedule entries whose run time has passed and that beat has not sent: "
                "above 0 for more than a tick means beat is behind.",
                (_Target(f"max({_series(catalog.BEAT_DUE_ENTRIES)})", "due entries"),),
                "short", width=18,
            ),
        )),
        _Row("Broker and Sentinel", (
            _Panel(
                "Broker master",
                "Whether the monitor reached the broker's master and it answered as master.",
                (_Target(f"min({_series(catalog.BROKER_UP)})", "broker", instant=True),),
                "short", kind="stat", width=4, height=6,
                thresholds=((1, "green"),), value_texts=((0, "down", "red"), (1, "up", "green")),
            ),
            _Panel(
                "Master address",
                "The master address the Sentinels agree on; it changes at a failover.",
                (_Target(
                    f"max by (address) ({_series(catalog.SENTINEL_MASTER)})", "{{address}}",
                    instant=True,
                ),),
                "short", kind="stat", width=6, height=6, stat_text="name",
            ),
            _Panel(
                "Seconds since the monitor's last poll",
                "Every monitor panel is only as fresh as this: the monitor polls every few "
                "seconds.",
                (_Target(
                    f"time() - max({_series(catalog.MONITOR_LAST_POLL)})", "last poll",
                    instant=True,
                ),),
                "s", kind="stat", width=6, height=6,
                thresholds=((30, "orange"), (MONITOR_STALE_SECONDS, "red")),
            ),
            _Panel(
                "Monitor poll errors by check",
                "Failed monitor checks per second, by what it was reading (broker, queues, "
                "beat, sentinel).",
                (_Target(
                    f"{_by(('check',))} ({_rate(_series(catalog.MONITOR_POLL_ERRORS))})",
                    "{{check}}",
                ),),
                "ops", width=8, height=6, empty_until="a monitor check fails",
            ),
            _Panel(
                "Replicas",
                "Replicas connected to the master (as the master reports them) and healthy "
                "replicas (as the Sentinels see them).",
                (
                    _Target(
                        f"max({_series(catalog.BROKER_CONNECTED_REPLICAS)})",
                        "connected to the master",
                    ),
                    _Target(
                        f"max({_series(catalog.SENTINEL_REPLICAS)})", "healthy, per Sentinel"
                    ),
                ),
                "short", width=12,
            ),
            _Panel(
                "Sentinels",
                "Sentinels that answered the monitor, Sentinels watching the master, and the "
                "quorum: a failover needs the quorum to agree, so reachable at or below "
                "quorum means one more lost Sentinel stops failovers.",
                (
                    _Target(f"max({_series(catalog.SENTINEL_REACHABLE)})", "reachable"),
                    _Target(f"max({_series(catalog.SENTINEL_KNOWN)})", "known to the master"),
                    _Target(f"max({_series(catalog.SENTINEL_QUORUM)})", "quorum"),
                ),
                "short", width=12,
            ),
        )),
    )
    intro = (
        "**Where these series come from.** Task series come from every worker's `/metrics` "
        f"(job `{catalog.WORKER_JOB}`, port {catalog.WORKER_METRICS_PORT}); queue, beat, "
        "broker and Sentinel series from the singleton `platform-tasks monitor` "
        f"(job `{catalog.MONITOR_JOB}`, port {catalog.MONITOR_METRICS_PORT}). Each panel's "
        "description names its source. The chart's celery-exporter "
        f"(job `{catalog.EXPORTER_JOB}`) serves `celery_*` series for the celery-mixin "
        "dashboards and alerts; nothing here reads them. Click a queue in a per-queue "
        "panel to open its drill-down."
    )
    return _Dashboard(
        OVERVIEW_UID,
        "platform-tasks / Overview",
        "Every queue of platform-tasks at a glance: throughput, backlog, latency, failures, "
        "workers, beat, broker and Sentinel. Reads only the platform's own series (workers "
        "and the platform-tasks monitor); celery-exporter's series are for the celery-mixin "
        "dashboards.",
        rows,
        (_datasource_variable(), _namespace_variable()),
        intro,
    )


def _drilldown() -> _Dashboard:
    m = QUEUE_MATCHER
    runs = _series(catalog.TASK_RUNTIME, "_count", m)
    threads_queues = ", ".join(
        str(name) for name, policy in QUEUES.items() if policy.pool == "threads"
    )
    rows = (
        _Row("Is work flowing", (
            _Panel(
                "Throughput by task and outcome",
                "Tasks of this queue finished per second, by task and outcome.",
                (_Target(f"{_by(('task', 'outcome'))} ({_rate(runs)})",
                         "{{task}} {{outcome}}"),),
                "ops", stack=True,
            ),
            _Panel(
                "Tasks in flight by task",
                "Tasks of this queue running right now, over every worker.",
                (_Target(f"{_by(('task',))} ({_series(catalog.TASKS_IN_FLIGHT, matchers=m)})",
                         "{{task}}"),),
                "short", stack=True,
            ),
            _Panel(
                "Worker replicas vs backlog",
                "Consumers (workers seen by their heartbeats, one per pod), dashed on the "
                "right axis, against ready plus unacknowledged messages.",
                (
                    _Target(_backlog((), m), "backlog"),
                    _Target(f"sum({_series(catalog.QUEUE_CONSUMERS, matchers=m)})",
                            "consumers"),
                ),
                "short", right_axis="consumers",
            ),
        )),
        _Row("Backlog", (
            _Panel(
                "Ready messages by priority",
                "Messages waiting, per priority sub-list (0 is the plain list KEDA counts).",
                (_Target(f"{_by(('priority',))} ({_series(catalog.QUEUE_READY, matchers=m)})",
                         "priority {{priority}}"),),
                "short", stack=True,
            ),
            _Panel(
                "Unacknowledged messages",
                "Messages delivered to a worker and not yet acknowledged: prefetched or "
                "running. They come back only after the visibility timeout if a worker dies.",
                (_Target(f"sum({_series(catalog.QUEUE_UNACKED, matchers=m)})", "unacked"),),
                "short",
            ),
            _Panel(
                "Oldest waiting message",
                "Age of the oldest message still waiting to be delivered (0 when empty).",
                (_Target(f"max({_series(catalog.QUEUE_OLDEST_AGE, matchers=m)})", "oldest"),),
                "s",
            ),
        )),
        _Row("How late, how long", (
            _Panel(
                "Wait time percentiles",
                "Time from publish (or ETA) to start: 50th, 95th and 99th percentile.",
                tuple(
                    _Target(_quantile(quantile, catalog.TASK_WAIT, (), m),
                            f"p{round(quantile * 100)}")
                    for quantile in (0.5, 0.95, 0.99)
                ),
                "s", width=12,
            ),
            _Panel(
                "Runtime percentiles",
                "Time tasks ran, every outcome: 50th, 95th and 99th percentile.",
                tuple(
                    _Target(_quantile(quantile, catalog.TASK_RUNTIME, (), m),
                            f"p{round(quantile * 100)}")
                    for quantile in (0.5, 0.95, 0.99)
                ),
                "s", width=12,
            ),
            _Panel(
                "Wait time p95 by task",
                "95th percentile of the time from publish (or ETA) to start, per task.",
                (_Target(_quantile(0.95, catalog.TASK_WAIT, ("task",), m), "{{task}}"),),
                "s", width=12,
            ),
            _Panel(
                "Runtime p95 by task and outcome",
                "95th percentile of the time tasks ran, per task and outcome.",
                (_Target(_quantile(0.95, catalog.TASK_RUNTIME, ("task", "outcome"), m),
                         "{{task}} {{outcome}}"),),
                "s", width=12,
            ),
        )),
        _Row("What is failing", (
            _Panel(
                "Failure ratio",
                "Share of finished runs that ended in FAILURE (a retried run is not a "
                "failure).",
                (_Target(_failure_ratio((), m), "failure ratio"),),
                "percentunit",
            ),
            _Panel(
                "Failures by task and exception",
                "Runs per second that ended in FAILURE, by task and exception type.",
                (_Target(
                    f"{_by(('task', 'exception'))} "
                    f"({_rate(_series(catalog.TASK_FAILURES, matchers=m))})",
                    "{{task}}: {{exception}}",
                ),),
                "ops", empty_until="a task fails",
            ),
            _Panel(
                "Retries by task and exception",
                "Retries scheduled per second, by task and the exception that caused them.",
                (_Target(
                    f"{_by(('task', 'exception'))} "
                    f"({_rate(_series(catalog.TASK_RETRIES, matchers=m))})",
                    "{{task}}: {{exception}}",
                ),),
                "ops", empty_until="a task retries",
            ),
            _Panel(
                "Dead letters by task and reason",
                "Tasks given up on per second, by task and reason.",
                (_Target(
                    f"{_by(('task', 'reason'))} "
                    f"({_rate(_series(catalog.DEAD_LETTERS, matchers=m))})",
                    "{{task}}: {{reason}}",
                ),),
                "ops", empty_until="a task is dead-lettered",
            ),
            _Panel(
                "Rejected messages by reason",
                "Messages a worker refused to run: unknown task, undecodable, disallowed "
                "content.",
                (_Target(
                    f"{_by(('reason',))} ({_rate(_series(catalog.TASKS_REJECTED, matchers=m))})",
                    "{{reason}}",
                ),),
                "ops", empty_until="a message is rejected",
            ),
            _Panel(
                "Revoked tasks by task",
                "Tasks dropped or stopped because they were revoked or expired.",
                (_Target(
                    f"{_by(('task',))} ({_rate(_series(catalog.TASKS_REVOKED, matchers=m))})",
                    "{{task}}",
                ),),
                "ops", empty_until="a task is revoked",
            ),
        )),
        _Row("Workers", (
            _Panel(
                "Worker restarts by pod (15 min)",
                "Times each worker's main process restarted in place within the last 15 "
                "minutes.",
                (_Target(
                    f"max by (instance) "
                    f"(changes({_series(catalog.WORKER_START_TIME, matchers=m)}[15m]))",
                    "{{instance}}",
                ),),
                "short",
            ),
            _Panel(
                "Worker pods scraped",
                "Worker pods of this queue Prometheus scrapes right now; compare with the "
                "consumers: a pod that serves metrics but sends no heartbeat is stuck.",
                (_Target(f"count({_series(catalog.WORKER_START_TIME, matchers=m)})", "pods"),),
                "short",
            ),
            _Panel(
                "Pool process starts by pod",
                "Pool processes (prefork children, a worker group's single-loop workers) "
                "started per second: the first start, then a replacement after a crash or a "
                "hard time limit. Queues with a threads pool "
                f"({threads_queues}) never start any.",
                (_Target(
                    f"sum by (instance) "
                    f"({_rate(_series(catalog.POOL_PROCESS_STARTS, matchers=m))})",
                    "{{instance}}",
                ),),
                "ops",
            ),
            _Panel(
                "Payments deduplicated",
                "Payment runs that found their idempotency key already charged and charged "
                "nothing: proof a redelivered or retried payment did no harm. Only the "
                "payments queue has any.",
                (_Target(
                    f"{_by(('task',))} "
                    f"({_rate(_series(catalog.PAYMENTS_DEDUPLICATED, matchers=m))})",
                    "{{task}}",
                ),),
                "ops", width=24, empty_until="a payment runs a second time",
            ),
        )),
    )
    return _Dashboard(
        QUEUE_UID,
        "platform-tasks / Queue",
        "One platform-tasks queue in detail: per task throughput, latency and failures, its "
        "backlog by priority, and its workers. Pick the queue at the top.",
        rows,
        (_datasource_variable(), _namespace_variable(), _queue_variable()),
    )


# -- rendering to Grafana's JSON model ------------------------------------------------------


def _datasource_variable() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
    }


def _namespace_variable() -> dict[str, Any]:
    query = f"label_values({catalog.QUEUE_READY.name}, namespace)"
    return {
        "name": "namespace",
        "label": "Namespace",
        "type": "query",
        "datasource": dict(DATASOURCE),
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor"},
        "current": {"selected": True, "text": "All", "value": "$__all"},
        "hide": 0,
        "includeAll": True,
        # Not Grafana's default (a list of the values found): with no namespace label at
        # all, .* still matches every series.
        "allValue": ".*",
        "multi": False,
        "options": [],
        "refresh": 2,
        "regex": "",
        "sort": 1,
    }


def _queue_variable() -> dict[str, Any]:
    query = f"label_values({catalog.QUEUE_READY.name}{{{NAMESPACE_MATCHER}}}, queue)"
    return {
        "name": "queue",
        "label": "Queue",
        "type": "query",
        "datasource": dict(DATASOURCE),
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor"},
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        # On time range change, so a queue added by an upgrade appears without a reload.
        "refresh": 2,
        "regex": "",
        "sort": 1,
    }


def _target(target: _Target, ref_id: str) -> dict[str, Any]:
    return {
        "datasource": dict(DATASOURCE),
        "editorMode": "code",
        "expr": target.expr,
        "instant": target.instant,
        "legendFormat": target.legend,
        "range": not target.instant,
        "refId": ref_id,
    }


def _ref_ids(panel: _Panel) -> Iterator[tuple[str, _Target]]:
    for index, target in enumerate(panel.targets):
        yield chr(ord("A") + index), target


_QUEUE_LINK = {
    "title": "Open the ${__field.labels.queue} queue",
    "url": (
        f"/d/{QUEUE_UID}?var-queue=${{__field.labels.queue}}&${{datasource:queryparam}}"
        "&${__url_time_range}"
    ),
}


def _field_config(panel: _Panel) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, "min": 0}
    if panel.unit == "percentunit":
        defaults["max"] = 1
    if panel.links_to_queue:
        defaults["links"] = [dict(_QUEUE_LINK)]
    overrides: list[dict[str, Any]] = []
    if panel.kind == "timeseries":
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {
            "drawStyle": "line",
            "fillOpacity": 10 if not panel.stack else 30,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if panel.stack else "none"},
        }
        if panel.right_axis:
            overrides.append({
                "matcher": {"id": "byRegexp", "options": panel.right_axis},
                "properties": [
                    {"id": "custom.axisPlacement", "value": "right"},
                    {"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}},
                ],
            })
    else:
        defaults["color"] = {"mode": "thresholds"}
        steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
        if panel.value_texts:
            steps = [{"color": "red", "value": None}]
        steps += [{"color": colour, "value": value} for value, colour in panel.thresholds]
        defaults["thresholds"] = {"mode": "absolute", "steps": steps}
        if panel.value_texts:
            defaults["mappings"] = [{
                "type": "value",
                "options": {
                    str(value): {"color": colour, "index": index, "text": text}
                    for index, (value, text, colour) in enumerate(panel.value_texts)
                },
            }]
    return {"defaults": defaults, "overrides": overrides}


def _options(panel: _Panel) -> dict[str, Any]:
    if panel.kind == "stat":
        return {
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": panel.stat_text,
        }
    return {
        "legend": {
            "calcs": ["lastNotNull", "max"],
            "displayMode": "table",
            "placement": "bottom",
            "showLegend": True,
        },
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def _panel(panel: _Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    return {
        "datasource": dict(DATASOURCE),
        "description": panel.description,
        "fieldConfig": _field_config(panel),
        "gridPos": grid,
        "id": panel_id,
        "options": _options(panel),
        "targets": [_target(target, ref_id) for ref_id, target in _ref_ids(panel)],
        "title": panel.title,
        "type": panel.kind,
    }


def _layout(spec: _Dashboard) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    y = 0
    if spec.intro:
        panels.append({
            "gridPos": {"h": 3, "w": 24, "x": 0, "y": y},
            "id": len(panels) + 1,
            "options": {"content": spec.intro, "mode": "markdown"},
            "title": "About this dashboard",
            "type": "text",
        })
        y += 3
    for row in spec.rows:
        panels.append({
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "id": len(panels) + 1,
            "panels": [],
            "title": row.title,
            "type": "row",
        })
        y += 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                y, x, line_height = y + line_height, 0, 0
            grid = {"h": panel.height, "w": panel.width, "x": x, "y": y}
            panels.append(_panel(panel, len(panels) + 1, grid))
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return panels


def _render(spec: _Dashboard) -> dict[str, Any]:
    return {
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "description": spec.description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{
            "asDropdown": False,
            "includeVars": False,
            "keepTime": True,
            "tags": [TAGS[0]],
            "targetBlank": False,
            "title": "platform-tasks",
            "type": "dashboards",
        }],
        "panels": _layout(spec),
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": list(TAGS),
        "templating": {"list": list(spec.variables)},
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": spec.title,
        "uid": spec.uid,
        "version": 1,
        "weekStart": "",
    }


_SPECS: tuple[Callable[[], _Dashboard], ...] = (_overview, _drilldown)


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard's JSON model, by uid."""
    return {spec.uid: _render(spec) for spec in (build() for build in _SPECS)}


# -- the queries, for the end-to-end test ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One query of one dashboard panel."""

    dashboard_uid: str
    panel_title: str
    ref_id: str
    #: As written in the dashboard, with Grafana's variables.
    expr: str
    #: The same for a plain Prometheus query: every queue, a fixed rate window.
    concrete_expr: str
    #: True for panels that only have data after a failure, retry, dead letter, rejection,
    #: revocation or similar; an empty result there is not a broken query.
    needs_failure: bool


def panel_queries(*, rate_interval: str = "1m") -> list[PanelQuery]:
    """Every query of every panel of every dashboard, in dashboard and panel order."""
    queries = []
    for spec in (build() for build in _SPECS):
        for row in spec.rows:
            for panel in row.panels:
                for ref_id, target in _ref_ids(panel):
                    queries.append(PanelQuery(
                        spec.uid, panel.title, ref_id, target.expr,
                        concrete(target.expr, rate_interval=rate_interval),
                        panel.needs_failure,
                    ))
    return queries


# -- files ----------------------------------------------------------------------------------


def dashboard_json(model: dict[str, Any]) -> str:
    """The committed form: sorted keys, so a regeneration diffs only what changed."""
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _panel_table(spec: _Dashboard) -> str:
    lines = ["| row | panel | shows | served by | empty on a healthy day |",
             "|---|---|---|---|---|"]
    for row in spec.rows:
        for panel in row.panels:
            served = ", ".join(
                "worker /metrics" if source is Source.WORKER else "`platform-tasks monitor`"
                for source in panel.sources
            )
            empty = f"yes, until {panel.empty_until}" if panel.empty_until else "no"
            lines.append(f"| {row.title} | {panel.title} | {panel.what} | {served} | {empty} |")
    return "\n".join(lines)


def doc_sections() -> dict[str, str]:
    """The generated parts of ``docs/dashboards.md``: one panel table per dashboard."""
    return {f"panels-{spec.uid}": _panel_table(spec) for spec in (b() for b in _SPECS)}


def generated_files(root: Path) -> dict[Path, str]:
    """Every file this module generates under ``root``, relative path to content."""
    files = {
        DASHBOARD_DIR / f"{uid}.json": dashboard_json(model)
        for uid, model in dashboards().items()
    }
    files[DOC] = render((root / DOC).read_text(encoding="utf-8"), doc_sections())
    return files


def drifted(root: Path) -> list[Path]:
    """The generated files under ``root`` that are missing or differ from the code."""
    return generated.drifted(root, generated_files)


def main(argv: list[str] | None = None) -> int:
    return generated.main(argv, module="platform_tasks.observability.dashboards",
                          description=__doc__, generate=generated_files)


if __name__ == "__main__":
    sys.exit(main())
