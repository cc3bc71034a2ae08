"""The dead-letter list: every task and message the platform gave up on, kept for replay.

A worker writes an entry when a task fails for good (retries exhausted, a permanent error),
and when it refuses a message (an unknown task name, an invalid or undecodable message). The
entries live newest first in one Redis list, :data:`platform_tasks.keys.DEAD_LETTERS`, capped
at ``PLATFORM_TASKS_DEAD_LETTER_MAX_LENGTH``; the ``platform-tasks dead-letters`` commands
list, show, replay and purge them.

Writing an entry never disturbs the worker: when Redis refuses the write the entry is logged
(``dead_letter_not_stored``) and lost, as the message was before this list existed.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from platform_tasks import headers, keys
from platform_tasks.redis_client import process_client
from platform_tasks.settings import Settings

logger = logging.getLogger(__name__)

RETRIES_EXHAUSTED = "retries_exhausted"
FAILED = "failed"
UNKNOWN_TASK = "unknown_task"
INVALID_TASK = "invalid_task"
UNKNOWN_MESSAGE = "unknown_message"
UNDECODABLE = "undecodable"
REDELIVERED_TOO_OFTEN = "redelivered_too_often"

#: Every reason an entry can carry (also the ``reason`` label of the dead-letter counter).
REASONS = (
    RETRIES_EXHAUSTED, FAILED, UNKNOWN_TASK, INVALID_TASK, UNKNOWN_MESSAGE, UNDECODABLE,
    REDELIVERED_TOO_OFTEN,
)

#: Celery's protocol-2 message headers, copied from a running task's request to rebuild its
#: message.
_PROTOCOL_HEADERS = (
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps",
)
_PLATFORM_HEADER_PREFIX = "platform_tasks_"


class DeadLetterError(Exception):
    """An operation on the dead-letter list that cannot be done."""


class DeadLetterNotFoundError(DeadLetterError):
    """No entry has that id (replayed, purged, trimmed, or never there)."""


class NotReplayableError(DeadLetterError):
    """The entry holds no task to run again: no task name, or arguments that could not be read."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of the list, as stored (JSON) and shown by ``dead-letters show``."""

    reason: str
    queue: str | None
    task_name: str | None
    task_id: str | None
    #: The message as the broker held it (kombu's JSON envelope, body base64-encoded), or for
    #: a task that failed in a pool process, rebuilt from its request with the body decoded.
    message: Any
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    correlation_id: str | None = None
    exception_type: str | None = None
    exception: str | None = None
    retries: int = 0
    worker: str | None = None
    dead_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def replayable(self) -> bool:
        return bool(self.task_name) and self.args is not None and self.kwargs is not None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        # default=str: whatever a foreign message carried is kept as text, never refused.
        return json.dumps(self.as_dict(), default=str, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DeadLetter:
        data = json.loads(text)
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


# -- writing, in the worker ------------------------------------------------------------------

_settings: Settings | None = None


def configure(settings: Settings) -> None:
    """Tell this worker process where the list is and how long it may grow."""
    global _settings
    _settings = settings


def push(client: redis.Redis, entry: DeadLetter, max_length: int) -> None:
    """Add ``entry`` at the head of the list and drop what lies past ``max_length``."""
    with client.pipeline(transaction=True) as pipe:
        pipe.lpush(keys.DEAD_LETTERS, entry.to_json())
        pipe.ltrim(keys.DEAD_LETTERS, 0, max_length - 1)
        pipe.execute()


def record(entry: DeadLetter) -> bool:
    """Count ``entry`` in the metrics and store it; False (and a log line) when not stored.

    Never raises: it runs inside Celery's signal handlers and consumer.
    """
    try:
        from platform_tasks.observability import worker_metrics

        worker_metrics.record_dead_letter(
            entry.queue or "", entry.task_name or worker_metrics.UNKNOWN, entry.reason
        )
    except Exception:
        logger.warning("could not count a dead letter in the metrics", exc_info=True)
    settings = _settings
    try:
        if settings is None:
            raise DeadLetterError("dead letters are not configured in this process")
        push(process_client(settings), entry, settings.dead_letter_max_length)
    except Exception as error:
        logger.error(
            "dead_letter_not_stored: %s %s of task %s[%s] on queue %s is lost: %s: %s",
            entry.reason, entry.id, entry.task_name, entry.task_id, entry.queue,
            type(error).__name__, error,
        )
        return False
    logger.debug("dead-lettered %s as %s (%s)", entry.task_id, entry.id, entry.reason)
    return True


def _guarded(handler: Callable[..., None]) -> Callable[..., None]:
    def receiver(*args: Any, **kwargs: Any) -> None:
        try:
            handler(*args, **kwargs)
        except Exception:
            logger.error("could not build a dead letter", exc_info=True)

    receiver.__name__ = handler.__name__
    return receiver


def _hostname() -> str:
    return socket.gethostname()


def _consumer_queue(app: Any) -> str | None:
    """The queue a worker consumes, when it consumes exactly one (the platform's rule)."""
    try:
        names = list(app.amqp.queues.consume_from)
    except Exception:
        return None
    return str(names[0]) if len(names) == 1 else None


def _exception_fields(exception: BaseException | None) -> dict[str, Any]:
    if exception is None:
        return {"exception_type": None, "exception": None}
    return {"exception_type": type(exception).__name__, "exception": str(exception)}


def message_from_request(request: Any, task_name: str) -> dict[str, Any]:
    """A task's message rebuilt from its request: Celery's headers, the platform's, the body."""
    values = vars(request) if hasattr(request, "__dict__") else {}
    message_headers = {name: values[name] for name in _PROTOCOL_HEADERS if name in values}
    message_headers.update(
        {name: value for name, value in values.items()
         if name.startswith(_PLATFORM_HEADER_PREFIX)}
    )
    extra = values.get("headers")
    if isinstance(extra, dict):
        message_headers.update(extra)
    message_headers["task"] = task_name
    embed = {name: values.get(name) for name in ("callbacks", "errbacks", "chain", "chord")}
    delivery_info = values.get("delivery_info") or {}
    return {
        "headers": message_headers,
        "body": [list(values.get("args") or ()), dict(values.get("kwargs") or {}), embed],
        "content-type": "application/json",
        "properties": {
            "correlation_id": values.get("correlation_id"),
            "reply_to": values.get("reply_to"),
            "delivery_info": {
                "exchange": delivery_info.get("exchange"),
                "routing_key": delivery_info.get("routing_key"),
            },
        },
    }


def _on_failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
    args: Any = None, kwargs: Any = None, **_: Any,
) -> None:
    # Celery sends task_failure only for a final failure: a retry sends task_retry, and a
    # lost worker whose message goes back on the queue sends nothing.
    request = getattr(sender, "request", None)
    name = str(getattr(sender, "name", None) or getattr(request, "task", None) or "")
    delivery_info = getattr(request, "delivery_info", None) or {}
    retries = int(getattr(request, "retries", 0) or 0)
    max_retries = getattr(sender, "max_retries", None)
    exhausted = max_retries is not None and 0 < max_retries <= retries
    call_args = getattr(request, "args", None) if args is None else args
    call_kwargs = getattr(request, "kwargs", None) if kwargs is None else kwargs
    record(DeadLetter(
        reason=RETRIES_EXHAUSTED if exhausted else FAILED,
        queue=str(delivery_info.get("routing_key") or delivery_info.get("queue") or "") or
        _consumer_queue(getattr(sender, "app", None)),
        task_name=name or None,
        task_id=task_id or getattr(request, "id", None),
        message=message_from_request(request, name),
        args=list(call_args or ()),
        kwargs=dict(call_kwargs or {}),
        correlation_id=headers.read(request, headers.CORRELATION_ID),
        retries=retries,
        worker=getattr(request, "hostname", None) or _hostname(),
        **_exception_fields(exception),
    ))


