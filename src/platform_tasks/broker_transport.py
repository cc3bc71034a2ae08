"""kombu's Redis transports, with a restore of unacknowledged messages that outlasts a failover.

When a worker loses its broker connection, kombu puts the messages it had prefetched but not
acknowledged back on their queues — once, at that very moment. During a Sentinel failover
the master is gone at that moment, the restore fails, and kombu never tries again: those
messages sit in the ``unacked`` hash until the visibility timeout (13 minutes here) brings
them back. This QoS retries the restore until a master answers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

#: How long a restore keeps trying: longer than a failover (Sentinel's down-after plus the
#: election, a few seconds with the chart's settings), short enough not to hang a shutdown.
RESTORE_PATIENCE_SECONDS = 60.0

_RETRIABLE = (RedisConnectionError, RedisTimeoutError, OSError)


class FailoverTolerantQoS(kombu_redis.QoS):
    """Puts back unacknowledged messages even when the broker is failing over.

    Two gaps are closed. kombu restores a lost connection's unacked messages exactly once,
    right when the master is gone; this retries until a master answers. And kombu pops a
    message, then records it as unacked in a second command: if the master dies between the
    two, the message exists only in this process. Such a message is kept here and pushed
    back onto its queue with the rest.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._unrecorded: dict[str, Any] = {}

    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
        except _RETRIABLE:
            self._unrecorded[delivery_tag] = message
            # Tracked as delivered in memory, so the restore at connection loss sees it.
            kombu_virtual.QoS.append(self, message, delivery_tag)
            raise

    def restore_unacked(self, client: Any = None) -> None:
        delay = 0.25
        deadline = time.monotonic() + RESTORE_PATIENCE_SECONDS
        while True:
            try:
                self._restore_unrecorded()
                # Each tag is restored in its own transaction that also drops it from the
                # unacked hash, so a retry after a partial restore never duplicates a message.
                super().restore_unacked(client)  # type: ignore[no-untyped-call]
                return
            except _RETRIABLE as error:
                if time.monotonic() >= deadline:
                    logger.error(
                        "could not restore %d unacknowledged messages (%s); recorded ones "
                        "return after the visibility timeout",
                        len(self._delivered),
                        error,
                    )
                    raise
                logger.warning("broker unavailable while restoring unacked messages (%s); "
                               "retrying in %.2fs", error, delay)
                client = None  # the next attempt asks the Sentinels for the current master
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _restore_unrecorded(self) -> None:
        for tag in list(self._unrecorded):
            message = self._unrecorded[tag]
            delivery = message.delivery_info
            with self.channel.conn_or_acquire() as client, client.pipeline() as pipe:
                self.channel._do_restore_message(
                    message._raw, delivery["exchange"], delivery["routing_key"], pipe,
                    leftmost=True,
                )
                pipe.execute()
            del self._unrecorded[tag]
            self._delivered.pop(tag, None)


class Channel(kombu_redis.Channel):
    QoS = FailoverTolerantQoS


class SentinelChannel(kombu_redis.SentinelChannel):
    QoS = FailoverTolerantQoS


class Transport(kombu_redis.Transport):
    """``redis://`` broker with :class:`FailoverTolerantQoS`."""

    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    """``sentinel://`` broker with :class:`FailoverTolerantQoS`."""

    Channel = SentinelChannel


REDIS = f"{__name__}:Transport"
SENTINEL = f"{__name__}:SentinelTransport"
