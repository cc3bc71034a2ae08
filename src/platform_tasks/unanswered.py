"""Commands written to Redis without waiting for their replies, the replies read later.

Both the result writes (:mod:`platform_tasks.result_writes`) and the acks' record removals
(:mod:`platform_tasks.ack_writes`) keep a connection of their own with commands sent and not
yet answered. Reading those replies safely takes the same care in both: they come back in
the order sent, an error reply is one reply (the next one is the next command's), and
anything else that goes wrong leaves the stream out of step, so the caller must treat every
unread command as lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis


def send(connection: Any, commands: list[tuple[Any, ...]]) -> None:
    """Write ``commands`` on ``connection`` without reading any reply.

    No health-check ``PING`` goes ahead of them (redis-py sends one on a connection idle
    past its interval, and reads its reply at once): behind unanswered commands, their reply
    would be read as the ``PING``'s and every later reply would be out of step.
    """
    connection.send_packed_command(connection.pack_commands(commands), check_health=False)


def answers(connection: Any, items: int, replies_each: int, *, wait: bool) -> Iterator[bool]:
    """Read the replies of up to ``items`` items sent on ``connection``, oldest first, each
    answered by ``replies_each`` replies; yield, per item read, whether a reply was an error.

    Without ``wait``, stops at the first item whose reply has not come yet. Raises what the
    connection raised (a lost connection, a protocol error, a signal in the middle of a
    read): the items not yet yielded are then lost with their replies.
    """
    for _ in range(items):
        if connection._sock is None:
            # Dropped under the caller (redis-py disconnects on errors): can_read would
            # reconnect and wait on a socket that owes nothing.
            raise redis.ConnectionError("the connection closed with replies unread")
        if not wait and not connection.can_read(timeout=0):
            return
        refused = False
        for _ in range(replies_each):
            try:
                connection.read_response()
            except redis.ResponseError:
                refused = True  # read whole: the next reply is the next command's
        yield refused
