"""One receiver per signal Celery sends at every task's start, success and end.

At each the platform does several things: its lifecycle lines, the daily statistics, the
count of redelivered runs, the solo pool's time limits and the metrics. Celery's
dispatcher costs about a microsecond per connected receiver and signal (a keyword dict, a
call, a response tuple), more in a worker, whose caches are cold between one task's
receivers and the next's; and each of those read the task's request again from Celery's
thread-local request stack (a microsecond and a half). They register here instead: one
receiver per signal calls them in the order of their :class:`Stage`, with the task id and
request read once. An observer that raises is logged and the others still run, as Celery's
dispatcher does for its receivers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from enum import IntEnum
from typing import Any

from celery import signals

logger = logging.getLogger(__name__)


class Stage(IntEnum):
    """The order observers run in, at a task's start and at its end alike."""

    #: The task_started line first: it is the task's start as the platform measures latency.
    LINES = 0
    STATS = 1
    REDELIVERIES = 2
    #: The solo pool's timer: armed after everything but the metrics' few microseconds.
    TIME_LIMITS = 3
    METRICS = 4


#: (task id, task, request) at task_prerun and task_success.
RunObserver = Callable[[str | None, Any, Any], None]
#: (task id, task, state) at task_postrun.
EndObserver = Callable[[str | None, Any, "str | None"], None]

_at_start: list[tuple[Stage, RunObserver]] = []
_at_success: list[tuple[Stage, RunObserver]] = []
_at_end: list[tuple[Stage, EndObserver]] = []


class Run:
    """A task running on this thread, from its task_prerun to its task_postrun: the one
    record of it every observer reads (its id, request and start), read from a context
    variable in well under a microsecond."""

    __slots__ = ("identity", "outer", "request", "started", "task_id")

    def __init__(self, task_id: str | None, request: Any, outer: Run | None) -> None:
        self.task_id = task_id
        self.request = request
        #: Monotonic time of its task_prerun, for its runtime.
        self.started = time.monotonic()
        #: Its identity as the lifecycle lines encoded it (None until they do, or when
        #: lines are not spliced), for its succeeded line.
        self.identity: str | None = None
        #: The run this one interrupted on the same thread (a task applied eagerly inside
        #: another), current again after this one ends.
        self.outer = outer


_running: ContextVar[Run | None] = ContextVar("platform_tasks_running", default=None)


def current(task_id: str | None) -> Run | None:
    """The run of ``task_id`` if it is the one running on this thread now."""
    run = _running.get()
    return run if run is not None and run.task_id == task_id else None


def _call(observers: list[tuple[Stage, Any]], signal: str, *args: Any) -> None:
    for _stage, observer in observers:
        try:
            observer(*args)
        except Exception:
            logger.error("%s.%s raised at %s", getattr(observer, "__module__", "?"),
                         getattr(observer, "__qualname__", observer), signal, exc_info=True)


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is None:
        return
    request = task.request
    _running.set(Run(task_id, request, _running.get()))
    _call(_at_start, "task_prerun", task_id, task, request)


def _on_success(sender: Any = None, **_: Any) -> None:
    # Sent on the thread that ran the task, between its task_prerun and task_postrun: the
    # current run is that task's (an eager task run inside it has ended).
    running = _running.get()
    if running is None:
        request = getattr(sender, "request", None)
        task_id = getattr(request, "id", None)
    else:
        task_id, request = running.task_id, running.request
    _call(_at_success, "task_success", task_id, sender, request)


def _on_postrun(task_id: str | None = None, task: Any = None, state: str | None = None,
                **_: Any) -> None:
    try:
        running = _running.get()
        if running is not None and running.task_id == task_id:
            _running.set(running.outer)
    finally:
        # Whatever interrupts the bookkeeping (a time limit's signal), the observers still
        # see the task end: the solo pool's timer is disarmed there.
        _call(_at_end, "task_postrun", task_id, task, state)


def _add(observers: list[tuple[Stage, Any]], stage: Stage, observer: Any) -> None:
    if any(existing is observer for _, existing in observers):
        return
    observers.append((stage, observer))
    observers.sort(key=lambda entry: entry[0])


def observe(stage: Stage, *, start: RunObserver | None = None,
            success: RunObserver | None = None, end: EndObserver | None = None) -> None:
    """Call ``start`` at every task's task_prerun, ``success`` at its task_success and
    ``end`` at its task_postrun in this process (and the pool processes it forks), in the
    order of ``stage``. Registering the same observer again changes nothing."""
    for observers, observer in ((_at_start, start), (_at_success, success), (_at_end, end)):
        if observer is not None:
            _add(observers, stage, observer)
    for signal, receiver in ((signals.task_prerun, _on_prerun),
                             (signals.task_success, _on_success),
                             (signals.task_postrun, _on_postrun)):
        signal.connect(receiver, weak=False,
                       dispatch_uid=f"platform-tasks-run-signals-{receiver.__name__}")


def forget(*observers: Any) -> None:
    """Stop calling ``observers`` (tests undo what they registered)."""
    for registered in (_at_start, _at_success, _at_end):
        registered[:] = [entry for entry in registered
                         if not any(entry[1] is observer for observer in observers)]
