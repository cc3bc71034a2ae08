"""Publishing many task messages in a few round trips, byte for byte as kombu would publish them.

``TaskProducer.enqueue_many`` publishes each batch's first message through Celery
(``create_task_message``, ``send_task_message``) and kombu (``Producer.publish``, the Redis
channel's ``basic_publish``/``_put``), and makes the others from it. Only the last step
changes: kombu's Redis channel hands its final commands (``LPUSH queue <json>``) to a publish
batch instead of running them, the same hook kombu's own ``Producer.batch()`` uses. kombu
refuses that batch when the connection retries on timeout (ours must, to outlast a failover),
so :class:`CommandCollector` takes its place and :func:`write_commands` runs the collected
commands as one ``MULTI``/``EXEC`` per batch: a batch lands whole or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

Command = tuple[str, tuple[Any, ...]]


class CommandCollector:
    """Stands in for kombu's publish batch and keeps the Redis commands of each message.

    kombu's ``Producer._publish`` calls :meth:`publish` when a batch is active on the
    producer; the Redis channel then calls :meth:`add` with each command it would have run.
    """

    def __init__(self) -> None:
        self.commands: list[Command] = []
        #: The last message as kombu wrote it (body encoded, delivery tag and info set).
        self.last_message: dict[str, Any] | None = None
        self._collecting = False

    def publish(self, channel: Any, message: dict[str, Any], **kwargs: Any) -> Any:
        if not isinstance(channel, kombu_redis.Channel):
            # Another transport would publish right away, one round trip per message.
            raise TypeError(f"bulk publish needs kombu's Redis channel, got {type(channel)!r}")
        before = len(self.commands)
        self._collecting = True
        try:
            result = channel.basic_publish(message, _publish_batch=self, **kwargs)
        finally:
            self._collecting = False
        if len(self.commands) == before:
            raise RuntimeError("kombu published without going through the batch")
        self.last_message = message
        return result

    def add(self, name: str, *args: Any) -> None:
        if not self._collecting:
            raise RuntimeError("a Redis command was added outside a publish")
        self.commands.append((name, args))

    def take(self) -> list[Command]:
        """The commands collected so far; the collector starts empty again."""
        commands, self.commands = self.commands, []
        return commands


@contextmanager
def collecting(producer: Any) -> Iterator[CommandCollector]:
    """While open, what ``producer`` publishes is collected instead of sent."""
    if not hasattr(kombu_redis.Channel, "create_publish_batch"):
        raise RuntimeError("bulk publish needs kombu >= 5.7 (Redis publish batches)")
    local = producer._batch_local
    if getattr(local, "current", None) is not None:
        raise RuntimeError("this producer is already inside a publish batch")
    collector = CommandCollector()
    local.current = collector
    try:
        yield collector
    finally:
        del local.current


def _coalesced(commands: list[Command]) -> Iterator[Command]:
    """Consecutive ``LPUSH`` to one key as one ``LPUSH key v1 v2 …`` (same resulting order)."""
    pending_key: Any = None
    values: list[Any] = []
    for name, args in commands:
        if name == "lpush" and len(args) == 2 and (not values or args[0] == pending_key):
            pending_key = args[0]
            values.append(args[1])
            continue
        if values:
            yield "lpush", (pending_key, *values)
            values = []
        if name == "lpush" and len(args) == 2:
            pending_key = args[0]
            values.append(args[1])
        else:
            yield name, args
    if values:
        yield "lpush", (pending_key, *values)


def write_commands(client: redis.Redis, commands: list[Command]) -> None:
    """Run ``commands`` in one transaction: all of them happen, or none does."""
    with client.pipeline(transaction=True) as pipe:
        for name, args in _coalesced(commands):
            getattr(pipe, name)(*args)
        pipe.execute()


def quick_saferepr(value: Any, maxlen: int, maxlevels: int) -> str | None:
    """Celery's ``saferepr(value, maxlen, maxlevels=…)`` for plain JSON-like data, fast.

    Exact for lists, tuples and str-keyed dicts (two levels deep at most) of ``str``, ``int``,
    ``float``, ``bool`` and ``None``, written in full; ``None`` for anything else (the
    caller then asks Celery). The message headers ``argsrepr``/``kwargsrepr`` are built with
    it, and Celery's version was a quarter of a bulk enqueue's time.
    """
    if maxlevels < 3:
        return None
    text = _quick(value, 0)
    # Shorter than maxlen: saferepr truncates nothing (it cuts only at the limit).
    if text is None or len(text) >= maxlen:
        return None
    return text


def _quick(value: Any, depth: int) -> str | None:
    kind = type(value)
    if kind is str:
        # saferepr quotes strings its own way: only ' is escaped, nothing else.
        return "'" + str.replace(value, "'", "\\'") + "'"
    if kind is int or kind is float or kind is bool:
        return str(value)
    if value is None:
        return "None"
    if depth >= 2:
        return None
    if kind is list or kind is tuple:
        parts = []
        for element in value:
            part = _quick(element, depth + 1)
            if part is None:
                return None
            parts.append(part)
        if kind is list:
            return "[" + ", ".join(parts) + "]"
        return "(" + ", ".join(parts) + (",)" if len(parts) == 1 else ")")
    if kind is dict:
        parts = []
        for key, element in value.items():
            part = _quick(element, depth + 1)
            if type(key) is not str or part is None:
                return None
            parts.append("'" + key.replace("'", "\\'") + "': " + part)
        return "{" + ", ".join(parts) + "}"
    return None


def write_confirmed(client: redis.Redis, commands: list[Command], replicas: int,
                    timeout_ms: int) -> int:
    """Run ``commands``, then ``WAIT`` for ``replicas`` to have them; how many confirmed.

    One pipeline is one connection, and ``WAIT`` counts the writes of its own connection.
    The commands of a batch coalesce into one ``LPUSH`` (atomic); anything else would run
    one by one, so a failure part way publishes part of it (retried whole: duplicates, never
    a loss).
    """
    with client.pipeline(transaction=False) as pipe:
        for name, args in _coalesced(commands):
            getattr(pipe, name)(*args)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        replies = pipe.execute()
    return int(replies[-1])
