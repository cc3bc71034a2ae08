"""Per-task metrics, buffered on the task's path and written at the next flush: each run's
wait once (a long task's before it ends), its runtime under its outcome, nothing twice."""

from __future__ import annotations

import time
from types import SimpleNamespace

from prometheus_client import REGISTRY

from platform_tasks import headers
from platform_tasks.observability import metric_buffer, worker_metrics
from platform_tasks.observability.catalog import TASK_RUNTIME, TASK_WAIT

TASK = "platform_tasks.default.flush_probe"


def task_waiting(seconds: float) -> SimpleNamespace:
    request = SimpleNamespace(delivery_info={"routing_key": "default"}, eta=None,
                              headers={headers.ENQUEUED_AT: str(time.time() - seconds)})
    return SimpleNamespace(name=TASK, request=request)


def start(task_id: str, task: SimpleNamespace) -> None:
    worker_metrics._prerun(task_id, task, task.request)


def count(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, {"queue": "default", "task": TASK, **labels})
    return value or 0.0


def waits() -> float:
    return count(f"{TASK_WAIT.name}_count")


def waited_total() -> float:
    return count(f"{TASK_WAIT.name}_sum")


def runs(outcome: str) -> float:
    return count(f"{TASK_RUNTIME.name}_count", outcome=outcome)


def test_runs_are_written_at_the_flush_once_each() -> None:
    start("quick", task_waiting(2.0))
    start("long", task_waiting(30.0))
    worker_metrics._postrun("quick", None, "SUCCESS")
    assert (waits(), runs("succeeded")) == (0.0, 0.0)  # buffered, until the flush

    metric_buffer.flush()
    assert waits() == 2.0  # the long task's wait too, although it still runs
    assert 32.0 <= waited_total() < 33.0
    assert runs("succeeded") == 1.0

    metric_buffer.flush()
    worker_metrics._postrun("long", None, "FAILURE")
    worker_metrics._postrun("long", None, "FAILURE")  # a second end changes nothing
    metric_buffer.flush()
    metric_buffer.flush()
    assert waits() == 2.0
    assert (runs("succeeded"), runs("failed")) == (1.0, 1.0)
