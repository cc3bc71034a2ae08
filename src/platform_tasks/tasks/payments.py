"""Tasks of the ``payments`` queue: one charge per idempotency key, however often a task runs.

Four layers keep a charge single: a stored record short-circuits repeats; a lock keeps two runs
of the same key from talking to the gateway at once; the gateway dedupes by ``Idempotency-Key``
for the gap between its charge and our record; and the record is written before the lock goes.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from typing import Any

import redis

from platform_tasks import keys
from platform_tasks.contracts import PROCESS_PAYMENT, PaymentArgs
from platform_tasks.money import AmountError, format_amount, to_minor_units
from platform_tasks.observability.worker_metrics import queue_of, record_payment_deduplicated
from platform_tasks.payment_gateway import (
    Charge,
    ChargeRequest,
    GatewayRejectedError,
    GatewayUnavailableError,
    create_charge,
)
from platform_tasks.tasks._base import PermanentTaskError, PlatformTask, platform_task
from platform_tasks.tasks._lock import OwnedLock
from platform_tasks.tasks._redis import client_for

logger = logging.getLogger(__name__)

#: Long after any redelivery or late retry could still arrive.
RECORD_TTL_SECONDS = 30 * 24 * 3600


class PaymentInProgressError(Exception):
    """Another run holds this idempotency key's lock; try again after it finishes."""


def _lock_timeout(task: PlatformTask) -> int:
    # The payments pool runs threads, where Celery does not enforce time limits, so a gateway
    # call lasts up to its connect plus read timeouts; the lock must outlive either bound.
    return max(task.policy.time_limit, math.ceil(3 * task.settings.payment_gateway_timeout))


def _record(charge: Charge, idempotency_key: str) -> str:
    return json.dumps(
        {
            "charge_id": charge.charge_id,
            "transaction_id": charge.transaction_id,
            "amount_minor": charge.amount_minor,
            "currency": charge.currency,
            "status": charge.status,
            "idempotency_key": idempotency_key,
            "recorded_at": datetime.now(UTC).isoformat(),
        },
        separators=(",", ":"),
    )


def _stored_charge(client: redis.Redis, idempotency_key: str) -> Charge | None:
    raw = client.get(keys.payment_record(idempotency_key))
    if raw is None:
        return None
    document = json.loads(raw)
    return Charge(
        charge_id=str(document["charge_id"]),
        transaction_id=str(document["transaction_id"]),
        amount_minor=int(document["amount_minor"]),
        currency=str(document["currency"]),
        status=str(document["status"]),
    )


def _same_payment(charge: Charge, request: ChargeRequest, source: str) -> Charge:
    """Refuse an idempotency key reused for a different payment: that is a producer bug."""
    ours = (request.transaction_id, request.amount_minor, request.currency)
    theirs = (charge.transaction_id, charge.amount_minor, charge.currency)
    if ours != theirs:
        raise PermanentTaskError(
            f"idempotency key {request.idempotency_key!r} already belongs to a different "
            f"payment ({source}: transaction {charge.transaction_id}, "
            f"{charge.amount_minor} minor units {charge.currency}); not charging "
            f"transaction {request.transaction_id}"
        )
    return charge


def _result(charge: Charge, *, deduplicated: bool) -> dict[str, Any]:
    return {
        "charge_id": charge.charge_id,
        "transaction_id": charge.transaction_id,
        "amount": format_amount(charge.amount_minor, charge.currency),
        "currency": charge.currency,
        "status": charge.status,
        "deduplicated": deduplicated,
    }


def _deduplicated(task: PlatformTask, stored: Charge, request: ChargeRequest) -> dict[str, Any]:
    """The answer for a key already charged: the stored charge, counted as a deduplication."""
    result = _result(_same_payment(stored, request, "stored record"), deduplicated=True)
    record_payment_deduplicated(queue_of(task.request), str(task.name))
    return result


def _charge_under_lock(
    task: PlatformTask, client: redis.Redis, request: ChargeRequest
) -> dict[str, Any]:
    # A run that finished between our first look and taking the lock left its record.
    stored = _stored_charge(client, request.idempotency_key)
    if stored is not None:
        return _deduplicated(task, stored, request)
    settings = task.settings
    try:
        charge = create_charge(
            str(settings.payment_gateway_url), request, timeout=settings.payment_gateway_timeout
        )
    except GatewayUnavailableError as error:
        task.retry_transient(error)
    except GatewayRejectedError as error:
        raise PermanentTaskError(str(error)) from error
    _same_payment(charge, request, "gateway")
    # A Redis error here retries the task; the gateway answers the retry with this charge.
    client.set(
        keys.payment_record(request.idempotency_key),
        _record(charge, request.idempotency_key),
        ex=RECORD_TTL_SECONDS,
    )
    return _result(charge, deduplicated=False)


@platform_task(PROCESS_PAYMENT, PaymentArgs)
def process_payment(task: PlatformTask, arguments: PaymentArgs) -> dict[str, Any]:
    """Charge ``amount`` ``currency`` for ``transaction_id`` exactly once per idempotency key."""
    try:
        amount_minor = to_minor_units(arguments.amount, arguments.currency)
    except AmountError as error:
        raise PermanentTaskError(str(error)) from error
    request = ChargeRequest(
        transaction_id=arguments.transaction_id,
        amount_minor=amount_minor,
        currency=arguments.currency,
        idempotency_key=arguments.idempotency_key,
    )
    client = client_for(task.settings)
    try:
        stored = _stored_charge(client, request.idempotency_key)
        if stored is not None:
            return _deduplicated(task, stored, request)
        lock = OwnedLock(client, keys.payment_lock(request.idempotency_key), _lock_timeout(task))
        if not lock.acquire():
            task.retry_transient(PaymentInProgressError(
                f"another run is charging idempotency key {request.idempotency_key!r}"
            ))
        try:
            return _charge_under_lock(task, client, request)
        finally:
            # Released on every exit, retries included, so the next attempt can take it.
            try:
                if not lock.release():
                    logger.warning("payment lock %s expired before its run finished", lock.key)
            except redis.RedisError:
                logger.warning("could not release payment lock %s; it expires by itself",
                               lock.key, exc_info=True)
    except redis.RedisError as error:
        task.retry_transient(error)