def _raw_message(message: Any) -> Any:
    raw = getattr(message, "_raw", None)
    if raw is not None:
        return raw
    body = getattr(message, "body", None)
    if isinstance(body, bytes):
        body = base64.b64encode(body).decode("ascii")
    return {
        "headers": getattr(message, "headers", None),
        "body": body,
        "content-type": getattr(message, "content_type", None),
        "content-encoding": getattr(message, "content_encoding", None),
        "properties": getattr(message, "properties", None),
    }


def _arguments(message: Any) -> tuple[list[Any] | None, dict[str, Any] | None]:
    """``(args, kwargs)`` of a protocol-2 task message, or ``(None, None)`` if unreadable."""
    try:
        body = message.decode()
    except Exception:
        return None, None
    if (isinstance(body, list | tuple) and len(body) >= 2 and isinstance(body[0], list | tuple)
            and isinstance(body[1], dict)):
        return list(body[0]), dict(body[1])
    return None, None


def from_message(
    reason: str, message: Any, *, queue: str | None, worker: str | None,
    exception: BaseException | None = None, task_name: str | None = None,
) -> DeadLetter:
    """An entry for a message the worker refused, read as far as it can be."""
    message_headers = getattr(message, "headers", None)
    if not isinstance(message_headers, dict):
        message_headers = {}
    delivery_info = getattr(message, "delivery_info", None) or {}
    args, kwargs = (None, None) if reason == UNDECODABLE else _arguments(message)
    name = task_name or message_headers.get("task")
    return DeadLetter(
        reason=reason,
        queue=str(delivery_info.get("routing_key") or "") or queue,
        task_name=str(name) if name else None,
        task_id=message_headers.get("id"),
        message=_raw_message(message),
        args=args,
        kwargs=kwargs,
        correlation_id=message_headers.get(headers.CORRELATION_ID),
        retries=int(message_headers.get("retries") or 0),
        worker=worker or _hostname(),
        **_exception_fields(exception),
    )


