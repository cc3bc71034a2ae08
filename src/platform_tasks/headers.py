"""Message headers the platform adds to Celery's own, and how a task reads them back."""

from __future__ import annotations

from typing import Any

CORRELATION_ID = "platform_tasks_correlation_id"
"""Ties a task to the request that caused it; set by the producer, copied into child tasks."""

ENQUEUED_AT = "platform_tasks_enqueued_at"
"""Producer's wall-clock time (epoch seconds) at publish, for queue wait time."""

IDEMPOTENCY_KEY = "platform_tasks_idempotency_key"
"""The producer's idempotency key, when it gave one."""


def read(request: Any, header: str) -> Any:
    """A platform header from a task's ``request``; Celery copies custom headers onto it."""
    value = getattr(request, header, None)
    if value is None and isinstance(getattr(request, "headers", None), dict):
        value = request.headers.get(header)
    return value
