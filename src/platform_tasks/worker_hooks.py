"""What a worker process does at start-up beyond Celery's own: revoked ids, statistics, logs,
dead letters, the redelivery count."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer as CeleryConsumer

from platform_tasks import dead_letters, keys, redeliveries, stats
from platform_tasks.app import PlatformCelery
from platform_tasks.observability import task_context
from platform_tasks.redis_client import connect

logger = logging.getLogger(__name__)


class Consumer(CeleryConsumer):  # type: ignore[misc]  # celery ships no type information
    """Celery's consumer, keeping a message it cannot decode as a dead letter before the ack.

    Celery acknowledges such a message and only logs it; there is no signal to hook.
    """

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        dead_letters.on_decode_error(self, message, exc)
        super().on_decode_error(message, exc)

    def ensure_connected(self, conn: Any) -> Any:
        """Reconnect on kombu's schedule, but in fractions of a second, not 2, 4, 6… s.

        During a Sentinel failover every attempt before the switch fails; with kombu's
        default backoff the worker then sleeps up to several seconds past the moment the new
        master is ready. Short, capped intervals resume consuming within about a second of
        the switch; an attempt is cheap (the Sentinels answer, the dead master refuses).
        """
        ensure = conn.ensure_connection

        def ensure_quickly(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("interval_start", RECONNECT_INTERVALS[0])
            kwargs.setdefault("interval_step", RECONNECT_INTERVALS[1])
            kwargs.setdefault("interval_max", RECONNECT_INTERVALS[2])
            return ensure(*args, **kwargs)

        conn.ensure_connection = ensure_quickly
        try:
            return super().ensure_connected(conn)
        finally:
            conn.ensure_connection = ensure


#: Seconds: first wait, added per attempt, longest wait between reconnection attempts.
RECONNECT_INTERVALS = (0.1, 0.2, 1.0)


def _load_revoked(sender: Any = None, **_: Any) -> None:
    """Revokes are broadcast only to workers alive at the time; Redis keeps them for later ones."""
    app: PlatformCelery = sender.app
    client = connect(app.settings)
    try:
        prefix = keys.revoked("")
        loaded = 0
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            worker_state.revoked.add(key[len(prefix):])
            loaded += 1
        if loaded:
            logger.info("loaded %d revoked task ids", loaded)
    finally:
        client.close()


def install(app: PlatformCelery) -> None:
    """Connect the worker's start-up hooks; called once by the ``worker`` command."""
    worker_ready.connect(_load_revoked, weak=False, dispatch_uid="platform-tasks-revoked")
    stats.connect_signals()
    task_context.install()
    dead_letters.install(app.settings)
    redeliveries.install(app.settings)
    app.conf.worker_consumer = f"{__name__}:Consumer"
