"""The in-flight gauge counts the tasks running right now, written at each metrics flush."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import REGISTRY

from platform_tasks.observability import metric_buffer, worker_metrics
from platform_tasks.observability.catalog import TASKS_IN_FLIGHT

TASK = "platform_tasks.default.in_flight_probe"


def running_task() -> SimpleNamespace:
    request = SimpleNamespace(delivery_info={"routing_key": "default"}, headers={}, eta=None)
    return SimpleNamespace(name=TASK, request=request)


def start(task_id: str, task: SimpleNamespace) -> None:
    worker_metrics._prerun(task_id, task, task.request)


def in_flight() -> float | None:
    return REGISTRY.get_sample_value(TASKS_IN_FLIGHT.name, {"queue": "default", "task": TASK})


def test_the_gauge_follows_starts_and_ends_at_each_flush() -> None:
    hooked = worker_metrics._write_in_flight in metric_buffer._flush_hooks
    metric_buffer.before_each_flush(worker_metrics._write_in_flight)
    try:
        _starts_and_ends()
    finally:
        if not hooked:
            metric_buffer._flush_hooks.remove(worker_metrics._write_in_flight)


def _starts_and_ends() -> None:
    start("a", running_task())
    start("b", running_task())
    metric_buffer.flush()
    assert in_flight() == 2.0

    worker_metrics._postrun("a", None, "SUCCESS")
    metric_buffer.flush()
    assert in_flight() == 1.0

    worker_metrics._postrun("b", None, "FAILURE")
    worker_metrics._postrun("b", None, "FAILURE")  # a second end changes nothing
    metric_buffer.flush()
    assert in_flight() == 0.0
