"""Carries the producer's correlation id from a running task into the tasks it sends.

Chains, groups and chords publish their next steps from inside a task (or from the worker
that finished the header); without this their messages would start a new correlation.
"""

from __future__ import annotations

import time
from typing import Any

from celery import current_task
from celery.signals import before_task_publish

from platform_tasks import headers

#: The id the receiver is connected under: the producer tells it from others' receivers by it.
DISPATCH_UID = "platform-tasks-correlation"


def _copy_correlation(headers_: dict[str, Any] | None = None, **_: Any) -> None:
    if headers_ is None:
        return
    headers_.setdefault(headers.ENQUEUED_AT, time.time())
    if headers_.get(headers.CORRELATION_ID):
        return
    task = current_task
    parent = headers.read(task.request, headers.CORRELATION_ID) if task else None
    # Without a parent to copy from, the canvas's own id: a group's (or a chord header's)
    # members share their group id, where each would otherwise be its own root; a chain's
    # steps share the first task's id.
    headers_[headers.CORRELATION_ID] = (
        parent or headers_.get("group") or headers_.get("root_id") or headers_.get("id")
    )


def _on_publish(sender: Any = None, headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    _copy_correlation(headers)


def install() -> None:
    """Connect once per process; safe to call for every app created."""
    before_task_publish.connect(_on_publish, weak=False, dispatch_uid=DISPATCH_UID)
