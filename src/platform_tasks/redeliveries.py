"""The redelivery cap: a message whose runs keep dying is dead-lettered, not run forever.

A task that kills its own process (a crashing C extension, the kernel's OOM killer, a pod
evicted mid-run, ``os._exit``) never acknowledges its message. The broker hands the message
back (at the worker's restart, or after the visibility timeout) and it kills the next worker
too, without end, while every other message of the queue waits behind the crashes.

Each *redelivered* message that starts running adds one to a counter kept per attempt
(:func:`platform_tasks.keys.redelivered_runs`: task id and retry number). When a redelivered
message arrives whose counter already reached ``PLATFORM_TASKS_MAX_REDELIVERIES``, the
transport stores it as a dead letter (reason ``redelivered_too_often``) instead of handing it
to Celery, so the task runs at most 1 + that many times. A first delivery costs nothing: only
redelivered messages are counted and checked.

A message put back by a graceful shutdown before it started running is not counted: only
starts are.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from platform_tasks import keys
from platform_tasks.redis_client import process_client
from platform_tasks.settings import Settings

logger = logging.getLogger(__name__)

#: The counters outlive any plausible redelivery cycle, then clean themselves up.
COUNTER_TTL_SECONDS = 7 * 24 * 3600

_settings: Settings | None = None


def attempt_of(message_headers: dict[str, Any]) -> tuple[str, int] | None:
    """``(task id, retries)`` from a protocol-2 message's headers, or None if it has no id."""
    task_id = message_headers.get("id")
    if not task_id:
        return None
    try:
        retries = int(message_headers.get("retries") or 0)
    except (TypeError, ValueError):
        retries = 0
    return str(task_id), retries


def runs_so_far(client: redis.Redis, task_id: str, retries: int) -> int:
    """How many times this redelivered attempt has already started running."""
    value = client.get(keys.redelivered_runs(task_id, retries))
    return int(value) if value else 0


def count_run(client: redis.Redis, task_id: str, retries: int) -> int:
    """One more start of this redelivered attempt; returns the new count."""
    key = keys.redelivered_runs(task_id, retries)
    with client.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, COUNTER_TTL_SECONDS)
        count, _ = pipe.execute()
    return int(count)


def over_cap(runs: int, max_redeliveries: int) -> bool:
    """Whether an attempt that already ran ``runs`` times after redelivery must stop."""
    return runs >= max_redeliveries


def _on_prerun(task_id: str | None, task: Any, request: Any) -> None:
    delivery_info = getattr(request, "delivery_info", None) or {}
    settings = _settings
    if settings is None or not delivery_info.get("redelivered"):
        return
    task_id = getattr(request, "id", None)
    if not task_id:
        return
    retries = int(getattr(request, "retries", 0) or 0)
    try:
        count = count_run(process_client(settings), task_id, retries)
    except redis.RedisError as error:
        # Not counted: the task may run once more than the cap allows, nothing is lost.
        logger.warning("could not count a redelivered run of %s: %s", task_id, error)
        return
    logger.info("redelivered task %s[%s] starts run %d after redelivery (cap %d)",
                getattr(task, "name", None), task_id, count, settings.max_redeliveries)


def install(settings: Settings) -> None:
    """Count the starts of redelivered messages in this worker and its pool processes."""
    from platform_tasks import run_signals

    global _settings
    _settings = settings
    run_signals.observe(run_signals.Stage.REDELIVERIES, start=_on_prerun)
