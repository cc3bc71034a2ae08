"""Task results sent without waiting for Redis' answer, confirmed before their messages' acks.

Storing a result is one script call (:mod:`platform_tasks.result_backend`). Waiting for its
reply kept a solo-pool worker idle for a full round trip per task: a third of its time in the
drain benchmark. On the thread that turned this on (the solo pool's consumer loop, which runs
the tasks), a finished task's result is written to the socket and the worker goes on to the
next message; the replies are read once per turn of the loop, by the QoS right before it
removes that turn's acknowledged messages (:meth:`confirm`), so a message is never
acknowledged before its result is stored.

A reply that is an error (``NOSCRIPT`` on a master that never ran the script, ``READONLY``
or ``NOREPLICAS`` during a failover), or a connection lost with replies unread, makes the
same writes go again the usual way, through the backend's retries; the script never
overwrites a ``SUCCESS``, so a write that landed twice changes nothing. If even that fails,
the writes and the turn's acks wait for the next turn; a worker killed meanwhile acked
nothing, so its messages run again: at least once, as before.

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

logger = logging.getLogger(__name__)

#: Results sent and not yet confirmed, at most; the next one confirms them first.
MAX_UNCONFIRMED = 256


@dataclass(frozen=True, slots=True)
class ResultWrite:
    """One call of the store script: the result's key, its encoded meta, its expiry."""

    key: str
    value: str
    expires_seconds: int


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

    def send_on_this_thread(self) -> None:
        self._owner = threading.get_ident()

    @property
    def unconfirmed(self) -> int:
        return len(self._sent) + len(self._unstored)

    def send(self, backend: Any, script_sha: str, write: ResultWrite) -> bool:
        """Write ``write`` without reading its reply; False when the caller must store it
        itself (another thread, this off, or the connection failed while sending)."""
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
            connection.send_command("EVALSHA", script_sha, 1, write.key, write.value,
                                    write.expires_seconds)
        except Exception as error:
            # Nothing of this write is known to have gone; the ones before it are redone at
            # the next confirmation, since their replies are lost with the connection.
            logger.info("could not send a result write (%s); storing it directly", error)
            self._unstored.extend(self._sent)
            self._sent = []
            self._drop_connection()
            return False
        self._sent.append(write)
        return True

    def confirm(self) -> bool:
        """Read the replies of every write sent, and redo the ones that did not land.

        True when every result sent so far is stored; False when some could not be stored
        yet (they are kept and redone at the next call).
        """
        if not self._sent and not self._unstored:
            return True
        sent, self._sent = self._sent, []
        unstored, self._unstored = self._unstored, []
        connection = self._connection
        for index, write in enumerate(sent):
            try:
                connection.read_response()
            except Exception as error:
                if _is_connection_error(error):
                    unstored.extend(sent[index:])
                    self._drop_connection()
                    break
                unstored.append(write)  # an error reply: the connection stays in step
        return self._redo(unstored)

    def _redo(self, writes: list[ResultWrite]) -> bool:
        backend = self._backend
        for index, write in enumerate(writes):
            try:
                backend.ensure(backend._store_unless_succeeded,
                               (write.key, write.value, write.expires_seconds))
            except Exception as error:
                logger.warning("could not store %d task results yet (%s); the messages "
                               "stay unacknowledged and the writes are tried again",
                               len(writes) - index, error)
                self._unstored.extend(writes[index:])
                return False
        return True

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


def _is_connection_error(error: BaseException) -> bool:
    import redis

    return isinstance(error, (redis.ConnectionError, redis.TimeoutError, OSError))


PENDING = ResultWrites()


def enable() -> None:
    """Send final results without waiting, on this thread: the solo pool's consumer loop,
    whose QoS confirms them every turn."""
    PENDING.send_on_this_thread()


def confirm() -> bool:
    """Every result sent so far is stored (see :meth:`ResultWrites.confirm`)."""
    if threading.get_ident() != PENDING._owner:
        return True
    return PENDING.confirm()


os.register_at_fork(after_in_child=PENDING.forget)
