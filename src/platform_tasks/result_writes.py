"""Task results sent without waiting for Redis' answer, confirmed before their messages' acks.

Storing a result is one script call (:mod:`platform_tasks.result_backend`). Waiting for its
reply kept a solo-pool worker idle for a full round trip per task: a third of its time in the
drain benchmark. On the thread that turned this on (the solo pool's consumer loop, which runs
the tasks), a finished task's result is written to the socket and the worker goes on to the
next message; the replies are read once per turn of the loop, by the QoS before it removes
the acknowledged messages' records (:meth:`confirm`). Each ack carries a mark of the writes
sent before it (:meth:`mark`) and goes only once they are all stored (:meth:`settled_below`),
so a message is never acknowledged before its result is stored. While the loop has a fetch
on its way, the turn reads only the replies already there and leaves the rest, with the
acks behind them, for the next turn; before an idle wait it reads them all.

A reply that is an error (``NOSCRIPT`` on a master that never ran the script, ``READONLY``
or ``NOREPLICAS`` during a failover), or a connection lost with replies unread, makes the
same writes go again the usual way; the script never overwrites a ``SUCCESS``, so a write
that landed twice changes nothing. If that fails with a failover's reply or a lost
connection, the writes and the turn's acks wait for the next turn (a worker killed meanwhile
acked nothing, so its messages run again: at least once, as before); a refusal that cannot
pass (``WRONGTYPE`` on the result's key, ``NOPERM``) drops the write with an error logged, as
the direct store failed before, so one bad key cannot hold every later ack back.

Only final states (success, failure) go this way: a state a running task reports
(``update_state``, ``RETRY``, ``STARTED``) is written at once, since the task may run on for
long. Any other thread, and a process where this is off, stores as before.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import redis
from kombu.utils.encoding import bytes_to_str

from platform_tasks import unanswered
from platform_tasks.redis_errors import is_transient_reply

logger = logging.getLogger(__name__)

#: Results sent and not yet confirmed, at most; the next one confirms them first.
MAX_UNCONFIRMED = 256


@dataclass(frozen=True, slots=True)
class ResultWrite:
    """One call of the store script: the result's key, its encoded meta, its expiry, and
    its place in the order this process sent its writes."""

    key: str | bytes
    value: str
    expires_seconds: int
    number: int


class ResultWrites:
    """The results this process sent and has not yet seen stored, and the connection they
    went on (the result backend's, taken from its pool for this process alone)."""

    def __init__(self) -> None:
        self._owner: int | None = None
        self._backend: Any = None
        self._connection: Any = None
        self._sent: list[ResultWrite] = []
        #: Writes whose reply was an error, or that no reply came for, not yet redone.
        self._unstored: list[ResultWrite] = []
        #: The number the next write sent gets.
        self._next_number = 0

    def send_on_this_thread(self) -> None:
        self._owner = threading.get_ident()

    @property
    def unconfirmed(self) -> int:
        return len(self._sent) + len(self._unstored)

    def mark(self) -> int:
        """A mark for something that must wait for every write sent until now (an ack):
        it may go once :meth:`settled_below` reaches it."""
        return self._next_number

    def settled_below(self) -> int:
        """Every write numbered below this is stored (or refused for good)."""
        oldest = self._next_number
        if self._sent:
            oldest = self._sent[0].number
        if self._unstored:
            oldest = min(oldest, min(write.number for write in self._unstored))
        return oldest

    def send(self, backend: Any, script_sha: str, key: str | bytes, value: str,
             expires_seconds: int) -> bool:
        """Write the result ``value`` under ``key`` without reading the reply; False when the
        caller must store it itself (another thread, this off, or the connection failed
        while sending)."""
        if threading.get_ident() != self._owner:
            return False
        if self._backend is not backend:
            if not self.confirm():
                return False
            self._drop_connection()
            self._backend = backend
        if len(self._sent) >= MAX_UNCONFIRMED and not self.confirm():
            return False
        connection = self._connection
        if connection is None:
            connection = self._connection = backend.client.connection_pool.get_connection()
        try:
            unanswered.send(connection,
                            [("EVALSHA", script_sha, 1, key, value, expires_seconds)])
        except Exception as error:
            # Nothing of this write is known to have gone; the ones before it are redone at
            # the next confirmation, since their replies are lost with the connection.
            logger.info("could not send a result write (%s); storing it directly", error)
            self._unstored.extend(self._sent)
            self._sent = []
            self._drop_connection()
            return False
        self._sent.append(ResultWrite(key, value, expires_seconds, self._next_number))
        self._next_number += 1
        return True

    def confirm(self, *, wait: bool = True) -> bool:
        """Read the replies of the writes sent, and redo the ones that did not land.

        True when every result sent so far is stored (or was refused for good: see
        :meth:`_redo`); False when some could not be stored yet (they are kept and redone at
        the next call). A write leaves the books only once its reply was read. Without
        ``wait``, only the replies already there are read: what is settled then is what
        :meth:`settled_below` tells.
        """
        if not self._sent and not self._unstored:
            return True
        try:
            for refused in unanswered.answers(self._connection, len(self._sent), 1,
                                              wait=wait):
                write = self._sent.pop(0)
                if refused:  # NOSCRIPT, READONLY...: redone the usual way below
                    self._unstored.append(write)
        except BaseException as error:
            # The replies are out of step: every write not yet confirmed is redone, on a
            # new connection.
            self._unstored.extend(self._sent)
            self._sent = []
            self._drop_connection()
            if not isinstance(error, Exception):
                raise
        return self._redo() and not self._sent

    def _redo(self) -> bool:
        """Store the writes whose reply was not a success, the usual way (redis-py's script
        call loads the script after a NOSCRIPT; the backend retries connection errors).

        A refusal that will not pass (WRONGTYPE, NOPERM, a script error) drops its write with
        an error logged, as the direct store it replaces failed the same way; a failover's
        replies and lost connections keep it, and hold the acks, for the next turn.
        """
        backend = self._backend
        while self._unstored:
            write = self._unstored[0]
            try:
                backend.ensure(backend._store_unless_succeeded,
                               (write.key, write.value, write.expires_seconds))
            except redis.ResponseError as error:
                if not is_transient_reply(error):
                    logger.error("could not store the result under %s: %s; it is dropped",
                                 bytes_to_str(write.key), error)
                    self._unstored.pop(0)
                    continue
                self._report_kept(error)
                return False
            except Exception as error:
                self._report_kept(error)
                return False
            self._unstored.pop(0)
        return True

    def _report_kept(self, error: BaseException) -> None:
        logger.warning("could not store %d task results yet (%s); their messages stay "
                       "unacknowledged and the writes are tried again next turn",
                       len(self._unstored), error)

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.disconnect()
        finally:
            if self._backend is not None:
                self._backend.client.connection_pool.release(connection)

    def forget(self) -> None:
        """A forked child's copy belongs to its parent: start empty, off, unconnected."""
        self._owner = None
        self._backend = None
        self._connection = None
        self._sent = []
        self._unstored = []


PENDING = ResultWrites()


def enable() -> None:
    """Send final results without waiting, on this thread: the solo pool's consumer loop,
    whose QoS confirms them every turn."""
    PENDING.send_on_this_thread()


def confirm(*, wait: bool = True) -> bool:
    """Every result sent so far is stored (see :meth:`ResultWrites.confirm`)."""
    if threading.get_ident() != PENDING._owner:
        return True
    return PENDING.confirm(wait=wait)


def mark() -> int:
    """What an ack taken now must wait for (see :meth:`ResultWrites.mark`)."""
    return PENDING.mark()


def settled_below() -> int:
    """Acks whose mark is at most this may go (see :meth:`ResultWrites.settled_below`)."""
    return PENDING.settled_below()


os.register_at_fork(after_in_child=PENDING.forget)
