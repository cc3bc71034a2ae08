"""Publishes return only once a replica has the message; when none confirms in time the
producer says so instead of reporting success. A single Redis (no Sentinel) is not waited on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from platform_tasks.devstack.processes import ManagedProcess
from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.producer import (
    CONFIRM_TIMEOUT_MS,
    ReplicationNotConfirmedError,
    TaskProducer,
)
from platform_tasks.queues import QUEUE_NAMES, policy_for
from platform_tasks.settings import load_settings

pytestmark = pytest.mark.integration

CHARGE = "platform_tasks.payments.process_payment"
ADD = "platform_tasks.default.add_numbers"


def charge(producer: TaskProducer, key: str) -> str:
    return producer.enqueue(CHARGE, queue="payments", kwargs={
        "transaction_id": f"tx-{key}", "amount": "12.50", "currency": "EUR",
        "idempotency_key": key,
    })


@pytest.fixture
def confirming_producer(sentinel_topology: SentinelTopology,
                        master: redis.Redis) -> Iterator[TaskProducer]:
    with TaskProducer(load_settings(sentinel_topology.settings_env())) as producer:
        yield producer


def replica_processes(topology: SentinelTopology) -> list[ManagedProcess]:
    master_port = topology.master_address()[1]
    return [process for port, process in zip(topology.node_ports, topology.processes,
                                             strict=False) if port != master_port]


def test_every_queue_asks_for_a_replica() -> None:
    assert {policy_for(queue).confirm_replicas for queue in QUEUE_NAMES} == {1}


def test_a_single_redis_is_not_waited_on(redis_url: str) -> None:
    # Nothing replicates from a lone server: WAIT would time out on every publish.
    lone = redis.Redis.from_url(redis_url)
    lone.delete("default")
    lone.config_resetstat()
    with TaskProducer(load_settings({"PLATFORM_TASKS_REDIS_URL": redis_url})) as producer:
        started = time.monotonic()
        task_id = producer.enqueue(ADD, queue="default", args=[1, 2])
        assert time.monotonic() - started < CONFIRM_TIMEOUT_MS / 1000
    queued = [json.loads(item)["headers"]["id"] for item in lone.lrange("default", 0, -1)]
    commands = lone.info("commandstats")
    lone.close()
    assert queued == [task_id]
    # One write of the message and no WAIT (the message's bytes: test_enqueue_many.py).
    assert "cmdstat_wait" not in commands
    assert commands["cmdstat_lpush"]["calls"] == 1


def test_a_confirmed_publish_is_on_a_replica_when_it_returns(
    sentinel_topology: SentinelTopology, confirming_producer: TaskProducer,
    master: redis.Redis,
) -> None:
    task_id = charge(confirming_producer, "confirmed-0001")

    queued = [json.loads(item)["headers"]["id"] for item in master.lrange("payments", 0, -1)]
    assert queued == [task_id]
    master_port = sentinel_topology.master_address()[1]
    replica_ports = [port for port in sentinel_topology.node_ports if port != master_port]
    on_replicas = []
    for port in replica_ports:
        replica = sentinel_topology.client(port)
        try:
            on_replicas.append(replica.llen("payments"))
        finally:
            replica.close()
    assert 1 in on_replicas  # WAIT returned: at least one replica holds it


def test_without_a_replica_answering_the_producer_does_not_report_success(
    sentinel_topology: SentinelTopology, confirming_producer: TaskProducer,
    master: redis.Redis,
) -> None:
    replicas = replica_processes(sentinel_topology)
    # Frozen, not gone: the master still counts them as connected (min-replicas-max-lag), so
    # it takes the write; nothing reaches them.
    for process in replicas:
        process.kill(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ReplicationNotConfirmedError, match="0 of 1 replica"):
            charge(confirming_producer, "unconfirmed-0001")
        assert time.monotonic() - started >= CONFIRM_TIMEOUT_MS / 1000 - 0.2
        with pytest.raises(ReplicationNotConfirmedError, match=r"^default: "):
            confirming_producer.enqueue_many(ADD, [([1, 2], {}), ([3, 4], {})], queue="default")
        assert master.llen("default") == 2  # on the master, just not confirmed
    finally:
        for process in replicas:
            process.kill(signal.SIGCONT)
    # Not confirmed is not lost: the message is on the master, and the same key may be
    # enqueued again (a duplicate message; the payment task is idempotent by that key).
    assert master.llen("payments") == 1
    charge(confirming_producer, "unconfirmed-0001")
    assert master.llen("payments") == 2


def test_the_command_line_does_not_call_an_unconfirmed_publish_refused(
    sentinel_topology: SentinelTopology, master: redis.Redis,
) -> None:
    replicas = replica_processes(sentinel_topology)
    before = master.llen("default")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PLATFORM_TASKS_")}
    # Frozen for well under min-replicas-max-lag (10 s): the master still takes the write.
    for process in replicas:
        process.kill(signal.SIGSTOP)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "platform_tasks", "enqueue", ADD, "--queue", "default",
             "--args", "[5, 6]"],
            env={**env, **sentinel_topology.settings_env()}, capture_output=True, text=True,
            timeout=60, check=False,
        )
    finally:
        for process in replicas:
            process.kill(signal.SIGCONT)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(
        "platform-tasks: not done: ReplicationNotConfirmedError: default: "
    ), done.stderr
    assert master.llen("default") == before + 1  # on the master, just not confirmed
