"""The work the baselines' tasks do in ``bench/compare.py``: the same work as the platform's.

Imported inside the baseline workers (the seed's ``tasks.py``, the Dramatiq actors, RQ jobs
by dotted name), which find their Redis, media root and gateway in ``COMPARE_*`` variables.
Only the standard library is imported at the top, so a worker that never runs a mix task
carries no more memory than its own framework: the memory scenario compares frameworks.

- :func:`add` is the seed tutorial's no-op ``add``, as the platform's ``add_numbers``.
- :func:`stamp` records when a latency probe started, in one Redis hash (the platform's
  worker logs ``task_started`` with a timestamp instead, which the harness reads).
- :func:`thumbnail` renders thumbnails with the platform's own ``render_thumbnails``, so the
  CPU-bound part of the mix is byte for byte the platform's ``make_thumbnail``.
- :func:`charge` posts a charge to the payment-gateway stub with the platform's own client
  and records it in Redis: the platform's ``process_payment`` without its idempotency lock.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

#: The Redis hash ``probe id -> start time`` (epoch seconds) that :func:`stamp` writes.
STARTED_HASH = "compare:started"
#: Prefix of the record :func:`charge` writes per charge.
CHARGE_RECORD_PREFIX = "compare:charge:"

STAMP_URL_ENV = "COMPARE_STAMP_URL"
MEDIA_ROOT_ENV = "COMPARE_MEDIA_ROOT"
GATEWAY_URL_ENV = "COMPARE_GATEWAY_URL"

#: The platform's default limit (``PLATFORM_TASKS_MAX_IMAGE_PIXELS``); the benchmark image is
#: far below it, the check is there because the platform makes it too.
MAX_IMAGE_PIXELS = 50_000_000

_client: Any = None
_client_lock = threading.Lock()


def _redis() -> Any:
    """One client per process, made on first use: a prefork parent never makes one, so no
    connection is shared across a fork."""
    global _client
    with _client_lock:
        if _client is None:
            import redis

            _client = redis.Redis.from_url(os.environ[STAMP_URL_ENV])
        return _client


def add(x: int, y: int) -> int:
    """The seed tutorial's task."""
    return x + y


def stamp(probe_id: str) -> None:
    """Record the wall-clock time this probe started; the harness subtracts its enqueue time."""
    started = time.time()
    _redis().hset(STARTED_HASH, probe_id, repr(started))


def thumbnail(source: str, sizes: list[list[int]]) -> list[str]:
    """The platform's thumbnail rendering of ``media_root/source``, one file per size."""
    from platform_tasks.imaging import render_thumbnails

    written = render_thumbnails(
        Path(os.environ[MEDIA_ROOT_ENV]),
        source,
        [(int(width), int(height)) for width, height in sizes],
        MAX_IMAGE_PIXELS,
    )
    return [item.path for item in written]


def charge(transaction_id: str, amount_minor: int, currency: str, idempotency_key: str) -> str:
    """One charge through the gateway stub, then its record in Redis; the charge id."""
    from platform_tasks.payment_gateway import ChargeRequest, create_charge

    result = create_charge(
        os.environ[GATEWAY_URL_ENV],
        ChargeRequest(
            transaction_id=transaction_id,
            amount_minor=amount_minor,
            currency=currency,
            idempotency_key=idempotency_key,
        ),
        timeout=10.0,
    )
    _redis().set(CHARGE_RECORD_PREFIX + idempotency_key, result.charge_id, ex=3600)
    return result.charge_id
