"""A prefork worker's /metrics merges its pool processes, forgets dead ones, and its heartbeat
answers the health probe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from platform_tasks import keys
from platform_tasks.observability import catalog
from platform_tasks.producer import TaskProducer
from platform_tasks.redis_client import connect

if TYPE_CHECKING:
    from platform_tasks.devstack.stack import DevStack

pytestmark = pytest.mark.integration

ADD = "platform_tasks.default.add_numbers"


@pytest.fixture(scope="module")
def dev_stack_options() -> dict[str, Any]:
    return {"queues": ["default"], "monitor": False}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an endpoint: (name, sorted labels) -> value."""
    body = urllib.request.urlopen(url, timeout=10).read().decode()  # noqa: S310 - stack URL
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def pool_children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_tasks_run_in_pool_processes_are_counted_by_the_main_process(
    dev_stack: DevStack,
) -> None:
    url = dev_stack.metrics_urls["worker-default"]
    before = value(scrape(url), f"{catalog.TASK_RUNTIME.name}_count",
                   queue="default", task=ADD, outcome="succeeded") or 0
    with TaskProducer(dev_stack.settings()) as producer:
        ids = [producer.enqueue(ADD, queue="default", args=[n, 1]) for n in range(12)]
        for task_id in ids:
            assert producer.wait(task_id, 60).state == "SUCCESS"

    labels = {"queue": "default", "task": ADD}
    # Each process writes its per-task metrics once a second (metric_buffer).
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(url)
        counted = value(samples, f"{catalog.TASK_RUNTIME.name}_count", **labels,
                        outcome="succeeded")
        if counted == before + 12 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counted == before + 12
    waited = value(samples, f"{catalog.TASK_WAIT.name}_count", **labels)
    assert waited is not None
    assert waited >= 12
    assert value(samples, catalog.TASKS_IN_FLIGHT.name, **labels) == 0
    assert value(samples, catalog.POOL_PROCESS_STARTS.name, queue="default") == 2
    started = value(samples, catalog.WORKER_START_TIME.name, queue="default")
    assert started is not None
    assert started <= time.time()


def _member_that_ran_a_task(dev_stack: DevStack, worker_pid: int, metrics_dir: Path) -> int:
    """A pool process with live gauges of its own: one that has run a task. The members
    running now may not have (one was replaced since, on a busy machine), so tasks are sent
    until one has."""
    deadline = time.monotonic() + 60
    with TaskProducer(dev_stack.settings()) as producer:
        while True:
            for child in pool_children(worker_pid):
                if list(metrics_dir.glob(f"gauge_livesum_{child}.db")):
                    return child
            assert time.monotonic() < deadline, "no pool process has run a task"
            producer.wait(producer.enqueue(ADD, queue="default", args=[1, 1]), 60)


def test_a_killed_pool_process_is_replaced_counted_and_its_live_gauges_dropped(
    dev_stack: DevStack,
) -> None:
    url = dev_stack.metrics_urls["worker-default"]
    metrics_dir = dev_stack.run_dir / "metrics" / "default"
    worker_pid = dev_stack.processes["worker-default"].pid
    assert worker_pid is not None
    victim = _member_that_ran_a_task(dev_stack, worker_pid, metrics_dir)

    os.kill(victim, signal.SIGKILL)
    # default's worker is a group: its supervisor starts a new member a second later, which
    # counts its start once it has booted.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        children = pool_children(worker_pid)
        samples = scrape(url)
        if (victim not in children and len(children) == 2
                and value(samples, catalog.POOL_PROCESS_STARTS.name, queue="default") == 3):
            break
        time.sleep(0.2)

    assert value(samples, catalog.POOL_PROCESS_STARTS.name, queue="default") == 3
    assert not list(metrics_dir.glob(f"gauge_livesum_{victim}.db"))
    # Its counters stay: the runtimes it recorded are still in the total.
    assert list(metrics_dir.glob(f"histogram_{victim}.db"))
    with TaskProducer(dev_stack.settings()) as producer:
        assert producer.wait(producer.enqueue(ADD, queue="default", args=[1, 2]), 60).result == 3


def health(dev_stack: DevStack, *args: str, queue: str = "default",
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The probe command, run in the environment of ``queue``'s worker."""
    return subprocess.run(
        [sys.executable, "-m", "platform_tasks", "health", *args],
        env={**dev_stack.worker_env(queue), **(env or {})},
        capture_output=True, text=True, timeout=60,
    )


def test_health_probe_reads_the_worker_heartbeat(dev_stack: DevStack) -> None:
    alive = health(dev_stack, "--queue", "default")
    assert alive.returncode == 0, alive.stderr
    assert alive.stdout.startswith("healthy: default@")

    absent = health(dev_stack, "--queue", "email")
    assert absent.returncode == 1
    assert "no heartbeat from email@" in absent.stderr

    client = connect(dev_stack.settings())
    try:
        # Stale (over 3 intervals of 2 s), yet young enough that live workers' pruning of
        # long-gone entries (100 intervals) leaves it.
        client.zadd(keys.worker_heartbeats("default"), {"default@gone": time.time() - 30})
    finally:
        client.close()
    stale = health(dev_stack, "--queue", "default", "--hostname", "default@gone")
    assert stale.returncode == 1
    assert "default@gone on queue default last beat" in stale.stderr


def test_liveness_reads_only_the_local_file(dev_stack: DevStack) -> None:
    alive = health(dev_stack, "--queue", "default", "--local")
    assert alive.returncode == 0, alive.stderr

    # No Redis at all: the answer comes from the file alone.
    offline = health(dev_stack, "--queue", "default", "--local",
                     env={"PLATFORM_TASKS_SENTINELS": "127.0.0.1:1"})
    assert offline.returncode == 0, offline.stderr

    nowhere = str(dev_stack.run_dir / "media.alive")
    no_worker = health(dev_stack, "--queue", "media", "--local",
                       env={"PLATFORM_TASKS_HEARTBEAT_FILE": nowhere})
    assert no_worker.returncode == 1
    assert "no heartbeat from worker for queue media" in no_worker.stderr
