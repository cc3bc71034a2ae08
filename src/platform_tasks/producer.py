"""The API producer services call: enqueue a task by name, read its state, revoke it.

Producers never import task code. Every check happens before anything is written to Redis, so
a refused call leaves no trace on the broker.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import structlog
from celery.result import AsyncResult

from platform_tasks import headers, keys
from platform_tasks.app import PUBLISH_RETRY_POLICY, PlatformCelery, create_app
from platform_tasks.contracts import TASKS, InvalidArgumentsError
from platform_tasks.queues import QUEUE_NAMES, policy_for
from platform_tasks.redis_client import connect
from platform_tasks.redis_errors import retry_through_failover
from platform_tasks.settings import Settings, load_settings

#: How long an idempotency key keeps a second enqueue of the same task from publishing again.
IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600
#: How long a claimed but not yet published key blocks others (a producer died mid-publish).
PENDING_CLAIM_SECONDS = 60
PENDING, PUBLISHED = "pending", "published"

#: How long an enqueue keeps retrying transient Redis replies (see redis_errors).
PUBLISH_BUDGET_SECONDS = 40.0

logger = structlog.get_logger("platform_tasks.producer")

_ID_NAMESPACE = uuid.UUID("6f0c8a55-2f7e-4f69-9d1e-7c3b1f1d5a10")


class ProducerError(Exception):
    """Base of every error the producer raises for a call it refuses."""


class UnknownQueueError(ProducerError):
    """The queue is not in the catalog."""


class UnknownTaskError(ProducerError):
    """No task of that name is registered on the platform."""


class InvalidPayloadError(ProducerError):
    """The arguments do not match the task's contract."""


class PayloadNotJSONError(ProducerError):
    """The arguments cannot be encoded as JSON (the only format the platform accepts)."""


class PayloadTooLargeError(ProducerError):
    """The encoded arguments exceed ``PLATFORM_TASKS_MAX_PAYLOAD_BYTES``."""


class EnqueueInProgressError(ProducerError):
    """Another enqueue with the same idempotency key is being published right now."""


class InvalidScheduleError(ProducerError):
    """``countdown``/``eta`` are contradictory, in the past, or too far ahead."""


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """What the result backend knows about a task."""

    task_id: str
    state: str
    result: Any
    error: str | None
    name: str | None
    queue: str | None
    retries: int | None
    date_done: datetime | None

    @property
    def ready(self) -> bool:
        return self.state in {"SUCCESS", "FAILURE", "REVOKED"}


def _check_schedule(
    countdown: float | None, eta: datetime | None, max_delay: int
) -> datetime | None:
    if countdown is not None and eta is not None:
        raise InvalidScheduleError("give either countdown or eta, not both")
    if countdown is not None:
        if countdown < 0:
            raise InvalidScheduleError(f"countdown must be >= 0 seconds, got {countdown}")
        eta = datetime.now(UTC) + timedelta(seconds=countdown)
    if eta is None:
        return None
    if eta.tzinfo is None:
        raise InvalidScheduleError("eta must be timezone-aware (e.g. datetime.now(UTC))")
    delay = (eta - datetime.now(UTC)).total_seconds()
    if delay > max_delay:
        # The worker holds a delayed message unacknowledged; past the visibility timeout
        # Redis would hand it to a second worker and the task would run twice.
        raise InvalidScheduleError(
            f"eta is {delay:.0f}s ahead; this queue holds delayed work safely for at most "
            f"{max_delay}s (use a beat schedule for later work)"
        )
    return eta


