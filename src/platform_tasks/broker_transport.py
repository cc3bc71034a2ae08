"""kombu's Redis transports, with unacknowledged messages put back even across a failover.

When a worker loses its broker connection, kombu puts the messages it holds unacknowledged
(prefetched, or running with late acks) back on their queues: once, at that very moment,
through the connection that just failed. During a Sentinel failover the master is gone at
that moment, the restore fails, and kombu never tries again; the messages wait in the
``unacked`` hash for the visibility timeout (13 minutes here). Worse, kombu pops a message
and records it as unacknowledged in a second command: if the master dies in between, the
message exists only in the worker's memory and is lost.

Here the messages a failed restore could not put back are kept in memory, with their
payloads, and pushed back as soon as the worker consumes again, or on the transport's next
periodic restore.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

import kombu.transport as kombu_transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from platform_tasks import redeliveries
from platform_tasks.visibility import VisibilityHeartbeat, refresh_interval

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Orphan:
    """A message this process held unacknowledged when its broker connection failed."""

    delivery_tag: str
    payload: dict[str, Any]
    exchange: str
    routing_key: str


class _OrphanStore:
    """The orphans of this process, waiting for a broker to take them back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._orphans: dict[str, _Orphan] = {}

    def add(self, orphans: list[_Orphan]) -> None:
        with self._lock:
            for orphan in orphans:
                self._orphans[orphan.delivery_tag] = orphan

    def __len__(self) -> int:
        return len(self._orphans)

    def restore(self, channel: Any) -> None:
        """Push every orphan back through ``channel``; keep what fails for the next call."""
        with self._lock:
            pending = list(self._orphans.values())
        if not pending:
            return
        restored = 0
        try:
            with channel.conn_or_acquire() as client:
                for orphan in pending:
                    _restore_one(channel, client, orphan)
                    with self._lock:
                        self._orphans.pop(orphan.delivery_tag, None)
                    restored += 1
        except Exception as error:  # kept for the next attempt, never lost
            logger.warning("restored %d of %d orphaned messages; retrying later: %s",
                           restored, len(pending), error)
            return
        logger.warning("restored %d messages held when the broker connection failed", restored)


def _orphan_of(delivery_tag: str, message: Any) -> _Orphan:
    return _Orphan(
        delivery_tag=delivery_tag,
        payload=message._raw,
        exchange=message.delivery_info["exchange"],
        routing_key=message.delivery_info["routing_key"],
    )


def _restore_one(channel: Any, client: Any, orphan: _Orphan, *, leftmost: bool = True) -> None:
    """Requeue ``orphan`` and drop its unacked record, in one transaction.

    The recorded copy is preferred; a message never recorded (popped, then the master died)
    is requeued from memory.
    """
    unacked_key, index_key = channel.unacked_key, channel.unacked_index_key

    def requeue(pipe: Any) -> None:
        recorded = pipe.hget(unacked_key, orphan.delivery_tag)
        pipe.multi()
        pipe.zrem(index_key, orphan.delivery_tag)
        pipe.hdel(unacked_key, orphan.delivery_tag)
        if recorded:
            payload, exchange, routing_key = json.loads(recorded)
        else:
            payload, exchange, routing_key = orphan.payload, orphan.exchange, orphan.routing_key
        channel._do_restore_message(payload, exchange, routing_key, pipe, leftmost=leftmost)

    client.transaction(requeue, unacked_key)


ORPHANS = _OrphanStore()


