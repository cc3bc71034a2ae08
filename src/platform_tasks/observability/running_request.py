"""The running task's request, read once per run and shared by the platform's receivers.

``task.request`` walks Celery's thread-local request stack: about a microsecond and a half
each time. The lifecycle-line receiver, connected first, reads it at ``task_prerun`` and
leaves it here; the metrics receiver that follows takes it instead of reading it again.
Per thread (a context variable), and checked against the task id, so a thread pool's
tasks never see each other's.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

_remembered: ContextVar[tuple[str, Any] | None] = ContextVar(
    "platform_tasks_running_request", default=None
)


def remember(task_id: str, request: Any) -> None:
    """``request`` is the request of ``task_id``, starting on this thread now."""
    _remembered.set((task_id, request))


def of(task_id: str, task: Any) -> Any:
    """The request of ``task_id`` (a ``task`` starting on this thread)."""
    remembered = _remembered.get()
    if remembered is not None and remembered[0] == task_id:
        return remembered[1]
    return task.request