def _encode(task_name: str, args: Sequence[Any], kwargs: Mapping[str, Any], limit: int) -> None:
    try:
        body = json.dumps([list(args), dict(kwargs)], allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise PayloadNotJSONError(f"{task_name}: arguments are not JSON: {error}") from None
    size = len(body.encode())
    if size > limit:
        raise PayloadTooLargeError(
            f"{task_name}: payload is {size} bytes, the limit is {limit} "
            "(PLATFORM_TASKS_MAX_PAYLOAD_BYTES); store large data elsewhere and pass a reference"
        )


class TaskProducer:
    """Enqueues platform tasks by name and reads back their state."""

    def __init__(self, settings: Settings, app: PlatformCelery | None = None) -> None:
        self.settings = settings
        self.app = app if app is not None else create_app(settings, include_tasks=False)
        self._redis = connect(settings)

    def enqueue(
        self,
        task_name: str,
        *,
        queue: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """Publish ``task_name`` onto ``queue`` and return the task id.

        With an ``idempotency_key``, enqueueing the same task with the same key again within
        a day returns the first task's id and publishes nothing.
        """
        if queue not in QUEUE_NAMES:
            raise UnknownQueueError(
                f"unknown queue {queue!r}; known queues: {', '.join(QUEUE_NAMES)}"
            )
        contract = TASKS.get(task_name)
        if contract is None:
            raise UnknownTaskError(
                f"unknown task {task_name!r}; known tasks: {', '.join(sorted(TASKS))}"
            )
        if isinstance(args, str | bytes) or not isinstance(args, Sequence):
            raise InvalidPayloadError(f"{task_name}: args must be a list or tuple")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise InvalidPayloadError(f"{task_name}: kwargs must be a mapping of names to values")
        call_kwargs = dict(kwargs or {})
        _encode(task_name, args, call_kwargs, self.settings.max_payload_bytes)
        try:
            contract.bind(args, call_kwargs)
        except InvalidArgumentsError as error:
            raise InvalidPayloadError(str(error)) from None
        when = _check_schedule(countdown, eta, policy_for(queue).max_delay_seconds)

        task_id = str(uuid.uuid4())
        dedup_key: str | None = None
        if idempotency_key is not None:
            if not idempotency_key or len(idempotency_key) > 255:
                raise InvalidPayloadError("idempotency_key must be 1-255 characters")
            task_id = str(uuid.uuid5(_ID_NAMESPACE, f"{task_name}\n{idempotency_key}"))
            dedup_key = keys.enqueue_dedup(task_name, idempotency_key)
            if not self._claim(dedup_key):
                return task_id

        message_headers: dict[str, Any] = {
            headers.CORRELATION_ID: correlation_id or task_id,
            headers.ENQUEUED_AT: time.time(),
        }
        if idempotency_key is not None:
            message_headers[headers.IDEMPOTENCY_KEY] = idempotency_key
        try:
            # kombu retries connection errors itself; a new master that has no replica in
            # sync yet answers NOREPLICAS, which only this outer retry gets past.
            retry_through_failover(
                lambda: self.app.send_task(
                    task_name,
                    args=list(args),
                    kwargs=call_kwargs,
                    queue=queue,
                    task_id=task_id,
                    eta=when,
                    headers=message_headers,
                    retry=True,
                    retry_policy=PUBLISH_RETRY_POLICY,
                ),
                budget_seconds=PUBLISH_BUDGET_SECONDS,
            )
        except BaseException:
            if dedup_key is not None:
                # Not published: let the caller's retry with the same key publish it. If this
                # delete fails too, the pending claim expires within a minute.
                with contextlib.suppress(redis.RedisError):
                    self._redis.delete(dedup_key)
            raise
        if dedup_key is not None:
            retry_through_failover(
                lambda: self._redis.set(dedup_key, PUBLISHED, ex=IDEMPOTENCY_WINDOW_SECONDS),
                budget_seconds=PUBLISH_BUDGET_SECONDS,
            )
        logger.debug(
            "task_enqueued",
            task_name=task_name,
            queue=queue,
            task_id=task_id,
            correlation_id=message_headers[headers.CORRELATION_ID],
        )
        return task_id

    def _claim(self, dedup_key: str) -> bool:
        """Claim an idempotency key for one publish; False when it was already published.

        The claim is short-lived until the publish succeeds, so a producer that dies in
        between blocks the key for a minute, not for the whole idempotency window.
        """
        claimed = retry_through_failover(
            lambda: self._redis.set(dedup_key, PENDING, nx=True, ex=PENDING_CLAIM_SECONDS),
            budget_seconds=PUBLISH_BUDGET_SECONDS,
        )
        if claimed:
            return True
        if self._redis.get(dedup_key) == PENDING:
            raise EnqueueInProgressError(
                "another enqueue with this idempotency key is being published; retry in "
                f"{PENDING_CLAIM_SECONDS}s if it does not show up"
            )
        return False

    def status(self, task_id: str) -> TaskStatus:
        """The task's state (``PENDING`` also means unknown or expired) and its outcome."""
        outcome = AsyncResult(task_id, app=self.app)
        meta = outcome.backend.get_task_meta(task_id)
        state = str(meta.get("status", "PENDING"))
        raw = meta.get("result")
        error: str | None = None
        result: Any = raw
        if state in {"FAILURE", "RETRY", "REVOKED"} and raw is not None:
            decoded = outcome.backend.exception_to_python(raw) if isinstance(raw, dict) else raw
            error = f"{type(decoded).__name__}: {decoded}"
            result = None
        done = meta.get("date_done")
        return TaskStatus(
            task_id=task_id,
            state=state,
            result=result,
            error=error,
            name=meta.get("name"),
            queue=meta.get("queue"),
            retries=meta.get("retries"),
            date_done=datetime.fromisoformat(done) if isinstance(done, str) else done,
        )

    def wait(self, task_id: str, timeout: float, interval: float = 0.1) -> TaskStatus:
        """Poll until the task is ready; raises ``TimeoutError`` with its last state."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.status(task_id)
            if current.ready:
                return current
            if time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} still {current.state} after {timeout}s")
            time.sleep(interval)

    def revoke(self, task_id: str, *, terminate: bool = False) -> None:
        """Stop the task from running; with ``terminate`` also kill it if it already runs.

        The id is also kept in Redis for a day so workers that start later honour it.
        """
        retry_through_failover(
            lambda: self._redis.set(
                keys.revoked(task_id), "1", ex=self.settings.result_expires_seconds
            ),
            budget_seconds=PUBLISH_BUDGET_SECONDS,
        )
        self.app.control.revoke(task_id, terminate=terminate, signal="SIGTERM")

    def close(self) -> None:
        self._redis.close()
        self.app.close()

    def __enter__(self) -> TaskProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_default: TaskProducer | None = None


def default_producer() -> TaskProducer:
    """A process-wide producer configured from the environment, made on first use."""
    global _default  # one producer per process is the point
    if _default is None:
        _default = TaskProducer(load_settings())
    return _default


def enqueue(
    task_name: str,
    *,
    queue: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    countdown: float | None = None,
    eta: datetime | None = None,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
) -> str:
    """:meth:`TaskProducer.enqueue` on the default producer."""
    return default_producer().enqueue(
        task_name,
        queue=queue,
        args=args,
        kwargs=kwargs,
        countdown=countdown,
        eta=eta,
        idempotency_key=idempotency_key,
        correlation_id=correlation_id,
    )


def status(task_id: str) -> TaskStatus:
    """:meth:`TaskProducer.status` on the default producer."""
    return default_producer().status(task_id)


def revoke(task_id: str, *, terminate: bool = False) -> None:
    """:meth:`TaskProducer.revoke` on the default producer."""
    default_producer().revoke(task_id, terminate=terminate)
