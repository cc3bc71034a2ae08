"""The visibility heartbeat and the redelivery cap, on real workers and a Sentinel topology.

- A task running longer than the visibility timeout is not handed to a second worker while
  its own worker lives (the worker keeps refreshing what it holds).
- The messages of a SIGKILLed worker come back soon after the visibility timeout.
- A task that kills its pool process every time is dead-lettered after
  PLATFORM_TASKS_MAX_REDELIVERIES runs after redelivery, and the worker carries on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redelivery_tasks
import redis
from worker_env import worker_env

from platform_tasks import dead_letters, keys
from platform_tasks.app import create_app
from platform_tasks.devstack.processes import ManagedProcess
from platform_tasks.devstack.stack import worker_argv
from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.settings import Settings

pytestmark = pytest.mark.integration

VISIBILITY_TIMEOUT = 6
MAX_REDELIVERIES = 2
#: The workers import redelivery_tasks from here (``--include``), as this module does.


@pytest.fixture(scope="module", name="worker_env")
def worker_env_fixture(sentinel_topology: SentinelTopology) -> dict[str, str]:
    return worker_env(sentinel_topology, visibility_timeout_seconds=str(VISIBILITY_TIMEOUT),
                      max_redeliveries=str(MAX_REDELIVERIES), metrics_port="0")


@pytest.fixture
def start_worker(
    worker_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., ManagedProcess]]:
    started: list[ManagedProcess] = []

    def start(name: str, *extra: str, **env: str) -> ManagedProcess:
        process = ManagedProcess(
            name, [*worker_argv("default"), "--include", "redelivery_tasks",
                   *extra],
            {**worker_env, **env}, tmp_path / f"{name}.log", cwd=tmp_path,
        )
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop(15)


def send(settings: Settings, name: str, *args: Any) -> str:
    app = create_app(settings)
    try:
        result = app.send_task(name, args=list(args), queue="default")
        return str(result.id)
    finally:
        app.close()


def runs(broker: redis.Redis, marker: str) -> list[tuple[int, float]]:
    started = []
    for item in broker.lrange(redelivery_tasks.runs_key(marker), 0, -1):
        pid, at = str(item).split(":")
        started.append((int(pid), float(at)))
    return started


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


def unacked_count(broker: redis.Redis) -> int:
    return int(broker.hlen("unacked"))


def test_a_task_longer_than_the_visibility_timeout_runs_once(
    settings: Settings, broker: redis.Redis, start_worker: Callable[..., ManagedProcess]
) -> None:
    marker = uuid.uuid4().hex
    start_worker("holder", "--pool", "prefork", "--concurrency", "1")
    send(settings, redelivery_tasks.SLEEP, marker, 3 * VISIBILITY_TIMEOUT)
    wait_until(lambda: len(runs(broker, marker)) == 1, 30, "the first run")
    # A second worker sweeps for expired messages every second: without the heartbeat it
    # would take the running task over after VISIBILITY_TIMEOUT seconds.
    start_worker("sweeper", "--pool", "prefork", "--concurrency", "1")
    wait_until(lambda: unacked_count(broker) == 0, 6 * VISIBILITY_TIMEOUT, "the ack")
    assert len(runs(broker, marker)) == 1


def test_the_messages_of_a_killed_worker_come_back_after_the_timeout(
    settings: Settings, broker: redis.Redis, start_worker: Callable[..., ManagedProcess]
) -> None:
    marker = uuid.uuid4().hex
    doomed = start_worker("doomed", "--pool", "prefork", "--concurrency", "1")
    send(settings, redelivery_tasks.SLEEP, marker, 2.0 * VISIBILITY_TIMEOUT)
    wait_until(lambda: len(runs(broker, marker)) == 1, 30, "the first run")
    assert doomed.pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its pool process, no goodbye
    killed_at = time.time()
    start_worker("survivor", "--pool", "prefork", "--concurrency", "1")
    wait_until(lambda: len(runs(broker, marker)) == 2, 4 * VISIBILITY_TIMEOUT, "the rerun")
    rerun_at = runs(broker, marker)[1][1]
    # Back after the timeout (counted from the last refresh), plus a sweep and a start.
    assert rerun_at - killed_at < VISIBILITY_TIMEOUT + 10


def test_a_task_that_kills_its_process_every_time_is_dead_lettered(
    settings: Settings, broker: redis.Redis, start_worker: Callable[..., ManagedProcess]
) -> None:
    marker = uuid.uuid4().hex
    start_worker("crashy", "--pool", "prefork", "--concurrency", "1")
    task_id = send(settings, redelivery_tasks.CRASH, marker)

    def dead_lettered() -> list[dict[str, Any]]:
        return [json.loads(item) for item in broker.lrange(keys.DEAD_LETTERS, 0, -1)
                if json.loads(item).get("task_id") == task_id]

    wait_until(lambda: bool(dead_lettered()), 60, "the dead letter")
    entry = dead_lettered()[0]
    assert entry["reason"] == dead_letters.REDELIVERED_TOO_OFTEN
    assert entry["task_name"] == redelivery_tasks.CRASH
    assert entry["args"] == [marker]
    assert str(MAX_REDELIVERIES) in entry["exception"]
    # The first delivery plus MAX_REDELIVERIES runs after redelivery, then no more.
    assert len(runs(broker, marker)) == 1 + MAX_REDELIVERIES
    time.sleep(2)
    assert len(runs(broker, marker)) == 1 + MAX_REDELIVERIES
    assert unacked_count(broker) == 0
    # The worker is still consuming.
    follow_up = uuid.uuid4().hex
    send(settings, redelivery_tasks.SLEEP, follow_up, 0)
    wait_until(lambda: len(runs(broker, follow_up)) == 1, 30, "a task after the poison")
