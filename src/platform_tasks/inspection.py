"""Reads queue depth straight from the broker, the way kombu's Redis transport stores it.

A queue is a list per priority step (``name``, ``name\\x06\\x163``, ...), plus the platform's
wake list (:func:`wake_list`), and delivered but not yet acknowledged messages sit in the
``unacked`` hash until their worker acks. A plain
LLEN (what KEDA and celery-exporter run) sees only the first list.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis
from kombu.transport.redis import PRIORITY_STEPS

from platform_tasks.queues import QUEUE_NAMES

PRIORITY_SEPARATOR = "\x06\x16"
UNACKED_HASH = "unacked"
#: The sub-lists kombu's Redis transport files priorities 0-9 into (its default
#: ``priority_steps``, which the platform keeps): the rest never hold a message.
PRIORITIES: tuple[int, ...] = tuple(PRIORITY_STEPS)


def priority_list(queue: str, priority: int) -> str:
    """The Redis list kombu uses for ``queue`` at ``priority`` (0 is the plain name)."""
    return queue if priority == 0 else f"{queue}{PRIORITY_SEPARATOR}{priority}"


def wake_list(queue: str) -> str:
    """The list an idle worker's wait moves the oldest priority-0 message of ``queue`` to.

    The wait (``BLMOVE queue <wake list>``) takes the item off the queue, so Redis wakes one
    idle worker per message instead of every worker waiting on the queue; the fetch that
    follows the wait takes it from here first, recording it as unacknowledged. An item stays
    here only while that fetch runs, or until the next fetch of any worker when it failed:
    it is counted as ready at priority 0.
    """
    return f"{queue}{PRIORITY_SEPARATOR}wake"


def ready_lists(queue: str, priority: int) -> tuple[str, ...]:
    """The lists holding ``queue``'s ready messages at ``priority``, in the order a fetch
    takes them: at priority 0, the wake list before the queue's own list."""
    if priority == 0:
        return (wake_list(queue), queue)
    return (priority_list(queue, priority),)


@dataclass(frozen=True, slots=True)
class QueueDepth:
    queue: str
    ready_by_priority: dict[int, int] = field(default_factory=dict)
    unacked: int = 0

    @property
    def ready(self) -> int:
        return sum(self.ready_by_priority.values())

    @property
    def total(self) -> int:
        return self.ready + self.unacked

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "ready": self.ready,
            "ready_by_priority": {str(k): v for k, v in self.ready_by_priority.items()},
            "unacked": self.unacked,
            "total": self.total,
        }


def unacked_by_queue(client: redis.Redis) -> Counter[str]:
    """Delivered, unacknowledged messages per routing key (our queues route by their name)."""
    counts: Counter[str] = Counter()
    for _tag, raw in client.hscan_iter(UNACKED_HASH, count=1000):
        try:
            _message, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            counts["<undecodable>"] += 1
            continue
        counts[str(routing_key)] += 1
    return counts


def queue_depths(client: redis.Redis, queues: tuple[str, ...] = QUEUE_NAMES) -> list[QueueDepth]:
    """Ready messages per priority and unacked messages, for every queue."""
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            for priority in PRIORITIES:
                for name in ready_lists(queue, priority):
                    pipe.llen(name)
        lengths = iter(pipe.execute())
    unacked = unacked_by_queue(client)
    depths = []
    for queue in queues:
        ready_by_priority = {
            priority: sum(int(next(lengths)) for _name in ready_lists(queue, priority))
            for priority in PRIORITIES
        }
        depths.append(QueueDepth(queue=queue, ready_by_priority=ready_by_priority,
                                 unacked=unacked.get(queue, 0)))
    return depths
