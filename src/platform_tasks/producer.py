"""The API producer services call: enqueue a task by name, read its state, revoke it.

Producers never import task code. Every check happens before anything is written to Redis, so
a refused call leaves no trace on the broker.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import structlog
from celery.exceptions import BackendGetMetaError
from celery.result import AsyncResult
from celery.signals import after_task_publish, before_task_publish
from celery.utils.saferepr import saferepr
from kombu.exceptions import OperationalError
from kombu.serialization import dumps as serialize
from kombu.utils.json import JSONEncoder as KombuJSONEncoder

from platform_tasks import batch_publish, headers, keys, propagation
from platform_tasks.app import PUBLISH_RETRY_POLICY, PlatformCelery, create_app
from platform_tasks.batch_publish import quick_saferepr
from platform_tasks.contracts import TASKS, InvalidArgumentsError, TaskContract
from platform_tasks.message_template import (
    MessageTemplate,
    compact_size,
    encode_arguments,
    random_uuid4s,
)
from platform_tasks.queues import QUEUE_NAMES, policy_for
from platform_tasks.redis_client import connect
from platform_tasks.redis_errors import is_transient_reply, retry_through_failover
from platform_tasks.settings import Settings, load_settings

#: How long an idempotency key keeps a second enqueue of the same task from publishing again.
IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600
#: How long a claimed but not yet published key blocks others (a producer died mid-publish).
PENDING_CLAIM_SECONDS = 60
PENDING, PUBLISHED = "pending", "published"

#: How long an enqueue keeps retrying transient Redis replies (see redis_errors).
PUBLISH_BUDGET_SECONDS = 40.0
#: How long a publish onto a queue that asks for replication waits for its replicas (and
#: never longer than the socket timeout allows: WAIT blocks the reply).
CONFIRM_TIMEOUT_MS = 2000

#: Messages per Redis transaction in ``enqueue_many``.
BULK_BATCH_SIZE = 500

#: Its lines are written only where structlog was configured (by the platform's
#: ``configure_logging``, or by the service that embeds the producer): unconfigured, structlog
#: would print every debug line to stdout as plain text, one per enqueue.
logger = structlog.get_logger("platform_tasks.producer")

_ID_NAMESPACE = uuid.UUID("6f0c8a55-2f7e-4f69-9d1e-7c3b1f1d5a10")


class ProducerError(Exception):
    """Base of every error the producer raises itself: a call it refuses (``refusal``:
    nothing was written), or one it could not complete."""

    #: The call was refused before anything was written; False for the errors of a call
    #: that was accepted and then could not be completed.
    refusal = True


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


class ReplicationNotConfirmedError(ProducerError):
    """The master took the message but not enough replicas confirmed it in time.

    The message is on the master and will most likely run; a failover right now could lose
    it. Enqueue again with the same idempotency key (the task must be idempotent, as the
    queues that ask for confirmation are): a duplicate message, never a lost one.
    """

    refusal = False


class BrokerUnavailableError(
    ProducerError, redis.ConnectionError, redis.TimeoutError, OperationalError
):
    """The broker could not be reached (down, cut off, refusing the credentials) or kept
    refusing writes for now (read-only, no replica, loading) through the call's retries
    (about 40 s for a publish: longer than a failover takes).

    The message names the call, the Redis it used (never a credential) and the error
    underneath, which the chain of ``__cause__`` leads to. A publish that failed this way
    may or may not have reached the broker: enqueue again with the same idempotency key
    where it matters. It is also a redis-py ``ConnectionError`` and ``TimeoutError`` and a
    kombu ``OperationalError``, the errors such calls raised before, so handlers for those
    still catch it (not handlers for narrower classes, such as ``AuthenticationError``).
    """

    refusal = False


#: What a call's Redis, kombu and Celery clients raise, the broker being unavailable among
#: them (anything else, from the caller's own code, is never taken for that).
_CLIENT_ERRORS = (redis.RedisError, OperationalError, BackendGetMetaError)


def _underlying(error: BaseException) -> BaseException:
    """What went wrong under kombu's and Celery's wrappers: kombu's retries raise any error
    of its transport as an ``OperationalError`` (a refused write too), Celery's result
    backend its own error, each from the last one it got."""
    while isinstance(error, OperationalError | BackendGetMetaError) and error.__cause__:
        error = error.__cause__
    return error


#: What a caller of a publish that failed with the broker unavailable should know.
MAYBE_PUBLISHED = ("it may or may not have been published: enqueue again with the same "
                   "idempotency key where it matters")
PUBLISHED_UNMARKED = (
    "it was published, but its idempotency key could not be marked as published: an enqueue "
    f"with the same key is refused as in progress for up to {PENDING_CLAIM_SECONDS} s, and "
    "publishes it again after that"
)


def _unavailable(settings: Settings, call: str, error: BaseException, *, db: int,
                 outcome: str | None) -> BrokerUnavailableError | None:
    """The error for ``call`` to raise from ``error`` when ``error`` says the broker is
    unavailable (``outcome``: what became of a publish); None when it says something else
    (the caller raises it as it is)."""
    underlying = _underlying(error)
    # A bare OperationalError is kombu's own word for a connection it could not make.
    if not (isinstance(underlying, redis.ConnectionError | redis.TimeoutError | OSError)
            or type(underlying) is OperationalError or is_transient_reply(underlying)):
        return None
    return BrokerUnavailableError(
        f"{call}: the broker ({settings.redis_location(db)}) is unavailable "
        f"({type(underlying).__name__}: {underlying})" + (f"; {outcome}" if outcome else "")
    )


class _OnTheBroker:
    """A block of ``call``'s work on the broker: an error in it that says the broker is
    unavailable leaves as a :class:`BrokerUnavailableError` (``outcome``: what became of a
    publish); any other error leaves as it is."""

    __slots__ = ("_call", "_db", "_outcome", "_settings")

    def __init__(self, settings: Settings, call: str, *, db: int, outcome: str | None) -> None:
        self._settings, self._call, self._db, self._outcome = settings, call, db, outcome

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: Any) -> None:
        if (error is None or isinstance(error, BrokerUnavailableError)
                or not isinstance(error, _CLIENT_ERRORS)):
            return
        unavailable = _unavailable(self._settings, self._call, error, db=self._db,
                                   outcome=self._outcome)
        if unavailable is not None:
            raise unavailable from error


class PartialEnqueueError(ProducerError):
    """A bulk enqueue failed after some of its batches were published.

    ``task_ids`` are the ids of the first ``len(task_ids)`` items, all of them on the broker.
    The batch that failed next may or may not be (a lost reply hides whether its write
    landed; the message names its items); none after it is. The error that stopped the call
    is the ``__cause__``.
    """

    refusal = False

    def __init__(self, message: str, task_ids: list[str]) -> None:
        super().__init__(message)
        self.task_ids = task_ids


@dataclass(frozen=True, slots=True)
class EnqueueRequest:
    """One task of :meth:`TaskProducer.enqueue_many`; fields as ``enqueue``'s keywords."""

    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] | None = None
    countdown: float | None = None
    eta: datetime | None = None
    idempotency_key: str | None = None
    correlation_id: str | None = None