def _consumer_fields(sender: Any) -> dict[str, Any]:
    return {
        "queue": _consumer_queue(getattr(sender, "app", None)),
        "worker": getattr(sender, "hostname", None),
    }


def _on_unknown(
    sender: Any = None, message: Any = None, exc: Any = None, name: Any = None, **_: Any
) -> None:
    record(from_message(UNKNOWN_TASK, message, exception=exc,
                        task_name=str(name) if name else None, **_consumer_fields(sender)))


def _on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    reason = INVALID_TASK if exc is not None else UNKNOWN_MESSAGE
    record(from_message(reason, message, exception=exc, **_consumer_fields(sender)))


def on_decode_error(consumer: Any, message: Any, exc: BaseException) -> None:
    """Celery's consumer acks an undecodable message and only logs it: keep it here first."""
    try:
        record(from_message(UNDECODABLE, message, exception=exc, **_consumer_fields(consumer)))
    except Exception:
        logger.error("could not build a dead letter", exc_info=True)


def record_unreadable(raw: str | bytes, queue: str | None, exc: BaseException) -> None:
    """A list item the transport could not even parse into a message (not JSON, no envelope)."""
    try:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        record(DeadLetter(
            reason=UNDECODABLE, queue=queue, task_name=None, task_id=None, message=text,
            worker=_hostname(), **_exception_fields(exc),
        ))
    except Exception:
        logger.error("could not build a dead letter", exc_info=True)


class RedeliveredTooOftenError(Exception):
    """The reason stored with a message whose runs kept dying (see platform_tasks.redeliveries)."""


def record_redelivered_too_often(message: Any, queue: str | None, runs: int, cap: int) -> bool:
    """A redelivered message refused by the redelivery cap; False when it could not be stored
    (the caller then delivers it after all, so it is not lost)."""
    try:
        error = RedeliveredTooOftenError(
            f"started {runs + 1} times without finishing (its worker or pool process died "
            f"each time); PLATFORM_TASKS_MAX_REDELIVERIES is {cap}"
        )
        return record(from_message(REDELIVERED_TOO_OFTEN, message, queue=queue, worker=None,
                                   exception=error))
    except Exception:
        logger.error("could not build a dead letter", exc_info=True)
        return False


