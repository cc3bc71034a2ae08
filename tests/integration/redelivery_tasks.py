"""Tasks for the redelivery tests, imported into a worker with ``--include``.

Each records every start in a Redis list of the broker database, so a test can count runs.
"""

from __future__ import annotations

import os
import time

from celery import shared_task

from platform_tasks.redis_client import connect
from platform_tasks.settings import load_settings

SLEEP = "tests.redelivery.sleep"
CRASH = "tests.redelivery.crash_own_process"


def runs_key(marker: str) -> str:
    return f"test-runs:{marker}"


def _record_start(marker: str) -> None:
    client = connect(load_settings())
    try:
        client.rpush(runs_key(marker), f"{os.getpid()}:{time.time()}")
    finally:
        client.close()


@shared_task(name=SLEEP)  # type: ignore[untyped-decorator]
def sleep(marker: str, seconds: float) -> str:
    _record_start(marker)
    time.sleep(seconds)
    return marker


@shared_task(name=CRASH)  # type: ignore[untyped-decorator]
def crash_own_process(marker: str) -> None:
    _record_start(marker)
    os._exit(1)  # what a segfault or the OOM killer does: no cleanup, no ack
