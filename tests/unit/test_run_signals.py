"""One receiver per run signal: observers in the order of their stage, the request read
once, a task's success seen with its own id even after an eager run inside it, and an
observer that raises stopping none of the others."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import signals

from platform_tasks import run_signals
from platform_tasks.run_signals import Stage


class Task:
    """A task whose request is counted each time it is read (Celery's is a stack walk)."""

    name = "probe"

    def __init__(self) -> None:
        self.reads = 0
        self.requests: list[str] = []

    @property
    def request(self) -> str:
        self.reads += 1
        return self.requests[-1]


seen: list[tuple[Any, ...]] = []


def metrics_start(task_id: str | None, task: Any, request: Any) -> None:
    seen.append(("metrics start", task_id, request))


def lines_start(task_id: str | None, task: Any, request: Any) -> None:
    seen.append(("lines start", task_id, request))


def broken_start(task_id: str | None, task: Any, request: Any) -> None:
    raise RuntimeError("an observer's own failure")


def lines_success(task_id: str | None, task: Any, request: Any) -> None:
    seen.append(("lines success", task_id, request))


def lines_end(task_id: str | None, task: Any, state: str | None) -> None:
    seen.append(("lines end", task_id, state))


@pytest.fixture
def observers() -> Iterator[None]:
    run_signals.observe(Stage.METRICS, start=metrics_start)
    run_signals.observe(Stage.STATS, start=broken_start)
    run_signals.observe(Stage.LINES, start=lines_start, success=lines_success, end=lines_end)
    run_signals.observe(Stage.LINES, start=lines_start)  # again: still called once
    seen.clear()
    yield
    run_signals.forget(metrics_start, broken_start, lines_start, lines_success, lines_end)


def run(task: Task, task_id: str, inside: Any = None) -> None:
    task.requests.append(f"request of {task_id}")
    signals.task_prerun.send(sender=task, task_id=task_id, task=task)
    if inside is not None:
        inside()
    signals.task_success.send(sender=task, result=None)
    signals.task_postrun.send(sender=task, task_id=task_id, task=task, state="SUCCESS")
    task.requests.pop()


@pytest.mark.usefixtures("observers")
def test_observers_run_in_stage_order_with_the_request_read_once() -> None:
    outer, inner = Task(), Task()
    run(outer, "outer", inside=lambda: run(inner, "inner"))
    assert seen == [
        ("lines start", "outer", "request of outer"),
        ("metrics start", "outer", "request of outer"),  # after the one that raised
        ("lines start", "inner", "request of inner"),
        ("metrics start", "inner", "request of inner"),
        ("lines success", "inner", "request of inner"),
        ("lines end", "inner", "SUCCESS"),
        ("lines success", "outer", "request of outer"),  # its own, after the inner run
        ("lines end", "outer", "SUCCESS"),
    ]
    assert (outer.reads, inner.reads) == (1, 1)


def test_forgotten_observers_are_not_called() -> None:
    run_signals.observe(Stage.LINES, start=lines_start)
    run_signals.forget(lines_start)
    seen.clear()
    run(Task(), "t")
    assert seen == []
