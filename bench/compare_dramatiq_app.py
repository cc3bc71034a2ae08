"""Dramatiq, as its guide sets it up with Redis: the baseline's actors for ``bench/compare.py``.

Run by the harness as ``python -m dramatiq compare_dramatiq_app --processes P --threads 8``;
the producer side imports it too. Default middleware, default queue, no result backend (its
guide adds one only for results someone reads): the broker URL comes from
``COMPARE_DRAMATIQ_URL``.
"""

from __future__ import annotations

import os

import compare_workload
import dramatiq
from dramatiq.brokers.redis import RedisBroker

BROKER_URL_ENV = "COMPARE_DRAMATIQ_URL"
#: Dramatiq's own default; spelled out because the harness reads this queue's keys.
QUEUE = "default"
NAMESPACE = "dramatiq"

broker = RedisBroker(url=os.environ[BROKER_URL_ENV], namespace=NAMESPACE)  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE)
def add(x: int, y: int) -> int:
    return compare_workload.add(x, y)


@dramatiq.actor(queue_name=QUEUE)
def stamp(probe_id: str) -> None:
    compare_workload.stamp(probe_id)


@dramatiq.actor(queue_name=QUEUE)
def thumbnail(source: str, sizes: list[list[int]]) -> None:
    compare_workload.thumbnail(source, sizes)


@dramatiq.actor(queue_name=QUEUE)
def charge(transaction_id: str, amount_minor: int, currency: str, idempotency_key: str) -> None:
    compare_workload.charge(transaction_id, amount_minor, currency, idempotency_key)