class FailoverTolerantQoS(kombu_redis.QoS):
    """kombu's QoS, handing what it cannot restore to :data:`ORPHANS` instead of dropping it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._restored: set[str] = set()
        self._heartbeat: VisibilityHeartbeat | None = None

    def append(self, message: Any, delivery_tag: str) -> None:
        if self._heartbeat is None:
            # Started by the first message taken: publishing channels never hold any.
            self._heartbeat = VisibilityHeartbeat(
                self, refresh_interval(float(self.visibility_timeout))
            )
            self._heartbeat.start()
        try:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
        except Exception:
            # Popped from its queue but not recorded as unacked: only this process has it.
            kombu_virtual.QoS.append(self, message, delivery_tag)
            raise

    def ack(self, delivery_tag: str) -> None:
        if self._channel_closed():
            return
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self._channel_closed():
            return
        super().reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]

    def _channel_closed(self) -> bool:
        """A task that finishes after its connection was lost acks on the dead channel.

        kombu then crashes the worker (its channel has no connection any more). The message
        was already handed back when the connection closed, so the ack has nothing to do:
        the task runs again (at least once, never lost).
        """
        if self.channel.connection is not None:
            return False
        logger.info("not acknowledging on a closed channel; the message was requeued")
        return True

    def restore_visible(self, *args: Any, **kwargs: Any) -> Any:
        # The transport's periodic sweep: also the retry for orphans a first attempt missed.
        ORPHANS.restore(self.channel)
        return super().restore_visible(*args, **kwargs)  # type: ignore[no-untyped-call]

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        message = self._delivered.get(tag)
        if message is None:
            super().restore_by_tag(tag, client=client, leftmost=leftmost)  # type: ignore[no-untyped-call]
        else:
            # kombu restores only from the unacked record; a message whose record was never
            # written would be dropped, so the copy in memory stands in for it.
            with self.channel.conn_or_acquire(client) as connection:
                _restore_one(self.channel, connection, _orphan_of(tag, message),
                             leftmost=leftmost)
        self._restored.add(tag)

    def restore_unacked(self, client: Any = None) -> None:
        try:
            super().restore_unacked(client)  # type: ignore[no-untyped-call]
        except Exception as error:  # any failure here would lose them
            orphans = [
                _orphan_of(tag, message)
                for tag, message in list(self._delivered.items())
                if tag not in self._restored
            ]
            self._delivered.clear()
            ORPHANS.add(orphans)
            logger.warning("could not restore %d unacknowledged messages now (%s); they go "
                           "back as soon as the broker answers", len(orphans), error)
        finally:
            self._restored.clear()


class _RestoresOrphans:
    """Channel behaviour: give the orphans back as soon as a new connection consumes."""

    def basic_consume(self, *args: Any, **kwargs: Any) -> Any:
        ORPHANS.restore(self)
        return super().basic_consume(*args, **kwargs)  # type: ignore[misc]


class _ScreensDeliveries:
    """Channel behaviour: what BRPOP returns is checked before kombu and Celery see it.

    kombu decodes what BRPOP returned with no error handling: a non-JSON item ends the
    worker ("Unrecoverable error"), and JSON that is not kombu's envelope makes it drop its
    connection; either way the item, already popped, was gone. The channel's own client
    (the one that runs BRPOP) is given a check on each BRPOP reply: an item the consumer
    could not turn into a message is stored as a dead letter and the reply reads as "nothing
    arrived", so kombu carries on with the next one. A redelivered message that already
    ran as often as the redelivery cap allows (:mod:`platform_tasks.redeliveries`) is stored
    as a dead letter the same way.
    """

    #: Set from the transport option of the same name (``PLATFORM_TASKS_MAX_REDELIVERIES``).
    platform_max_redeliveries: int | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        client = super()._create_client(asynchronous=asynchronous)  # type: ignore[misc]
        if asynchronous:
            read_reply = client.parse_response

            def checked_parse_response(connection: Any, command: str, **options: Any) -> Any:
                reply = read_reply(connection, command, **options)
                if command == "BRPOP" and reply and not self._is_message(reply):
                    return None
                return reply

            client.parse_response = checked_parse_response
        return client

    def _is_message(self, reply: Any) -> bool:
        channel: Any = self
        destination, item = reply
        queue = bytes_to_str(destination).rsplit(channel.sep, 1)[0]
        text = bytes_to_str(item)
        try:
            # What the consumer does with the item next: any error here would surface there.
            message = channel.Message(loads(text), channel=channel)
        except Exception as error:
            logger.error("dropped an item of queue %s that is not a message: %s: %s",
                         queue, type(error).__name__, error)
            from platform_tasks import dead_letters

            dead_letters.record_unreadable(text, queue, error)
            return False
        return not self._over_redelivery_cap(message, queue)

    def _over_redelivery_cap(self, message: Any, queue: str) -> bool:
        """True when ``message`` was stored as a dead letter by the redelivery cap."""
        cap = self.platform_max_redeliveries
        if not cap or not (message.delivery_info or {}).get("redelivered"):
            return False
        attempt = redeliveries.attempt_of(message.headers or {})
        if attempt is None:
            return False
        channel: Any = self
        try:
            with channel.conn_or_acquire() as client:
                runs = redeliveries.runs_so_far(client, *attempt)
        except Exception as error:
            # Unknown: deliver it (one run too many at worst, nothing lost).
            logger.warning("could not read the redelivery count of %s: %s", attempt[0], error)
            return False
        if not redeliveries.over_cap(runs, cap):
            return False
        from platform_tasks import dead_letters

        if not dead_letters.record_redelivered_too_often(message, queue, runs, cap):
            return False  # not stored: it runs again rather than being lost
        logger.error("dead-lettered task %s[%s] of queue %s: redelivered and started %d "
                     "times without finishing", (message.headers or {}).get("task"),
                     attempt[0], queue, runs)
        return True


_OPTIONS = ("platform_max_redeliveries",)


class Channel(_ScreensDeliveries, _RestoresOrphans, kombu_redis.Channel):
    QoS = FailoverTolerantQoS
    # kombu's tuple has a fixed length in its inferred type; ours is one longer.
    from_transport_options = (  # type: ignore[assignment]
        *kombu_redis.Channel.from_transport_options, *_OPTIONS
    )


class SentinelChannel(_ScreensDeliveries, _RestoresOrphans, kombu_redis.SentinelChannel):
    QoS = FailoverTolerantQoS
    from_transport_options = (  # type: ignore[assignment]
        *kombu_redis.SentinelChannel.from_transport_options, *_OPTIONS
    )


class Transport(kombu_redis.Transport):
    """``redis://`` broker whose unacknowledged messages survive a failed restore."""

    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    """``sentinel://`` broker whose unacknowledged messages survive a failed restore."""

    Channel = SentinelChannel


REDIS = f"{__name__}:Transport"
SENTINEL = f"{__name__}:SentinelTransport"


def register() -> None:
    """Make the ``redis``, ``rediss`` and ``sentinel`` URL schemes mean these transports.

    Setting ``broker_transport`` is not enough: after a connection error kombu switches to
    the next ``sentinel://`` URL of the broker list and resolves the transport from that
    URL's scheme again.
    """
    for scheme, path in (("redis", REDIS), ("rediss", REDIS), ("sentinel", SENTINEL)):
        kombu_transport.TRANSPORT_ALIASES[scheme] = path
        kombu_transport._transport_cache.pop(scheme, None)
