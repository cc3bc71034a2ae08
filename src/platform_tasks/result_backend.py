"""Celery's Redis result backends: no pub/sub subscription per sent task, failover-tolerant.

Celery's Redis backend subscribes to every task it sends, so that ``AsyncResult.get()`` can
wake up on a notification. Producers enqueue far more tasks than they wait on: each
subscription costs a round trip and a Redis channel, and when Redis goes away the pending
subscriptions make an idle producer reconnect in a loop. Here nothing is subscribed at send
time; ``get()`` still subscribes when it is called and reads the stored state first, so it
never misses a result that arrived earlier.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.backends.redis import SentinelBackend as CelerySentinelBackend

from platform_tasks.redis_errors import is_transient_reply


class _PlatformBackend:
    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Subscribe lazily, in ``get()``, not for every task sent."""

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        """Also retry storing a result through a failover's NOREPLICAS/READONLY replies."""
        return bool(super().exception_safe_to_retry(exc)) or is_transient_reply(exc)  # type: ignore[misc]


class RedisBackend(_PlatformBackend, CeleryRedisBackend):  # type: ignore[misc]
    """Celery's ``redis://`` result backend, with the behaviour above."""


class SentinelBackend(_PlatformBackend, CelerySentinelBackend):  # type: ignore[misc]
    """Celery's ``sentinel://`` result backend, with the behaviour above."""


#: Celery's ``override_backends`` setting: URL schemes mapped to these classes.
BY_SCHEME = {
    "redis": f"{__name__}:RedisBackend",
    "rediss": f"{__name__}:RedisBackend",
    "sentinel": f"{__name__}:SentinelBackend",
}
