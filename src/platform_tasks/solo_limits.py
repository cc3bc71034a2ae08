"""Soft and hard time limits for the solo pool, which Celery does not enforce there.

Celery's prefork pool enforces a task's limits from the parent process; the solo pool runs the
task on the worker's own loop and ignores them. A solo worker of this platform arms a
``SIGALRM`` timer when a task starts, so the limits mean the same on every pool:

- at the soft limit, :class:`~celery.exceptions.SoftTimeLimitExceeded` is raised inside the
  task (as prefork does), which may clean up;
- at the hard limit, :class:`~billiard.exceptions.TimeLimitExceeded` is raised: the task fails
  with it, its message is acknowledged and the worker goes on;
- a task that swallows that too gets :data:`EXIT_GRACE_SECONDS` more; then the process exits
  (status :data:`EXIT_STATUS`). Its message was not acknowledged, so it is delivered again
  (and dead-lettered by the redelivery cap if it keeps doing this); the worker group starts a
  fresh process in its place.

A signal handler runs only between Python bytecodes of the main thread, so a task stuck inside
C code that never releases the interpreter is not interrupted; its liveness file then goes
stale and the worker group replaces the process.
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType
from typing import Any

from billiard.exceptions import TimeLimitExceeded
from celery.exceptions import SoftTimeLimitExceeded

from platform_tasks import run_signals

logger = logging.getLogger(__name__)

EXIT_GRACE_SECONDS = 5.0
#: Exit status of a solo process that gave up on a task ignoring its hard limit.
EXIT_STATUS = 75


class _Armed:
    """The limits of the task running now; one task at a time on a solo worker."""

    def __init__(self) -> None:
        self.task_id: str | None = None
        self.task_name = ""
        self.stage = ""
        self.soft = 0.0
        self.hard = 0.0


_armed = _Armed()


def limits_of(task: Any, request: Any) -> tuple[float, float]:
    """(soft, hard) seconds for the running ``request`` of ``task``: its message's, else the
    task's; 0 = none."""
    hard, soft = (getattr(request, "timelimit", None) or (None, None))
    hard = hard or getattr(task, "time_limit", None) or 0
    soft = soft or getattr(task, "soft_time_limit", None) or 0
    return float(soft), float(hard)


def _arm(seconds: float, stage: str) -> None:
    _armed.stage = stage
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)
    _armed.task_id = None
    _armed.stage = ""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    if _armed.task_id is None:
        return
    if _armed.stage == "soft":
        if _armed.hard > _armed.soft:
            _arm(_armed.hard - _armed.soft, "hard")
        raise SoftTimeLimitExceeded(f"soft time limit ({_armed.soft:g}s) exceeded")
    if _armed.stage == "hard":
        _arm(EXIT_GRACE_SECONDS, "exit")
        raise TimeLimitExceeded(_armed.hard)
    logger.error(
        "task %s[%s] kept running %gs past its hard time limit (%gs); this process exits "
        "and the message is delivered again", _armed.task_name, _armed.task_id,
        EXIT_GRACE_SECONDS, _armed.hard,
    )
    logging.shutdown()
    os._exit(EXIT_STATUS)


def _on_prerun(task_id: str | None, task: Any, request: Any) -> None:
    if task_id is None:
        return
    soft, hard = limits_of(task, request)
    if not soft and not hard:
        return
    _armed.task_id, _armed.task_name = task_id, str(getattr(task, "name", ""))
    _armed.soft, _armed.hard = soft, hard
    if soft and (not hard or soft < hard):
        _arm(soft, "soft")
    else:
        _arm(hard, "hard")


def _on_postrun(task_id: str | None, task: Any, state: str | None) -> None:
    if _armed.task_id is not None:
        _disarm()


def install() -> None:
    """Enforce time limits in this (solo pool) worker process; call from its main thread."""
    signal.signal(signal.SIGALRM, _on_alarm)
    run_signals.observe(run_signals.Stage.TIME_LIMITS, start=_on_prerun, end=_on_postrun)
