"""After the faults heal: wait until the system is empty and quiet, then read what is left.

Empty means every queue list (each priority sub-list) and kombu's ``unacked`` hash and
``unacked_index`` set are empty; quiet means the ledger saw no new execution for a while (a
worker may still hold a message only in memory, e.g. one it could not record as unacked).
A drain that times out still returns: the checker then counts the acknowledged tasks that
never ran as lost, and the ids still sitting in the broker as *stranded*.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from ledger import Ledger

from platform_tasks import keys
from platform_tasks.inspection import PRIORITIES, UNACKED_HASH, ready_lists
from platform_tasks.queues import QUEUE_NAMES

UNACKED_INDEX = "unacked_index"


@dataclass
class DrainResult:
    drained: bool
    seconds: float
    #: Queue list (or ``unacked``) -> messages left there when the drain ended.
    remaining: dict[str, int] = field(default_factory=dict)
    #: Task ids of the messages left in the broker.
    stranded: set[str] = field(default_factory=set)

    def describe(self) -> str:
        state = "drained" if self.drained else "NOT drained"
        left = ", ".join(f"{name}={count}" for name, count in self.remaining.items() if count)
        return f"{state} after {self.seconds:.1f}s" + (f" (left: {left})" if left else "")


def _lists() -> list[str]:
    return [name for queue in QUEUE_NAMES for priority in PRIORITIES
            for name in ready_lists(queue, priority)]


def broker_backlog(client: redis.Redis) -> dict[str, int]:
    """Messages per queue list, plus the unacked hash and index, right now."""
    names = _lists()
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(name)
        pipe.hlen(UNACKED_HASH)
        pipe.zcard(UNACKED_INDEX)
        counts = pipe.execute()
    return dict(zip([*names, UNACKED_HASH, UNACKED_INDEX], (int(n) for n in counts),
                    strict=True))


def stranded_ids(client: redis.Redis) -> set[str]:
    """Task ids of the messages still on a queue or in the unacked hash."""
    found: set[str] = set()
    payloads: list[str] = []
    for name in _lists():
        payloads.extend(str(item) for item in client.lrange(name, 0, -1))
    for _tag, raw in client.hscan_iter(UNACKED_HASH, count=1000):
        try:
            payloads.append(json.dumps(json.loads(raw)[0]))
        except (ValueError, TypeError, IndexError):
            payloads.append(str(raw))
    for payload in payloads:
        try:
            task_id = json.loads(payload)["headers"]["id"]
        except (ValueError, TypeError, KeyError):
            continue  # garbage: it has no id, and the checker matches it by its marker
        found.add(str(task_id))
    return found


def drain(
    connect: Callable[[], redis.Redis],
    ledger: Ledger,
    *,
    timeout: float = 60.0,
    quiet: float = 2.0,
) -> DrainResult:
    """Poll until the broker is empty and the ledger quiet for ``quiet`` seconds.

    ``connect`` is a zero-argument callable returning a broker client (a new one after each
    error, so the drain follows a failover).
    """
    started = time.monotonic()
    deadline = started + timeout
    client: redis.Redis | None = None
    backlog: dict[str, int] = {}
    executions = -1
    quiet_since = time.monotonic()
    while True:
        try:
            if client is None:
                client = connect()
            backlog = broker_backlog(client)
        except (redis.RedisError, OSError):
            # A failover may still be settling: a new client finds the new master.
            if client is not None:
                client.close()
            client = None
            backlog = {"<broker unreachable>": 1}
        count = ledger.execution_count()
        if count != executions:
            executions, quiet_since = count, time.monotonic()
        now = time.monotonic()
        if not any(backlog.values()) and now - quiet_since >= quiet:
            if client is not None:
                client.close()
            return DrainResult(True, now - started, backlog)
        if now > deadline:
            stranded: set[str] = set()
            if client is not None:
                with contextlib.suppress(redis.RedisError, OSError):
                    stranded = stranded_ids(client)
                client.close()
            return DrainResult(False, now - started, backlog, stranded)
        time.sleep(0.25)


def dead_letter_texts(client: redis.Redis) -> list[str]:
    """Every entry of the dead-letter list, as the JSON text it is stored as."""
    return [str(entry) for entry in client.lrange(keys.DEAD_LETTERS, 0, -1)]
