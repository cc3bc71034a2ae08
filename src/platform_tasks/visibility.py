"""Visibility heartbeat: the messages a live worker holds never look abandoned.

kombu records each message a worker takes in the ``unacked`` hash and scores it in
``unacked_index`` with the time it was taken; any worker's periodic sweep puts back on its
queue every message whose score is older than the visibility timeout. A task that runs
longer than that (or a delayed message waiting for its ETA) would be handed to a second
worker while the first still runs it. A thread in each consuming process re-scores every
message the process holds, several times per timeout, so only the messages of a worker that
stopped refreshing them (it died, or lost the broker) come back, and they come back within
one timeout instead of an hour.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from platform_tasks import held_ledger

logger = logging.getLogger(__name__)

#: Refreshes per visibility timeout: a worker can miss several before its messages expire.
REFRESHES_PER_TIMEOUT = 6
_MIN_INTERVAL_SECONDS = 0.5
_MAX_INTERVAL_SECONDS = 60.0


def refresh_interval(visibility_timeout: float) -> float:
    """Seconds between two refreshes for a given visibility timeout."""
    interval = visibility_timeout / REFRESHES_PER_TIMEOUT
    return min(_MAX_INTERVAL_SECONDS, max(_MIN_INTERVAL_SECONDS, interval))


class VisibilityHeartbeat:
    """Re-scores the held messages of one kombu Redis QoS until its channel closes.

    It keeps only a weak reference to the QoS: a channel dropped after a connection loss
    ends its heartbeat, and the new channel starts its own.
    """

    def __init__(self, qos: Any, interval: float) -> None:
        self._qos = weakref.ref(qos)
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="platform-tasks-visibility", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            qos = self._qos()
            if qos is None or qos.channel.connection is None:
                return
            try:
                refresh(qos)
            except Exception as error:
                # The next beat tries again; after several misses the messages expire and
                # are redelivered (a duplicate run, never a loss).
                logger.warning("could not refresh the visibility of held messages: %s", error)
            del qos


def held_tags(qos: Any) -> list[str]:
    """Delivery tags of the messages this QoS holds unacknowledged: taken, not yet acked,
    including those of a fetched batch still waiting for the task before them to run."""
    channel = qos.channel
    waiting = getattr(channel, "taken_not_delivered", None)
    for _ in range(3):
        try:
            tags = list(qos._delivered)
            if waiting is not None:
                tags.extend(tag for tag in waiting() if tag not in qos._delivered)
            return tags
        except RuntimeError:  # resized by the consumer thread while being copied
            continue
    return []


def refresh(qos: Any, now: Callable[[], float] = time.time) -> int:
    """Set the score of every held message to now; returns how many were still recorded.

    ``XX``: a message acknowledged (or restored by a sweep) since the tags were read is not
    recorded again.
    """
    tags = held_tags(qos)
    if not tags:
        return 0
    stamp = now()
    with qos.channel.conn_or_acquire() as client:
        refreshed = int(client.zadd(qos.unacked_index_key, dict.fromkeys(tags, stamp), xx=True,
                                    ch=True) or 0)
    ledger = held_ledger.LEDGER
    if ledger is not None:
        ledger.rescore(tags, stamp)
    return refreshed
