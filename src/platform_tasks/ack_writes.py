"""Acknowledged messages' records removed without waiting for Redis' reply.

An acknowledgement removes the message's unacked record (``ZREM`` from the index, ``HDEL``
from the hash), once per turn of the worker's event loop for all the turn's acks. Waiting
for that reply kept the loop idle for a round trip each turn; with the result writes no
longer waited for (:mod:`platform_tasks.result_writes`), it was most of a solo worker's idle
time in the drain benchmark. Here the removals go out on a connection of their own and the
loop goes on; their replies are read at a later flush (at once when the loop is about to
wait idle, and when the channel closes).

A removal whose reply is an error (``READONLY`` on a demoted master) or whose connection was
lost comes back to the caller, which sends it again: removing a record twice is harmless,
and one never removed only lets the message run again after the visibility timeout (at
least once, never lost).
"""

from __future__ import annotations

from typing import Any

from platform_tasks import unanswered


class AckWrites:
    """Record removals sent and not yet answered, and the connection they went on (taken
    from the channel's client's pool for these alone)."""

    def __init__(self) -> None:
        self._pool: Any = None
        self._connection: Any = None
        #: The tags of each removal sent, oldest first: its replies come in this order.
        self._in_flight: list[list[str]] = []
        #: Tags of removals lost with a connection outside read(), for read() to give back.
        self._failed: list[str] = []

    @property
    def in_flight(self) -> int:
        return sum(len(tags) for tags in self._in_flight)

    def send(self, client: Any, index_key: str, hash_key: str, tags: list[str]) -> None:
        """Send the removal of ``tags``' records; raises (nothing sent) on a connection
        error, after which the removals in flight come back from :meth:`read`."""
        pool = client.connection_pool
        if pool is not self._pool:
            # A new client (the channel reconnected): what the old connection carries
            # unanswered is sent again on a new one.
            self._failed.extend(self._lost())
            self._pool = pool
        connection = self._connection
        if connection is None:
            connection = self._connection = pool.get_connection()
        try:
            unanswered.send(connection, [("ZREM", index_key, *tags), ("HDEL", hash_key, *tags)])
        except BaseException:
            self._failed.extend(self._lost())
            raise
        self._in_flight.append(tags)

    def read(self, *, wait: bool) -> list[str]:
        """Read the replies of the removals sent; the tags whose removal did not happen (an
        error reply, a lost connection), to send again. Without ``wait``, only the replies
        already there are read."""
        failed, self._failed = self._failed, []
        if not self._in_flight:
            return failed
        connection = self._connection
        if connection is None:
            return failed + self._lost()
        try:
            # Two replies per removal: ZREM's, then HDEL's.
            for refused in unanswered.answers(connection, len(self._in_flight), 2, wait=wait):
                tags = self._in_flight.pop(0)
                if refused:
                    failed.extend(tags)
        except BaseException as error:
            failed.extend(self._lost())
            if not isinstance(error, Exception):
                self._failed.extend(failed)  # given back by the next read
                raise
        return failed

    def close(self) -> list[str]:
        """Give the connection back (the channel is closing); the tags of removals it
        carried unanswered."""
        return self._failed + self._lost()

    def _lost(self) -> list[str]:
        """Drop the connection; the tags of the removals it carried unanswered."""
        failed = [tag for tags in self._in_flight for tag in tags]
        self._in_flight = []
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.disconnect()
            finally:
                self._pool.release(connection)
        return failed