#: What ``enqueue_many`` accepts per task: a request, or a plain ``(args, kwargs)`` pair.
BulkItem = EnqueueRequest | tuple[Sequence[Any], Mapping[str, Any] | None]


@dataclass(slots=True)
class _Checked:
    """One validated item of a bulk enqueue, ready to publish."""

    index: int
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    #: ``[args, kwargs]`` as kombu's JSON, encoded once by the payload check.
    arguments: str
    eta: datetime | None
    correlation_id: str
    idempotency_key: str | None
    #: Set for the first item carrying an idempotency key; later items with the same key
    #: in the same call are the same task and publish nothing.
    dedup_key: str | None


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
        # The worker holds a delayed message unacknowledged, in memory, for the whole delay:
        # holds are capped (queues.MAX_HOLD_SECONDS) so a worker's backlog stays bounded.
        raise InvalidScheduleError(
            f"eta is {delay:.0f}s ahead; this queue holds delayed work safely for at most "
            f"{max_delay}s (use a beat schedule for later work)"
        )
    return eta


#: kombu's JSON encoder, made once: ``kombu.utils.json.dumps`` makes one per call.
_KOMBU_JSON = KombuJSONEncoder()


def _encode(task_name: str, args: list[Any], kwargs: dict[str, Any], limit: int) -> str:
    """``[args, kwargs]`` as the message body will carry them, once checked to be JSON and
    within ``limit`` bytes (counted compact, without the spaces kombu writes)."""
    try:
        encoded = encode_arguments(args, kwargs)
    except (TypeError, ValueError) as error:
        raise PayloadNotJSONError(f"{task_name}: arguments are not JSON: {error}") from None
    except RecursionError:
        raise PayloadNotJSONError(
            f"{task_name}: arguments are not JSON: a value contains itself, or is nested "
            "deeper than JSON encoding allows"
        ) from None
    # Both forms are ASCII and the spaced one is never the shorter: only a spaced form over
    # the limit needs counting again.
    if len(encoded) > limit:
        size = compact_size(args, kwargs)
        if size > limit:
            raise PayloadTooLargeError(
                f"{task_name}: payload is {size} bytes, the limit is {limit} "
                "(PLATFORM_TASKS_MAX_PAYLOAD_BYTES); store large data elsewhere and pass a "
                "reference"
            )
    return encoded


