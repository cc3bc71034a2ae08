"""The monitor reads queues, heartbeats, beat and the Sentinels of a real topology into gauges.

Tests run in file order: the last ones stop a Sentinel and kill the master of this module's
own topology.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from platform_tasks import headers, keys
from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.heartbeat import Heartbeat
from platform_tasks.inspection import priority_list, wake_list
from platform_tasks.monitor import BrokerMonitor
from platform_tasks.observability import catalog
from platform_tasks.producer import TaskProducer
from platform_tasks.redis_client import connect
from platform_tasks.settings import Settings, load_settings

pytestmark = pytest.mark.integration

ADD = "platform_tasks.default.add_numbers"


@pytest.fixture(scope="module")
def settings(sentinel_topology: SentinelTopology) -> Settings:
    return load_settings(
        {**sentinel_topology.settings_env(), "PLATFORM_TASKS_HEARTBEAT_INTERVAL_SECONDS": "1"}
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[redis.Redis]:
    client = connect(settings)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def monitor(settings: Settings) -> Iterator[BrokerMonitor]:
    monitor = BrokerMonitor(settings)
    yield monitor
    monitor.close()


def sample(
    monitor: BrokerMonitor, spec: catalog.MetricSpec, **labels: str
) -> float | None:
    value: float | None = monitor.registry.get_sample_value(spec.name, labels)
    return value


def test_queue_view_counts_priorities_unacked_age_and_consumers(
    settings: Settings, client: redis.Redis, monitor: BrokerMonitor
) -> None:
    with TaskProducer(settings) as producer:
        for _ in range(3):
            producer.enqueue(ADD, queue="default", args=[1, 1])
        producer.app.send_task(ADD, args=[1, 1], queue="default", priority=9)
        # One message delivered and not acknowledged, as a worker holding it leaves it.
        with producer.app.connection_for_read() as connection:
            assert connection.default_channel.basic_get("default", no_ack=False) is not None
            # The oldest waiting message was published a minute ago.
            oldest = json.loads(client.lindex("default", -1))
            oldest["headers"][headers.ENQUEUED_AT] = time.time() - 60
            client.lset("default", -1, json.dumps(oldest))
            # An idle worker's wait moved it to the wake list, and its fetch has not run yet:
            # still ready, still the oldest.
            client.lmove("default", wake_list("default"), "RIGHT", "LEFT")
            # A foreign producer's message carries no enqueued-at header.
            client.lpush(priority_list("email", 0), json.dumps({"headers": {}, "body": ""}))
            Heartbeat(settings, "default", "default@pod-a").beat_once(client)
            client.zadd(keys.worker_heartbeats("default"), {"default@gone": time.time() - 600})

            monitor.poll_once()

    assert sample(monitor, catalog.QUEUE_READY, queue="default", priority="0") == 2
    assert sample(monitor, catalog.QUEUE_READY, queue="default", priority="9") == 1
    assert sample(monitor, catalog.QUEUE_READY, queue="media", priority="0") == 0
    assert sample(monitor, catalog.QUEUE_UNACKED, queue="default") == 1
    age = sample(monitor, catalog.QUEUE_OLDEST_AGE, queue="default")
    assert age is not None
    assert 59 <= age < 120
    assert sample(monitor, catalog.QUEUE_OLDEST_AGE, queue="media") == 0
    # The foreign message is aged from the first poll that saw it.
    first_age = sample(monitor, catalog.QUEUE_OLDEST_AGE, queue="email")
    assert first_age is not None
    assert first_age < 1
    assert sample(monitor, catalog.QUEUE_CONSUMERS, queue="default") == 1
    assert sample(monitor, catalog.QUEUE_CONSUMERS, queue="email") == 0
    last_poll = sample(monitor, catalog.MONITOR_LAST_POLL)
    assert last_poll is not None
    assert abs(time.time() - last_poll) < 30


def test_beat_tick_and_overdue_entries(client: redis.Redis, monitor: BrokerMonitor) -> None:
    monitor.poll_once()
    assert sample(monitor, catalog.BEAT_LAST_TICK) == 0
    tick = time.time() - 3
    client.set(keys.BEAT_LAST_TICK, f"{tick:.3f}")
    client.zadd(keys.BEAT_SCHEDULE, {"overdue": time.time() - 30, "later": time.time() + 600})

    monitor.poll_once()

    assert sample(monitor, catalog.BEAT_LAST_TICK) == pytest.approx(tick, abs=0.01)
    assert sample(monitor, catalog.BEAT_DUE_ENTRIES) == 1


def test_broker_and_sentinel_view_of_a_healthy_topology(
    sentinel_topology: SentinelTopology, monitor: BrokerMonitor
) -> None:
    monitor.poll_once()

    host, port = sentinel_topology.master_address()
    assert sample(monitor, catalog.BROKER_UP) == 1
    assert sample(monitor, catalog.BROKER_CONNECTED_REPLICAS) == 2
    assert sample(monitor, catalog.SENTINEL_MASTER, address=f"{host}:{port}") == 1
    assert sample(monitor, catalog.SENTINEL_REACHABLE) == 3
    assert sample(monitor, catalog.SENTINEL_KNOWN) == 3
    assert sample(monitor, catalog.SENTINEL_QUORUM) == 2
    assert sample(monitor, catalog.SENTINEL_REPLICAS) == 2
    for check in ("broker", "queues", "beat", "sentinel"):
        assert sample(monitor, catalog.MONITOR_POLL_ERRORS, check=check) == 0


def test_a_stopped_sentinel_and_a_killed_master_show(
    sentinel_topology: SentinelTopology, monitor: BrokerMonitor
) -> None:
    monitor.poll_once()
    old_host, old_port = sentinel_topology.master_address()
    sentinel_topology.processes[-1].stop(5.0)

    monitor.poll_once()
    assert sample(monitor, catalog.SENTINEL_REACHABLE) == 2

    old = sentinel_topology.kill_master()
    monitor.poll_once()  # before the switch the Sentinels still name the dead master
    assert sample(monitor, catalog.BROKER_UP) == 0
    errors = sample(monitor, catalog.MONITOR_POLL_ERRORS, check="broker")
    assert errors is not None
    assert errors >= 1

    new_host, new_port = sentinel_topology.wait_for_failover(old)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        monitor.poll_once()
        if sample(monitor, catalog.BROKER_UP) == 1:
            break
        time.sleep(0.5)
    assert sample(monitor, catalog.BROKER_UP) == 1
    assert sample(monitor, catalog.SENTINEL_MASTER, address=f"{new_host}:{new_port}") == 1
    # The old master's series is gone, not left at 1 beside the new one.
    assert sample(monitor, catalog.SENTINEL_MASTER, address=f"{old_host}:{old_port}") is None
