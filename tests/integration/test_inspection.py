"""Queue depth counts every priority sub-list and the delivered-but-unacknowledged messages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.inspection import queue_depths, wake_list
from platform_tasks.producer import TaskProducer
from platform_tasks.redis_client import connect
from platform_tasks.settings import load_settings

pytestmark = pytest.mark.integration

ADD = "platform_tasks.default.add_numbers"


@pytest.fixture
def producer(sentinel_topology: SentinelTopology) -> Iterator[TaskProducer]:
    client = TaskProducer(load_settings(sentinel_topology.settings_env()))
    connect(client.settings).flushall()
    yield client
    client.close()


def test_ready_priority_and_unacked_messages_are_all_counted(producer: TaskProducer) -> None:
    for _ in range(3):
        producer.enqueue(ADD, queue="default", args=[1, 1])
    for _ in range(2):
        producer.app.send_task(ADD, args=[1, 1], queue="default", priority=9)
    producer.enqueue("platform_tasks.email.send_welcome_email", queue="email",
                     kwargs={"user_email": "a@example.com"})
    # Take one default message as a worker would, without acknowledging it.
    with producer.app.connection_for_read() as connection:
        channel = connection.default_channel
        message = channel.basic_get("default", no_ack=False)
        assert message is not None

        depths = {d.queue: d for d in queue_depths(connect(producer.settings))}

    default = depths["default"]
    assert default.ready_by_priority[0] == 2
    assert default.ready_by_priority[9] == 2
    assert (default.ready, default.unacked, default.total) == (4, 1, 5)
    assert (depths["email"].ready, depths["email"].unacked) == (1, 0)
    assert depths["media"].total == 0


def test_a_message_a_wait_moved_to_the_wake_list_counts_as_ready(producer: TaskProducer) -> None:
    producer.enqueue(ADD, queue="default", args=[1, 1])
    producer.enqueue(ADD, queue="default", args=[2, 2])
    broker = connect(producer.settings)
    # What an idle worker's wait does when its fetch then fails (NOREPLICAS, a cut
    # connection): the oldest message sits in the wake list until the next fetch.
    assert broker.blmove("default", wake_list("default"), 1, "RIGHT", "LEFT") is not None

    depths = {d.queue: d for d in queue_depths(broker)}

    assert depths["default"].ready_by_priority[0] == 2
    assert depths["default"].total == 2