def _check_queue(queue: str) -> None:
    if queue not in QUEUE_NAMES:
        raise UnknownQueueError(
            f"unknown queue {queue!r}; known queues: {', '.join(QUEUE_NAMES)}"
        )


def _contract(task_name: str) -> TaskContract:
    contract = TASKS.get(task_name)
    if contract is None:
        raise UnknownTaskError(
            f"unknown task {task_name!r}; known tasks: {', '.join(sorted(TASKS))}"
        )
    return contract


def _check_idempotency_key(idempotency_key: str) -> None:
    if not idempotency_key or len(idempotency_key) > 255:
        raise InvalidPayloadError("idempotency_key must be 1-255 characters")


def _idempotent_id(task_name: str, idempotency_key: str) -> str:
    """The same key for the same task always names the same task id."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{task_name}\n{idempotency_key}"))


def _as_request(item: object) -> EnqueueRequest:
    if isinstance(item, EnqueueRequest):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        args, kwargs = item
        return EnqueueRequest(args=args, kwargs=kwargs)
    raise InvalidPayloadError(
        f"expected an EnqueueRequest or an (args, kwargs) tuple, got {type(item).__name__}"
    )


def _platform_headers(item: _Checked) -> dict[str, Any]:
    """The headers ``enqueue`` adds to Celery's, in the same order."""
    message_headers: dict[str, Any] = {
        headers.CORRELATION_ID: item.correlation_id,
        headers.ENQUEUED_AT: time.time(),
    }
    if item.idempotency_key is not None:
        message_headers[headers.IDEMPOTENCY_KEY] = item.idempotency_key
    return message_headers


@dataclass(frozen=True, slots=True)
class _ReprLimits:
    """How Celery cuts ``argsrepr``/``kwargsrepr``, read once per batch (``app.conf`` lookups
    cost more than the reprs)."""

    args_size: int
    kwargs_size: int
    levels: int

    @classmethod
    def of(cls, app: PlatformCelery) -> _ReprLimits:
        amqp = app.amqp
        return cls(amqp.argsrepr_maxsize, amqp.kwargsrepr_maxsize, app.conf.task_repr_maxlevels)


