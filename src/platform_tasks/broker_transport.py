"""kombu's Redis transports, made faster and safe against losing a message.

What changes against kombu's own (each a class below, combined in :class:`Channel`,
:class:`SentinelChannel` and the two transports):

* **Fetch** (``_FetchesInBatches``): messages are taken by one script that pops a batch and
  records each as unacknowledged in the same step (kombu pops with BRPOP, then records with
  a second command: two round trips per message, and a message popped but not recorded
  existed only in the worker's memory).
* **Acks** (``_BatchesAcks``): in a worker's event loop, the records of acknowledged messages
  are removed once per loop turn, for all of them at once.
* **Restores across a failover** (``FailoverTolerantQoS``, ``_RestoresOrphans``): kombu puts
  held messages back once, through the connection that just failed; during a Sentinel
  failover that fails and the messages waited for the visibility timeout. Here what a failed
  restore could not put back is kept in memory and pushed back as soon as a broker answers.
* **Visibility heartbeat** (:mod:`platform_tasks.visibility`) for everything a worker holds.
* **Screening** (``_ScreensDeliveries``): an item that is not a message, and a message over
  the redelivery cap (:mod:`platform_tasks.redeliveries`), become dead letters instead of
  crashing or looping the worker.
* **Pub/sub reads** (``_ListensWithoutBlocking``) only when a reply is there: a blocking
  read after a reconnection could hang the worker for good.
* One synchronous client per channel instead of a new one per command.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from queue import Empty
from typing import Any

import kombu.transport as kombu_transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from platform_tasks import (
    consumer_loop,
    fetch_script,
    held_ledger,
    redeliveries,
    result_writes,
)
from platform_tasks.ack_writes import AckWrites
from platform_tasks.inspection import ready_lists, wake_list
from platform_tasks.observability import held_lines
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
                    _forget_held(orphan.delivery_tag)
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
        #: Acks whose records are still to be removed, each with its result-writes mark
        #: (:func:`platform_tasks.result_writes.mark`). Thread pools ack from their own
        #: threads while the loop's thread takes from the list: hence the lock.
        self._pending_acks: list[tuple[str, int]] = []
        self._pending_lock = threading.Lock()
        self._ack_writes = AckWrites()

    def append(self, message: Any, delivery_tag: str) -> None:
        if self._heartbeat is None:
            # Started by the first message taken: publishing channels never hold any.
            self._heartbeat = VisibilityHeartbeat(
                self, refresh_interval(float(self.visibility_timeout))
            )
            self._heartbeat.start()
        if self.channel.take_recorded(delivery_tag):
            # The fetch script recorded it as unacked already, in the step that popped it
            # (and the ledger has it since the fetch's reply was read).
            kombu_virtual.QoS.append(self, message, delivery_tag)
            return
        try:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
        except Exception:
            # Popped from its queue but not recorded as unacked: only this process has it.
            kombu_virtual.QoS.append(self, message, delivery_tag)
            raise
        ledger = held_ledger.LEDGER
        if ledger is not None:
            # Just after kombu scored its record: the ledger's score is no earlier.
            ledger.add(delivery_tag, time.time())

    def ack(self, delivery_tag: str) -> None:
        if self._channel_closed():
            return
        if getattr(self.channel.connection, "batch_acks", False):
            # Forgotten in memory now, removed from Redis with the other acks of this turn
            # of the event loop (flush_acks): one round trip for many tasks. A worker killed
            # before the flush leaves the record, and the message runs again: at least once.
            self.defer_ack(delivery_tag)
            kombu_virtual.QoS.ack(self, delivery_tag)
        else:
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]
        _forget_held(delivery_tag)

    def defer_ack(self, delivery_tag: str) -> None:
        """Remove ``delivery_tag``'s record at a flush, once the results this process sent
        before now are stored."""
        mark = result_writes.mark()
        with self._pending_lock:
            self._pending_acks.append((delivery_tag, mark))

    def _take_settled_acks(self) -> list[str]:
        """The pending acks whose results (and all results sent before them) are stored,
        taken off the list; the others stay, in their order."""
        settled = result_writes.settled_below()
        with self._pending_lock:
            pending = self._pending_acks
            ready = [tag for tag, mark in pending if mark <= settled]
            if ready:
                self._pending_acks = [item for item in pending if item[1] > settled]
        return ready

    def _pend_again(self, tags: list[str]) -> None:
        # Their results are stored: they wait for nothing but the next flush.
        with self._pending_lock:
            self._pending_acks.extend((tag, 0) for tag in tags)

    def flush_acks(self, *, wait: bool = True) -> None:
        """Remove the records of the messages acknowledged since the last flush whose
        results, and every result sent before them, are stored
        (:mod:`platform_tasks.result_writes`): never an ack before its result.

        Without ``wait``, nothing is waited for: only the replies already there (of the
        results, of earlier removals) are read, the acks they do not cover wait for a later
        flush, and the removals are sent without reading their reply
        (:mod:`platform_tasks.ack_writes`): the event loop goes on to the next fetch
        instead of idling for round trips. With ``wait`` (before an idle wait, on close),
        everything is settled before it returns.
        """
        result_writes.confirm(wait=wait)
        self._send_acks(wait=wait)
        if wait:
            self._requeue_acks(self._ack_writes.read(wait=True))

    def close_ack_writes(self) -> None:
        """Give the removals' connection back; what it still carried stays pending (as
        any ack a closing channel could not flush)."""
        self._requeue_acks(self._ack_writes.close())

    def _requeue_acks(self, tags: list[str]) -> None:
        if tags:
            self._pend_again(tags)
            logger.warning("could not remove %d acknowledged messages' records yet; "
                           "trying again next turn", len(tags))

    def _send_acks(self, *, wait: bool) -> None:
        self._requeue_acks(self._ack_writes.read(wait=wait))
        tags = self._take_settled_acks()
        if not tags:
            return
        channel: Any = self.channel
        try:
            with channel.conn_or_acquire() as client:
                if channel.global_keyprefix:
                    # kombu's prefixing client adds the prefix to these; the raw removals
                    # would miss the prefixed keys.
                    client.pipeline().zrem(self.unacked_index_key, *tags).hdel(
                        self.unacked_key, *tags).execute()
                else:
                    self._ack_writes.send(client, self.unacked_index_key, self.unacked_key,
                                          tags)
        except BaseException as error:
            # Tried again next turn; meanwhile the records are refreshed by nobody, so a long
            # outage lets the sweep requeue them (a duplicate run, never a loss).
            self._pend_again(tags)
            if not isinstance(error, Exception):
                raise
            logger.warning("could not remove %d acknowledged messages' records yet: %s",
                           len(tags), error)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self._channel_closed():
            return
        super().reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]
        _forget_held(delivery_tag)

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
        _forget_held(tag)

    def restore_unacked(self, client: Any = None) -> None:
        try:
            # Each one put back leaves the ledger then (restore_by_tag); after a failure the
            # orphans stay in it until they are put back, in case this process dies first.
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


def _forget_held(delivery_tag: str) -> None:
    ledger = held_ledger.LEDGER
    if ledger is not None:
        ledger.remove(delivery_tag)


class _RestoresOrphans:
    """Channel behaviour: give the orphans back as soon as a new connection consumes, and
    what a dead predecessor of this worker group member held (:mod:`held_ledger`)."""

    def basic_consume(self, *args: Any, **kwargs: Any) -> Any:
        ORPHANS.restore(self)
        held_ledger.put_back_previous(self)
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


#: The pending reply pair of a wait (``BLMOVE``) sent with the fetch that follows it.
_WAIT_THEN_FETCH = "BLMOVE+EVAL"


class _FetchesInBatches:
    """Channel behaviour: messages are taken by the atomic fetch script, in batches.

    kombu's consumer sends ``BRPOP`` on its own connection and waits for the reply in the
    event loop. Here the same connection carries, in turn:

    * the fetch script (:mod:`platform_tasks.fetch_script`): up to as many messages as the
      prefetch allows, each recorded as unacked in the same step that popped it;
    * when a fetch found nothing, ``BLMOVE q <q's wake list> RIGHT LEFT timeout`` with the
      next fetch right behind it in the same write: the wait blocks until the queue's main
      list has an item and moves the oldest one to the wake list
      (:func:`platform_tasks.inspection.wake_list`), and the fetch, which Redis runs the
      moment the wait returns, takes it from there first, atomically. Because the wait
      takes the item off the queue, Redis wakes one idle worker per message; a wait that
      left it in place (``BLMOVE q q``) woke every worker blocked on the queue, each to run
      a fetch that found nothing. A message published with a priority (a list of its own)
      waits for the next fetch: at most the poll timeout (1 s) on an idle worker.

    Nothing is ever popped outside the script, so no message exists only in a worker's
    memory: the wait moves it between two lists inside Redis, where the next fetch of any
    worker finds it should this one's fail. The records are kombu's own: acks, restores
    and the tools that read them are unchanged.
    """

    #: The command the consume connection's pending reply answers.
    _pending_command: str | None = None
    #: Whether the last fetch found nothing (then wait with BLMOVE before the next one).
    _queue_was_empty = False

    def take_recorded(self, delivery_tag: str) -> bool:
        """Whether ``delivery_tag`` came from the fetch script (and forget it)."""
        recorded: set[str] | None = self.__dict__.get("_recorded_tags")
        if not recorded or delivery_tag not in recorded:
            return False
        recorded.discard(delivery_tag)
        return True

    def _mark_recorded(self, delivery_tag: str) -> None:
        self.__dict__.setdefault("_recorded_tags", set()).add(delivery_tag)

    def taken_not_delivered(self) -> list[str]:
        """Tags of messages this channel fetched and has not handed to kombu yet."""
        return list(self.__dict__.get("_recorded_tags", ()))

    def _brpop_start(self, timeout: float | None = None) -> None:
        channel: Any = self
        if channel.global_keyprefix:  # kombu prefixes keys itself; not supported by the script
            super()._brpop_start(timeout)  # type: ignore[misc]
            return
        queues = channel._queue_cycle.consume(len(channel.active_queues))
        if not queues:
            return
        # The names kombu gives its lists (as channel._q_for_pri), the wake list first.
        lists = [name for priority in channel.priority_steps for queue in queues
                 for name in ready_lists(queue, priority)]
        room = channel.qos.can_consume_max_estimate()
        fetch = fetch_script.eval_args(
            channel.unacked_key, channel.unacked_index_key, lists,
            room if room else fetch_script.MAX_BATCH, time.time(),
        )
        connection = channel.client.connection
        if self._queue_was_empty:
            # The wait and the fetch go out together: Redis runs the fetch as soon as the
            # wait returns, so a message that arrives on an idle queue costs no second round
            # trip, nor a second turn of the event loop. (The fetch's score, the time it was
            # sent, is then up to the wait's timeout early: far inside the visibility timeout.)
            wait = timeout if timeout is not None else channel.brpop_timeout
            main = queues[0]
            self._pending_command = _WAIT_THEN_FETCH
            packed = connection.pack_commands(
                [["BLMOVE", main, wake_list(main), "RIGHT", "LEFT", wait or 0], fetch])
            channel._in_poll = connection
            channel._brpop_sent_at = time.monotonic()
            connection.send_packed_command(packed)
            return
        self._pending_command = "EVAL"
        channel._in_poll = connection
        channel._brpop_sent_at = time.monotonic()
        connection.send_command(*fetch)

    def _brpop_read(self, **options: Any) -> bool:
        command = self._pending_command
        if command is None:
            return bool(super()._brpop_read(**options))  # type: ignore[misc]
        channel: Any = self
        try:
            try:
                wait_error, reply = self._read_replies(command, options)
            except channel.connection_errors:
                channel.client.connection.disconnect()
                raise
        finally:
            self._pending_command = None
            channel._in_poll = None
            channel._flush_brpop_reauth()
        fetched = fetch_script.parse_reply(reply)
        self._queue_was_empty = not fetched.taken and not fetched.unreadable
        if wait_error is not None:
            if self._queue_was_empty:
                # Nothing was taken: fail the poll as a failed wait always did (and an idle
                # worker does not spin on a wait that fails at once).
                raise wait_error
            # The fetch took messages and recorded them as unacked: deliver them, or they
            # would sit out the visibility timeout. The wait only said when to fetch.
            logger.warning("the wait before a fetch failed (%r); delivering what the "
                           "fetch took", wait_error)
        for item in fetched.unreadable:
            self._dead_letter_unreadable(item.text, self._queue_of(item.list_key))
        batch = []
        for item in fetched.taken:
            queue = self._queue_of(item.list_key)
            payload = self._readable_payload(item.text, queue)
            if payload is not None:
                batch.append((queue, payload))
        if not batch:
            raise Empty()
        # The whole batch counts as held from now on, not each message once delivered: on
        # the solo pool the first one's task runs inside its delivery while the others wait
        # here, and they must be refreshed (and in the ledger) meanwhile too.
        tags = [payload["properties"]["delivery_tag"] for _, payload in batch]
        delivered = 0
        try:
            for tag in tags:
                self._mark_recorded(tag)
            ledger = held_ledger.LEDGER
            if ledger is not None:
                score = time.time()
                for tag in tags:
                    ledger.add(tag, score)
            for queue, payload in batch:
                channel._queue_cycle.rotate(queue)
                channel.connection._deliver(payload, queue)
                delivered += 1
        finally:
            if delivered < len(batch):
                self._give_back_untaken(batch[delivered:])
        return True

    def _give_back_untaken(self, rest: list[tuple[str, dict[str, Any]]]) -> None:
        """A delivery raised: the messages of the batch kombu did not take go back on their
        queue now, or as soon as a broker answers (orphans; the ledger keeps them until
        then). Left recorded and unrefreshed, they would wait for the visibility timeout."""
        recorded = self.__dict__.get("_recorded_tags", set())
        orphans = []
        for _, payload in rest:
            tag = payload["properties"]["delivery_tag"]
            if tag not in recorded:  # kombu took it: the QoS holds it now
                continue
            recorded.discard(tag)
            delivery_info = payload["properties"].get("delivery_info") or {}
            orphans.append(_Orphan(tag, payload, delivery_info.get("exchange") or "",
                                   delivery_info.get("routing_key") or ""))
        if orphans:
            ORPHANS.add(orphans)
            ORPHANS.restore(self)

    def _read_replies(self, command: str,
                      options: dict[str, Any]) -> tuple[Exception | None, Any]:
        """The fetch's reply, and the wait's error reply if a wait went before it and failed.

        After a wait both replies are read, whatever the first one is: the fetch's follows
        on the same connection, and leaving it unread would put every later reply off by
        one. A connection error is raised at once (the connection is then dropped).
        """
        channel: Any = self
        client = channel.client
        if command != _WAIT_THEN_FETCH:
            return None, client.parse_response(client.connection, command, **options)
        wait_error: Exception | None = None
        try:
            # Whatever the wait saw stays in its list, for the fetch (or the next one).
            client.parse_response(client.connection, "BLMOVE", **options)
        except channel.connection_errors:
            raise
        except Exception as error:  # an error reply: READONLY after a failover, NOPERM...
            wait_error = error
        return wait_error, client.parse_response(client.connection, "EVAL")

    def _queue_of(self, list_key: str) -> str:
        channel: Any = self
        return list_key.rsplit(channel.sep, 1)[0]

    def _readable_payload(self, text: str, queue: str) -> dict[str, Any] | None:
        """The payload to deliver, or None when it became a dead letter (record removed)."""
        channel: Any = self
        payload = loads(text)
        tag = payload["properties"]["delivery_tag"]
        try:
            message = channel.Message(payload, channel=channel)
        except Exception as error:
            self._dead_letter_unreadable(text, queue, error)
            self._forget_record(tag)
            return None
        if channel._over_redelivery_cap(message, queue):
            self._forget_record(tag)
            return None
        return dict(payload)

    def _why_unreadable(self, text: str) -> BaseException:
        """What kombu would have failed with on an item the script could not read."""
        channel: Any = self
        try:
            channel.Message(loads(text), channel=channel)
        except Exception as error:
            return error
        return ValueError("not a kombu message: its delivery tag or delivery info is missing")

    def _forget_record(self, delivery_tag: str) -> None:
        channel: Any = self
        with channel.conn_or_acquire() as client:
            client.pipeline().zrem(channel.unacked_index_key, delivery_tag).hdel(
                channel.unacked_key, delivery_tag).execute()

    def _dead_letter_unreadable(self, text: str, queue: str,
                                error: BaseException | None = None) -> None:
        from platform_tasks import dead_letters

        reason = error or self._why_unreadable(text)
        logger.error("dropped an item of queue %s that is not a message: %s: %s",
                     queue, type(reason).__name__, reason)
        dead_letters.record_unreadable(text, queue, reason)


class _ListensWithoutBlocking:
    """Channel behaviour: the pub/sub read (Celery's remote control) never blocks the worker.

    kombu reads a pub/sub reply with redis-py's blocking ``parse_response``. After the
    broker connections were reset (a cut connection, a broker restart), the event loop can
    call it when nothing is there to read: redis-py reconnects and waits for a message with
    no timeout, and the whole worker hangs for good while its heartbeat thread keeps the
    probes happy (found by the ledger suite's connection-cut and broker-down scenarios).
    Here the read happens only when a reply is there.
    """

    def _receive_one(self, c: Any) -> Any:
        channel: Any = self
        connection = c.connection
        if connection is not None:
            try:
                readable = connection.can_read(timeout=0)
            except channel.connection_errors:
                channel._in_listen = None
                raise
            if not readable:
                raise Empty()
        return super()._receive_one(c)  # type: ignore[misc]


class _ReusesItsClient:
    """Channel behaviour: one synchronous client per channel instead of one per command.

    kombu builds a new ``Redis`` object (on the same pool) for every ack, every unacked
    record and every restore: a tenth of the consumer's time under load.
    """

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        cached = self.__dict__.get("_sync_client")
        if cached is None:
            channel: Any = self
            cached = self.__dict__["_sync_client"] = channel._create_client()
        yield cached


class _FlushesAcksOnClose:
    """Channel behaviour: acks still pending are written before the channel goes."""

    def close(self) -> None:
        qos = self.__dict__.get("_qos")
        if qos is not None:
            qos.flush_acks()
            qos.close_ack_writes()
        super().close()  # type: ignore[misc]


_OPTIONS = ("platform_max_redeliveries",)


class Channel(_FlushesAcksOnClose, _FetchesInBatches, _ScreensDeliveries,
              _ListensWithoutBlocking, _ReusesItsClient, _RestoresOrphans, kombu_redis.Channel):
    QoS = FailoverTolerantQoS
    # kombu's tuple has a fixed length in its inferred type; ours is one longer.
    from_transport_options = (  # type: ignore[assignment]
        *kombu_redis.Channel.from_transport_options, *_OPTIONS
    )


class SentinelChannel(_FlushesAcksOnClose, _FetchesInBatches, _ScreensDeliveries,
                      _ListensWithoutBlocking, _ReusesItsClient, _RestoresOrphans,
                      kombu_redis.SentinelChannel):
    QoS = FailoverTolerantQoS
    from_transport_options = (  # type: ignore[assignment]
        *kombu_redis.SentinelChannel.from_transport_options, *_OPTIONS
    )


class _BatchesAcks:
    """Transport behaviour: in a worker's event loop, acks are written once per loop turn."""

    #: Read by the QoS: set once the transport runs in an event loop that flushes them.
    batch_acks = False

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        before = set(loop.on_tick)
        super().register_with_event_loop(connection, loop)  # type: ignore[misc]
        # kombu's own tick (it sends the next fetch): run first in each turn, in the order
        # below, instead of wherever the hub's set of callbacks happens to put it.
        kombu_ticks = [tick for tick in loop.on_tick if tick not in before]
        for tick in kombu_ticks:
            loop.on_tick.discard(tick)
        transport: Any = self
        cycle = transport.cycle

        def turn() -> None:
            for tick in kombu_ticks:
                tick()
            for channel in list(cycle._channels):
                qos = channel.__dict__.get("_qos")
                if qos is not None:
                    # With a fetch on its way, what is not confirmed yet goes next turn;
                    # before an idle wait, everything goes now.
                    qos.flush_acks(wait=getattr(channel, "_queue_was_empty", True))
            consumer_loop.turned()
            # Lifecycle lines held to share a write (solo pool) go out once per turn at the
            # latest.
            held_lines.flush()

        loop.on_tick.add(turn)
        self.batch_acks = True


class Transport(_BatchesAcks, kombu_redis.Transport):
    """``redis://`` broker: batched atomic fetch, batched acks, no message lost on a failover."""

    Channel = Channel


class SentinelTransport(_BatchesAcks, kombu_redis.SentinelTransport):
    """``sentinel://`` broker: batched atomic fetch, batched acks, no message lost on a
    failover."""

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
