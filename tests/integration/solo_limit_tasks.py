"""Tasks for the worker-group tests, imported into a worker with ``--include``.

Each records what happened to it in a Redis list of the broker database.
"""

from __future__ import annotations

import os
import time

from billiard.exceptions import TimeLimitExceeded
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from platform_tasks.redis_client import connect
from platform_tasks.settings import load_settings

CLEANS_UP = "tests.solo_limits.cleans_up_at_the_soft_limit"
IGNORES_SOFT = "tests.solo_limits.ignores_the_soft_limit"
IGNORES_BOTH = "tests.solo_limits.ignores_both_limits"
CRASH = "tests.solo_limits.crash_own_process"
SOFT_LIMIT = 1
HARD_LIMIT = 2


def events_key(marker: str) -> str:
    return f"test-events:{marker}"


def record(marker: str, event: str) -> None:
    client = connect(load_settings())
    try:
        client.rpush(events_key(marker), f"{event}:{os.getpid()}")
    finally:
        client.close()


def _sleep_for(seconds: float) -> None:
    # Short sleeps: the interpreter checks for signals between them, as in real work.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)


@shared_task(name=CLEANS_UP, soft_time_limit=SOFT_LIMIT, time_limit=HARD_LIMIT,
             ignore_result=False)  # type: ignore[untyped-decorator]
def cleans_up_at_the_soft_limit(marker: str) -> str:
    record(marker, "started")
    try:
        _sleep_for(30)
    except SoftTimeLimitExceeded:
        record(marker, "soft")
        return "cleaned up"
    return "not interrupted"


@shared_task(name=IGNORES_SOFT, soft_time_limit=SOFT_LIMIT, time_limit=HARD_LIMIT,
             ignore_result=False)  # type: ignore[untyped-decorator]
def ignores_the_soft_limit(marker: str) -> str:
    record(marker, "started")
    try:
        _sleep_for(30)
    except SoftTimeLimitExceeded:
        record(marker, "soft")
    _sleep_for(30)
    record(marker, "finished")
    return "not interrupted"


@shared_task(name=IGNORES_BOTH, soft_time_limit=SOFT_LIMIT, time_limit=HARD_LIMIT,
             ignore_result=False, acks_on_failure_or_timeout=True)  # type: ignore[untyped-decorator]
def ignores_both_limits(marker: str) -> str:
    record(marker, "started")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _sleep_for(deadline - time.monotonic())
        except (SoftTimeLimitExceeded, TimeLimitExceeded) as error:
            record(marker, type(error).__name__)
    record(marker, "finished")
    return "not interrupted"


@shared_task(name=CRASH)  # type: ignore[untyped-decorator]
def crash_own_process(marker: str) -> None:
    record(marker, "started")
    os._exit(1)  # what a segfault or the OOM killer does: no cleanup, no ack


RECORD_PID = "tests.solo_limits.record_pid"


@shared_task(name=RECORD_PID)  # type: ignore[untyped-decorator]
def record_pid(marker: str) -> None:
    record(marker, "ran")
    time.sleep(0.05)


ENQUEUES_CHILDREN = "tests.solo_limits.enqueues_children"
ADD = "platform_tasks.default.add_numbers"


@shared_task(name=ENQUEUES_CHILDREN, ignore_result=False)  # type: ignore[untyped-decorator]
def enqueues_children() -> list[str]:
    """Enqueues three tasks through the producer API, one alone and two in bulk."""
    from platform_tasks.producer import TaskProducer

    with TaskProducer(load_settings()) as producer:
        alone = producer.enqueue(ADD, queue="default", args=[1, 1])
        bulk = producer.enqueue_many(ADD, [((2, 2), {}), ((3, 3), {})], queue="default")
    return [alone, *bulk]


HOLDS = "tests.solo_limits.holds_until_released"


def release_key(marker: str) -> str:
    return f"test-release:{marker}"


@shared_task(name=HOLDS)  # type: ignore[untyped-decorator]
def holds_until_released(marker: str, index: int) -> None:
    """Runs until the test sets ``release_key(marker)`` (a minute at most)."""
    record(marker, f"started-{index}")
    client = connect(load_settings())
    try:
        deadline = time.monotonic() + 60
        while not client.exists(release_key(marker)) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.close()
    record(marker, f"finished-{index}")