def _reprs(limits: _ReprLimits, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[str, str]:
    """The ``argsrepr`` and ``kwargsrepr`` headers Celery writes for these arguments."""
    levels = limits.levels
    argsrepr = quick_saferepr(args, limits.args_size, levels) or saferepr(
        args, limits.args_size, maxlevels=levels
    )
    kwargsrepr = quick_saferepr(kwargs, limits.kwargs_size, levels) or saferepr(
        kwargs, limits.kwargs_size, maxlevels=levels
    )
    return argsrepr, kwargsrepr


def _publish_observed(task_name: str) -> bool:
    """Whether a publish of ``task_name`` has anyone to tell but the platform's own receiver.

    That receiver (``propagation``) only fills in the correlation and enqueued-at headers
    when a message lacks them, and every message the producer builds has both: for those
    messages it does nothing, so not sending the signals to it changes nothing.
    """
    if after_task_publish.has_listeners(task_name):
        return True
    return any(key[0] != propagation.DISPATCH_UID for key, _ in before_task_publish.receivers)


def _render_one(
    limits: _ReprLimits, template: MessageTemplate, item: _Checked, root_id: str | None,
    enqueued_at: float, delivery_tag: str,
) -> str:
    argsrepr, kwargsrepr = _reprs(limits, item.args or (), item.kwargs)
    return template.render(
        arguments=item.arguments,
        task_id=item.task_id,
        root_id=root_id or item.task_id,
        eta=item.eta.isoformat() if item.eta is not None else None,
        argsrepr=argsrepr,
        kwargsrepr=kwargsrepr,
        correlation_id=item.correlation_id,
        enqueued_at=enqueued_at,
        idempotency_key=item.idempotency_key,
        delivery_tag=delivery_tag,
    )


def _verified_template(
    limits: _ReprLimits, message: dict[str, Any], written: str, first: _Checked,
    root_id: str | None,
) -> MessageTemplate | None:
    """A template of ``message``, if it renders that message exactly as kombu wrote it.

    Checked once per batch on the message Celery and kombu built in full, so a change in
    either (a header, an encoder) sends the batch down the per-message path instead.
    """
    template = MessageTemplate.from_message(message)
    if template is None:
        return None
    again = _render_one(limits, template, first, root_id,
                        message["headers"][headers.ENQUEUED_AT],
                        message["properties"]["delivery_tag"])
    return template if again == written else None


def _rendered(
    limits: _ReprLimits, template: MessageTemplate, items: list[_Checked],
    root_id: str | None,
) -> Iterator[str]:
    """Each item's message from ``template``: only what varies per task is encoded."""
    now = time.time
    for item, delivery_tag in zip(items, random_uuid4s(len(items)), strict=True):
        yield _render_one(limits, template, item, root_id, now(), delivery_tag)


@dataclass(frozen=True, slots=True)
class _KeptTemplate:
    """A verified template kept across calls, with what rendering from it needs."""

    template: MessageTemplate
    list_key: str
    limits: _ReprLimits


def _from_template(
    app: PlatformCelery,
    channel: Any,
    task_name: str,
    queue: str,
    items: list[_Checked],
    template: dict[str, Any],
    celery_headers: dict[str, Any],
    root_id: str | None,
) -> Iterator[str]:
    """Each item's message as kombu would write it, from a message kombu wrote for the batch.

    Mirrors what varies per task in Celery's ``as_task_v2``/``send_task_message`` and
    kombu's ``Producer.publish``/``basic_publish``/``_put``; the rest is the template's.
    """
    serializer = app.conf.task_serializer
    retry_policy = dict(app.conf.task_publish_retry_policy, **PUBLISH_RETRY_POLICY)
    send_before = before_task_publish.send
    send_after = after_task_publish.send
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    template_properties = template["properties"]
    limits = _ReprLimits.of(app)
    for item in items:
        task_id = item.task_id
        args: Sequence[Any] = item.args or ()  # as as_task_v2: an empty list reads "()"
        kwargs = item.kwargs or {}
        message_headers = dict(celery_headers)
        message_headers["id"] = task_id
        message_headers["root_id"] = root_id or task_id
        message_headers["eta"] = item.eta.isoformat() if item.eta is not None else None
        message_headers["argsrepr"], message_headers["kwargsrepr"] = _reprs(limits, args, kwargs)
        message_headers.update(_platform_headers(item))
        properties = {"correlation_id": task_id, "reply_to": template_properties["reply_to"]}
        body = (args, kwargs, embed)
        send_before(sender=task_name, body=body, exchange="", routing_key=queue, declare=[],
                    headers=message_headers, properties=properties, retry_policy=retry_policy)
        content_type, content_encoding, data = serialize(body, serializer=serializer)
        encoded, _ = channel.encode_body(data, template_properties["body_encoding"])
        yield _KOMBU_JSON.encode({
            "body": encoded,
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": message_headers,
            "properties": {
                **template_properties, **properties, "delivery_tag": str(uuid.uuid4()),
            },
        })
        send_after(sender=task_name, body=body, headers=message_headers, exchange="",
                   routing_key=queue)


class TaskProducer:
    """Enqueues platform tasks by name and reads back their state."""

    def __init__(self, settings: Settings, app: PlatformCelery | None = None) -> None:
        self.settings = settings
        self.app = app if app is not None else create_app(settings, include_tasks=False)
        self._redis = connect(settings)
        #: Per (task name, queue, reply-to, pid), a template verified against a message kombu
        #: wrote, and the list it went onto: later publishes outside a task skip Celery and
        #: kombu (``_build``).
        self._templates: dict[tuple[str, str, str, int], _KeptTemplate] = {}

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
        _check_queue(queue)
        contract = _contract(task_name)
        call_args, call_kwargs, when, arguments = self._check_call(
            task_name, contract, queue, args, kwargs, countdown, eta
        )

        task_id = str(uuid.uuid4())
        dedup_key: str | None = None
        if idempotency_key is not None:
            _check_idempotency_key(idempotency_key)
            task_id = _idempotent_id(task_name, idempotency_key)
            dedup_key = keys.enqueue_dedup(task_name, idempotency_key)
        item = _Checked(
            index=0, task_id=task_id, args=call_args, kwargs=call_kwargs,
            arguments=arguments, eta=when, correlation_id=correlation_id or task_id,
            idempotency_key=idempotency_key, dedup_key=dedup_key,
        )
        # A BrokerUnavailableError from inside (the publish landed, its key could not be
        # marked) leaves as it is.
        with _OnTheBroker(self.settings, task_name, db=self.settings.broker_db,
                          outcome=MAYBE_PUBLISHED):
            self._publish_one(task_name, queue, item)
        return task_id

    def _publish_one(self, task_name: str, queue: str, item: _Checked) -> None:
        """``enqueue`` once its call is checked: claim the key, publish, mark it published."""
        task_id, dedup_key = item.task_id, item.dedup_key
        if dedup_key is not None and not self._claim(dedup_key):
            return
        try:
            self._write(queue, self._build(task_name, queue, [item]))
        except BaseException:
            if dedup_key is not None:
                # Not published: let the caller's retry with the same key publish it. If this
                # delete fails too, the pending claim expires within a minute.
                with contextlib.suppress(redis.RedisError):
                    self._redis.delete(dedup_key)
            raise
        if dedup_key is not None:
            self._mark_published(task_name, [dedup_key])
        self._add_to_parent([task_id])
        if structlog.is_configured():
            logger.debug("task_enqueued", task_name=task_name, queue=queue, task_id=task_id,
                         correlation_id=item.correlation_id)

    def enqueue_many(
        self,
        task_name: str,
        items: Iterable[BulkItem],
        *,
        queue: str,
        correlation_id: str | None = None,
        batch_size: int = BULK_BATCH_SIZE,
    ) -> list[str]:
        """Publish one ``task_name`` message per item onto ``queue``; the task ids, in order.

        Each item is an :class:`EnqueueRequest` or an ``(args, kwargs)`` pair. Every item is
        checked first, as ``enqueue`` checks its call (same exceptions, prefixed with
        ``item <index>:``); if one is refused, nothing is published. The messages are the
        ones ``enqueue`` would publish, written ``batch_size`` at a time, each batch in one
        Redis transaction that is retried through a failover. ``correlation_id`` is the
        default for items that carry none (otherwise each task's own id).

        Idempotency keys work as in ``enqueue``: a key already published within a day (or
        earlier in the same call) returns its first task's id and publishes nothing.
        """
        _check_queue(queue)
        contract = _contract(task_name)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError("batch_size must be a positive integer")
        checked = self._check_items(task_name, contract, queue, items, correlation_id)
        task_ids = [item.task_id for item in checked]
        done = failing = 0
        try:
            for start in range(0, len(checked), batch_size):
                batch = checked[start:start + batch_size]
                failing = len(batch)
                with _OnTheBroker(self.settings, task_name, db=self.settings.broker_db,
                                  outcome=MAYBE_PUBLISHED):
                    published = self._publish_batch(task_name, queue, batch)
                self._add_to_parent(published)
                done += len(batch)
        except BaseException as error:
            if done == 0 or not isinstance(error, Exception):
                raise
            end = done + failing
            raise PartialEnqueueError(
                f"{task_name}: published items 0-{done - 1} of {len(checked)}, then failed "
                f"on items {done}-{end - 1}: {error!r}; those may or may not have been "
                f"published (a lost reply hides whether a write landed), "
                + (f"items {end} onwards were not" if end < len(checked) else
                   "and there were no more"),
                task_ids[:done],
            ) from error
        if structlog.is_configured():
            logger.debug("tasks_enqueued", task_name=task_name, queue=queue, count=len(checked))
        return task_ids

    def _check_items(
        self,
        task_name: str,
        contract: TaskContract,
        queue: str,
        items: Iterable[BulkItem],
        correlation_id: str | None,
    ) -> list[_Checked]:
        checked: list[_Checked] = []
        keys_seen: set[str] = set()
        requests = list(items)
        # One read of the OS's randomness for every id instead of one per task.
        fresh_ids = iter(random_uuid4s(len(requests)))
        for index, item in enumerate(requests):
            try:
                if type(item) is tuple and len(item) == 2:
                    # A plain (args, kwargs) pair, the usual bulk item: no request object.
                    args, kwargs = item
                    countdown = eta = key = own_correlation_id = None
                else:
                    request = _as_request(item)
                    args, kwargs, countdown, eta = (request.args, request.kwargs,
                                                    request.countdown, request.eta)
                    key, own_correlation_id = request.idempotency_key, request.correlation_id
                call_args, call_kwargs, when, arguments = self._check_call(
                    task_name, contract, queue, args, kwargs, countdown, eta,
                )
                if key is not None:
                    _check_idempotency_key(key)
            except ProducerError as error:
                raise type(error)(f"item {index}: {error}") from None
            task_id = next(fresh_ids) if key is None else _idempotent_id(task_name, key)
            dedup_key: str | None = None
            if key is not None and key not in keys_seen:
                keys_seen.add(key)
                dedup_key = keys.enqueue_dedup(task_name, key)
            checked.append(_Checked(
                index=index,
                task_id=task_id,
                args=call_args,
                kwargs=call_kwargs,
                arguments=arguments,
                eta=when,
                correlation_id=own_correlation_id or correlation_id or task_id,
                idempotency_key=key,
                dedup_key=dedup_key,
            ))
        return checked

    def _add_to_parent(self, task_ids: list[str]) -> None:
        """Inside a task, list the tasks it enqueued in its result's ``children``, as
        Celery's ``send_task`` does, so ``AsyncResult(parent).children`` names them.
        Not for a task whose result is not stored: the list would only fill its memory."""
        parent = self.app.current_worker_task
        if parent is None or parent.ignore_result or parent.request.ignore_result:
            return
        for task_id in task_ids:
            parent.add_trail(self.app.AsyncResult(task_id))

    def _publish_batch(self, task_name: str, queue: str, batch: list[_Checked]) -> list[str]:
        """Publish ``batch`` in one transaction, after claiming its idempotency keys; the
        ids of the tasks published (not those whose key was published before)."""
        claimed = self._claim_many([item for item in batch if item.dedup_key is not None])
        to_send = [item for item in batch
                   if item.idempotency_key is None or item.dedup_key in claimed]
        if not to_send:
            return []
        try:
            self._write(queue, self._build(task_name, queue, to_send))
        except BaseException:
            self._release(claimed)
            raise
        if claimed:
            self._mark_published(task_name, claimed)
        return [item.task_id for item in to_send]

    def _mark_published(self, task_name: str, dedup_keys: Iterable[str]) -> None:
        """Mark the idempotency keys of tasks just published. If the broker is unavailable
        for it, the ``BrokerUnavailableError`` says the tasks were published."""
        def mark() -> None:
            with self._redis.pipeline(transaction=False) as pipe:
                for dedup_key in dedup_keys:
                    pipe.set(dedup_key, PUBLISHED, ex=IDEMPOTENCY_WINDOW_SECONDS)
                pipe.execute()

        with _OnTheBroker(self.settings, task_name, db=self.settings.broker_db,
                          outcome=PUBLISHED_UNMARKED):
            retry_through_failover(mark, budget_seconds=PUBLISH_BUDGET_SECONDS)

    def _build(
        self, task_name: str, queue: str, items: list[_Checked]
    ) -> list[batch_publish.Command]:
        """The Redis commands that publish ``items``: the messages ``enqueue`` would send.

        This is ``app.send_task`` unrolled for one task name and queue. Routing, the parent
        task lookup and the queue declaration happen once per batch. The batch's first
        message goes all the way through Celery (``create_task_message``,
        ``send_task_message``) and kombu (``Producer.publish``, the Redis channel's publish);
        the others are made from it, changing only what differs per task (id, arguments
        and their reprs, eta, headers, delivery tag), with the publish signals still sent
        per message. Where that shortcut could differ (compression, task-sent events, a
        queue with an expiry), every message takes the whole way. Outside a task, the
        template of the first message is kept, and later calls for the same task and queue
        start from it: none of their messages goes through Celery and kombu. Nothing here
        retries: the batch's single write does.
        """
        app = self.app
        reply_to = app.thread_oid
        parent = app.current_worker_task
        # A task's parent and root are in its headers: only publishes from outside a task
        # share a template across calls. The pid is in Celery's ``origin`` header: a forked
        # child makes its own.
        cache_key = (task_name, queue, reply_to, os.getpid()) if parent is None else None
        sent_event = app.conf.task_send_sent_event
        plain = not sent_event and not app.conf.task_compression
        if cache_key is not None and plain and not _publish_observed(task_name):
            kept = self._templates.get(cache_key)
            if kept is not None:
                return [("lpush", (kept.list_key, payload))
                        for payload in _rendered(kept.limits, kept.template, items, None)]
        amqp = app.amqp
        routed = amqp.router.route({"queue": queue}, task_name, (), {}, None)
        options: dict[str, Any] = {
            **routed, "retry": False, "retry_policy": PUBLISH_RETRY_POLICY, "declare": [],
        }
        root_id = (parent.request.root_id or parent.request.id) if parent else None
        parent_id = parent.request.id if parent else None

        def celery_message(item: _Checked) -> Any:
            # Positional as app.send_task passes them.
            return amqp.create_task_message(
                item.task_id, task_name, item.args, item.kwargs, None, item.eta,
                None, None, None, 0, None, None, None, reply_to, None, None,
                sent_event, root_id, parent_id, None, None,
                ignore_result=None, replaced_task_nesting=0, **options,
            )

        with (
            app.producer_or_acquire() as kombu_producer,
            batch_publish.collecting(kombu_producer) as collector,
        ):
            # What the first publish of each connection declares (the queue's binding). Retried
            # here, not by kombu: kombu's retries give up on a refusal for now (READONLY,
            # NOREPLICAS, after a failover) at the first reconnect, and wrap what they raise.
            retry_through_failover(lambda: kombu_producer.maybe_declare(routed["queue"]),
                                   budget_seconds=PUBLISH_BUDGET_SECONDS)
            first = celery_message(items[0])
            celery_headers = dict(first.headers)
            amqp.send_task_message(kombu_producer, task_name, first,
                                   headers=_platform_headers(items[0]), **options)
            message = collector.last_message
            shortcut = (
                message is not None
                and len(collector.commands) == 1
                and collector.commands[0][0] == "lpush"
                and plain
            )
            if not shortcut:
                for item in items[1:]:
                    amqp.send_task_message(kombu_producer, task_name, celery_message(item),
                                           headers=_platform_headers(item), **options)
                return collector.take()
            assert message is not None
            list_key, written = collector.commands[0][1]
            commands = collector.take()
            rest = items[1:]
            fast = None
            limits = _ReprLimits.of(app)
            if (rest or cache_key is not None) and not _publish_observed(task_name):
                fast = _verified_template(limits, message, written, items[0], root_id)
                if fast is not None and cache_key is not None:
                    self._templates[cache_key] = _KeptTemplate(fast, list_key, limits)
            payloads = (
                _rendered(limits, fast, rest, root_id) if fast is not None
                else _from_template(app, kombu_producer.channel, task_name, queue, rest,
                                    message, celery_headers, root_id)
            )
            commands.extend(("lpush", (list_key, payload)) for payload in payloads)
            return commands

    def _write(self, queue: str, commands: list[batch_publish.Command]) -> None:
        """Publish ``commands`` in one transaction, retried through a failover; on a
        replicated broker, return once the queue's replicas confirmed them. (A single Redis
        has no replica to wait for: the same commands go without the ``WAIT``.)"""
        if self._confirms(queue):
            self._write_confirmed(queue, commands)
            return
        retry_through_failover(
            lambda: batch_publish.write_commands(self._redis, commands),
            budget_seconds=PUBLISH_BUDGET_SECONDS,
        )

    def _confirms(self, queue: str) -> bool:
        """Whether publishes onto ``queue`` wait for replicas (only a replicated broker has
        any: with a single Redis URL the master's word is all there is)."""
        return self.settings.uses_sentinel and policy_for(queue).confirm_replicas > 0

    def _write_confirmed(self, queue: str, commands: list[batch_publish.Command]) -> None:
        """Publish ``commands`` and return once the queue's replicas confirmed them."""
        wanted = policy_for(queue).confirm_replicas
        wait_ms = self._confirm_timeout_ms()
        confirmed = retry_through_failover(
            lambda: batch_publish.write_confirmed(self._redis, commands, wanted, wait_ms),
            budget_seconds=PUBLISH_BUDGET_SECONDS,
        )
        if confirmed < wanted:
            raise ReplicationNotConfirmedError(
                f"{queue}: the master took the message but {confirmed} of {wanted} "
                f"replica(s) confirmed it within {wait_ms / 1000:g}s; a failover "
                "now could lose it: enqueue again with the same idempotency key"
            )

    def _confirm_timeout_ms(self) -> int:
        # The reply to WAIT must come before the socket gives up on it.
        socket_ms = int(self.settings.redis_socket_timeout * 1000)
        return max(100, min(CONFIRM_TIMEOUT_MS, socket_ms - 500))

    def _claim_many(self, items: list[_Checked]) -> set[str]:
        """Claim the items' idempotency keys in one round trip; the keys claimed.

        Keys already published are left out (their items publish nothing). A key another
        producer is publishing right now releases this batch's claims and raises.
        """
        if not items:
            return set()
        dedup_keys = [item.dedup_key for item in items if item.dedup_key is not None]

        def claim() -> list[Any]:
            with self._redis.pipeline(transaction=False) as pipe:
                for dedup_key in dedup_keys:
                    pipe.set(dedup_key, PENDING, nx=True, ex=PENDING_CLAIM_SECONDS)
                return pipe.execute()

        replies = retry_through_failover(claim, budget_seconds=PUBLISH_BUDGET_SECONDS)
        claimed = {key for key, reply in zip(dedup_keys, replies, strict=True) if reply}
        others = [(item, key) for item, key in zip(items, dedup_keys, strict=True)
                  if key not in claimed]
        if others:
            states = self._redis.mget([key for _, key in others])
            for (item, _), state in zip(others, states, strict=True):
                if state == PENDING:
                    self._release(claimed)
                    raise EnqueueInProgressError(
                        f"item {item.index}: another enqueue with this idempotency key is "
                        f"being published; retry in {PENDING_CLAIM_SECONDS}s if it does not "
                        "show up"
                    )
        return claimed

    def _release(self, claimed: set[str]) -> None:
        """Give back claims whose items were not published (else they expire in a minute)."""
        if claimed:
            with contextlib.suppress(redis.RedisError):
                self._redis.delete(*claimed)

    def _check_call(
        self,
        task_name: str,
        contract: TaskContract,
        queue: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        countdown: float | None,
        eta: datetime | None,
    ) -> tuple[list[Any], dict[str, Any], datetime | None, str]:
        """The checks of one call's arguments and schedule; raises what ``enqueue`` documents.

        Returns the arguments, the eta, and ``[args, kwargs]`` encoded as the body has them.
        """
        if isinstance(args, str | bytes) or not isinstance(args, Sequence):
            raise InvalidPayloadError(f"{task_name}: args must be a list or tuple")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise InvalidPayloadError(f"{task_name}: kwargs must be a mapping of names to values")
        call_args = list(args)
        call_kwargs = dict(kwargs or {})
        arguments = _encode(task_name, call_args, call_kwargs, self.settings.max_payload_bytes)
        try:
            contract.bind(args, call_kwargs)
        except InvalidArgumentsError as error:
            raise InvalidPayloadError(str(error)) from None
        if countdown is None and eta is None:
            return call_args, call_kwargs, None, arguments
        when = _check_schedule(countdown, eta, policy_for(queue).max_delay_seconds)
        return call_args, call_kwargs, when, arguments

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
        with _OnTheBroker(self.settings, "status", db=self.settings.result_db, outcome=None):
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
        with _OnTheBroker(self.settings, "revoke", db=self.settings.broker_db, outcome=None):
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


def enqueue_many(
    task_name: str,
    items: Iterable[BulkItem],
    *,
    queue: str,
    correlation_id: str | None = None,
    batch_size: int = BULK_BATCH_SIZE,
) -> list[str]:
    """:meth:`TaskProducer.enqueue_many` on the default producer."""
    return default_producer().enqueue_many(
        task_name, items, queue=queue, correlation_id=correlation_id, batch_size=batch_size
    )


def status(task_id: str) -> TaskStatus:
    """:meth:`TaskProducer.status` on the default producer."""
    return default_producer().status(task_id)


def revoke(task_id: str, *, terminate: bool = False) -> None:
    """:meth:`TaskProducer.revoke` on the default producer."""
    default_producer().revoke(task_id, terminate=terminate)
