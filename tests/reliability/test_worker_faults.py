"""Scenarios 1-5 and 12: workers killed, stopped and restarted under a steady load, long
tasks past the visibility timeout, and a task that kills its own process every time.

The topology is shared by the module: none of these scenarios touches Redis itself.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from cluster import MAX_REDELIVERIES, Cluster
from ledger_tasks import POISON
from load import Kind
from scenario import ScenarioFactory, assert_kept_promise, children_of

from platform_tasks.app import create_app

pytestmark = pytest.mark.integration

THREAD_QUEUES = ("email", "payments")


def test_1_a_pool_child_killed_mid_task(cluster: Cluster, scenario: ScenarioFactory) -> None:
    run = scenario("1 pool child SIGKILLed mid-task", cluster)
    cluster.start_workers("default", *THREAD_QUEUES)
    worker = cluster.processes["worker-default"]
    assert worker.pid is not None
    killed: list[int] = []

    with run.load(rate=20):
        time.sleep(2.0)
        for _ in range(3):
            # A pool process of the default worker that is running a task right now.
            pool = set(children_of(worker.pid))
            busy = {int(entry["pid"]) for entry in cluster.ledger.running().values()} & pool
            deadline = time.monotonic() + 10
            while not busy and time.monotonic() < deadline:
                time.sleep(0.05)
                pool = set(children_of(worker.pid))
                busy = {int(entry["pid"]) for entry in cluster.ledger.running().values()} & pool
            assert busy, "no default pool process was running a task"
            victim = sorted(busy)[0]
            run.note(f"SIGKILL pool process {victim}")
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            time.sleep(2.0)
        time.sleep(2.0)

    counts = run.finish(drain_timeout=30)
    assert_kept_promise(counts, run)
    assert worker.alive, "the worker's main process died with its pool child"
    assert len(killed) == 3


def test_2_a_whole_worker_killed_holding_prefetched_tasks(
    cluster: Cluster, scenario: ScenarioFactory
) -> None:
    run = scenario("2 worker SIGKILLed holding prefetched tasks", cluster)
    cluster.start_workers("default", *THREAD_QUEUES)

    with run.load(rate=25):
        # Long enough for the default (prefetch 4 x 2) and email (4 x 16) workers to hold
        # prefetched messages besides the running ones.
        time.sleep(3.0)
        for queue in ("default", "email"):
            run.note(f"SIGKILL worker-{queue} (pid {cluster.processes[f'worker-{queue}'].pid})")
            cluster.kill(cluster.processes[f"worker-{queue}"])
        time.sleep(1.0)
        # Kubernetes restarts the container; its messages come back after the visibility
        # timeout, since nothing refreshes them any more.
        for queue in ("default", "email"):
            cluster.restart(cluster.processes[f"worker-{queue}"], wait=False)
        time.sleep(3.0)

    counts = run.finish(drain_timeout=30)
    assert_kept_promise(counts, run)


def test_3_sigterm_then_sigkill_after_the_grace_period(
    cluster: Cluster, scenario: ScenarioFactory
) -> None:
    run = scenario("3 SIGTERM, SIGKILL after the grace period", cluster)
    cluster.start_workers("default", *THREAD_QUEUES)
    grace = 1.0  # shorter than the long tasks, so the SIGKILL lands on running work

    with run.load(rate=25):
        time.sleep(3.0)
        victims = [cluster.processes[f"worker-{queue}"] for queue in ("default", "payments")]
        for process in victims:
            process.kill(signal.SIGTERM)
        time.sleep(grace)
        for process in victims:
            cluster.kill(process)
        for process in victims:
            cluster.restart(process, wait=False)
        time.sleep(3.0)

    counts = run.finish(drain_timeout=30)
    assert_kept_promise(counts, run)


def test_4_many_term_and_kill_cycles(cluster: Cluster, scenario: ScenarioFactory) -> None:
    run = scenario("4 TERM/KILL cycles in a loop", cluster)
    cluster.start_workers("default", *THREAD_QUEUES)
    cycles = 6

    with run.load(rate=20):
        for cycle in range(cycles):
            queue = ("default", "email", "payments")[cycle % 3]
            process = cluster.processes[f"worker-{queue}"]
            cluster.wait_ready(process)
            time.sleep(1.0)
            if cycle % 2 == 0:
                cluster.kill(process)
            else:
                process.kill(signal.SIGTERM)
                if process.wait(1.0) is None:
                    cluster.kill(process)
            cluster.restart(process, wait=False)
        for queue in ("default", *THREAD_QUEUES):
            cluster.wait_ready(cluster.processes[f"worker-{queue}"])
        time.sleep(1.0)

    counts = run.finish(drain_timeout=30)
    assert_kept_promise(counts, run)


LONG_TASK_SECONDS = 15.0
SHORT_VISIBILITY_SECONDS = 6


def test_5_tasks_running_past_the_visibility_timeout(
    cluster: Cluster, scenario: ScenarioFactory
) -> None:
    run = scenario("5 tasks running past the visibility timeout", cluster)
    short = {"PLATFORM_TASKS_VISIBILITY_TIMEOUT_SECONDS": str(SHORT_VISIBILITY_SECONDS)}
    cluster.extra_env.update(short)
    # The platform must actually run with the short timeout, or this proves nothing.
    configured = create_app(cluster.settings(), include_tasks=False)
    visibility = configured.conf.broker_transport_options.get("visibility_timeout")
    configured.close()
    assert visibility == SHORT_VISIBILITY_SECONDS, (
        f"PLATFORM_TASKS_VISIBILITY_TIMEOUT_SECONDS is not honoured: the broker's visibility "
        f"timeout is {visibility}"
    )
    cluster.start_workers("default", "payments")
    producer = run.producer()

    # Two long tasks per pool type, started together; short work flows around them.
    long_keys = [producer.send(queue, LONG_TASK_SECONDS, kind=f"{queue}-long")
                 for queue in ("default", "default", "payments", "payments")]
    mix = (Kind("default-short", "default", 0.05, 1), Kind("payments-short", "payments", 0.05, 1))
    with run.load(rate=10, mix=mix):
        time.sleep(SHORT_VISIBILITY_SECONDS + 2)
        # A second worker joins mid-run (a scale-up); its first sweep looks for messages
        # older than the timeout, which the long tasks' messages are.
        cluster.start_worker("default", name="worker-default-2")
        time.sleep(LONG_TASK_SECONDS - SHORT_VISIBILITY_SECONDS)

    counts = run.finish(drain_timeout=30)
    assert_kept_promise(counts, run)
    runs = [e.key for e in cluster.ledger.snapshot().executions if e.key in long_keys]
    assert sorted(runs) == sorted(long_keys), "a long task ran twice while its worker lived"
    assert counts.duplicates == 0


def test_12_a_task_that_kills_its_own_process_every_time(
    cluster: Cluster, scenario: ScenarioFactory
) -> None:
    run = scenario("12 poison task kills its process every time", cluster)
    cluster.start_workers("default", *THREAD_QUEUES)
    producer = run.producer()
    worker = cluster.processes["worker-default"]

    with run.load(rate=15):
        time.sleep(1.0)
        poison = producer.send("default", kind="poison", task=POISON)
        time.sleep(8.0)

    counts = run.finish(dead_letter_kinds={"poison"}, drain_timeout=30)
    assert_kept_promise(counts, run)
    runs = [e for e in cluster.ledger.snapshot().executions if e.key == poison]
    assert 1 <= len(runs) <= 1 + MAX_REDELIVERIES, f"the poison task ran {len(runs)} times"
    assert counts.dead_lettered == 1
    assert worker.alive
