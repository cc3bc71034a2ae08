"""Bulk enqueue gets through a Sentinel failover: every call returns, every id is on the queue."""

from __future__ import annotations

import json
import threading
import time

import pytest

from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.producer import TaskProducer
from platform_tasks.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADD = "platform_tasks.default.add_numbers"
ITEMS = 50


def test_bulk_calls_across_a_master_kill_all_land(sentinel_topology: SentinelTopology) -> None:
    producer = TaskProducer(load_settings(sentinel_topology.settings_env()))
    returned: list[str] = []
    errors: list[BaseException] = []
    calls = 0
    started, stop = threading.Event(), threading.Event()

    def produce() -> None:
        nonlocal calls
        try:
            while not stop.is_set():
                items = [([calls, n], None) for n in range(ITEMS)]
                returned.extend(producer.enqueue_many(ADD, items, queue="default",
                                                      batch_size=10))
                calls += 1
                if calls == 20:
                    started.set()
        except BaseException as error:  # reported below, not lost in the thread
            errors.append(error)
            started.set()

    sender = threading.Thread(target=produce)
    sender.start()
    assert started.wait(timeout=60)
    old_master = sentinel_topology.kill_master()
    new_master = sentinel_topology.wait_for_failover(old_master, timeout=30)
    calls_at_switch = calls
    deadline = time.monotonic() + 60
    while calls < calls_at_switch + 20 and time.monotonic() < deadline and not errors:
        time.sleep(0.05)  # calls go on against the new master
    stop.set()
    sender.join(timeout=120)
    producer.close()

    assert not sender.is_alive(), "the producer did not get through the failover"
    assert errors == []
    assert new_master != old_master
    assert calls >= calls_at_switch + 20
    assert len(returned) == calls * ITEMS
    client = sentinel_topology.client(new_master[1])
    on_queue = {json.loads(raw)["headers"]["id"] for raw in client.lrange("default", 0, -1)}
    client.close()
    # At least once: a batch whose reply was lost in the switch may be there twice.
    assert set(returned) <= on_queue