def install(settings: Settings) -> None:
    """Record dead letters in this worker (and the pool processes it forks)."""
    from celery import signals

    configure(settings)
    for signal, handler in (
        (signals.task_failure, _on_failure),
        (signals.task_unknown, _on_unknown),
        (signals.task_rejected, _on_rejected),
    ):
        signal.connect(_guarded(handler), weak=False,
                       dispatch_uid=f"platform-tasks-dead-letters-{handler.__name__}")


# -- reading, for the operator -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filters:
    """Which entries a command acts on; every given field must match."""

    queue: str | None = None
    task: str | None = None
    reason: str | None = None

    def match(self, entry: DeadLetter) -> bool:
        return ((self.queue is None or entry.queue == self.queue)
                and (self.task is None or entry.task_name == self.task)
                and (self.reason is None or entry.reason == self.reason))

    @property
    def any(self) -> bool:
        return any((self.queue, self.task, self.reason))


def _entries(client: redis.Redis) -> Iterator[tuple[str, DeadLetter]]:
    """Every entry with its stored text (needed to remove it), newest first."""
    for raw in client.lrange(keys.DEAD_LETTERS, 0, -1):
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            yield text, DeadLetter.from_json(text)
        except (ValueError, TypeError):
            logger.warning("skipping an unreadable dead-letter entry: %.200s", text)


def select(
    client: redis.Redis, filters: Filters = Filters(), limit: int | None = None
) -> list[tuple[str, DeadLetter]]:
    found: list[tuple[str, DeadLetter]] = []
    for text, entry in _entries(client):
        if filters.match(entry):
            found.append((text, entry))
            if limit is not None and len(found) >= limit:
                break
    return found


def find(client: redis.Redis, entry_id: str) -> tuple[str, DeadLetter]:
    for text, entry in _entries(client):
        if entry.id == entry_id:
            return text, entry
    raise DeadLetterNotFoundError(
        f"no dead letter with id {entry_id!r} (see `platform-tasks dead-letters list`)"
    )


def remove(client: redis.Redis, text: str) -> bool:
    """Remove one stored entry; False when someone else (a purge, the cap) removed it first."""
    return bool(client.lrem(keys.DEAD_LETTERS, 1, text))


def purge(client: redis.Redis, filters: Filters = Filters()) -> int:
    """Remove every entry matching ``filters``; returns how many went."""
    if not filters.any:
        with client.pipeline(transaction=True) as pipe:
            pipe.llen(keys.DEAD_LETTERS)
            pipe.delete(keys.DEAD_LETTERS)
            count, _ = pipe.execute()
        return int(count)
    return sum(remove(client, text) for text, _ in select(client, filters))


def replay(
    entries: Iterable[tuple[str, DeadLetter]],
    enqueue: Callable[[DeadLetter], str],
    client: redis.Redis,
) -> Iterator[tuple[DeadLetter, str | BaseException]]:
    """Enqueue each entry again, then remove it; yields ``(entry, new task id or error)``.

    The entry goes only after its task is enqueued, so a failure in between can replay it
    twice, never lose it.
    """
    for text, entry in entries:
        if not entry.replayable:
            yield entry, NotReplayableError(
                f"dead letter {entry.id} ({entry.reason}) holds no task to run: "
                f"{'no task name' if not entry.task_name else 'its arguments could not be read'}"
            )
            continue
        try:
            task_id = enqueue(entry)
        except Exception as error:
            yield entry, error
            continue
        remove(client, text)
        yield entry, task_id


def summary_row(entry: DeadLetter) -> Sequence[str]:
    return (entry.id, entry.dead_at[:19], entry.reason, entry.queue or "-",
            entry.task_name or "-", entry.task_id or "-", entry.exception_type or "-")
