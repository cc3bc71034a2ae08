"""A bulk enqueue that fails part way says exactly which items were published.

The broker here is a real Redis given a memory limit just above what it holds: the first
batches fit, then Redis refuses writes (``OOM``). The call raises ``PartialEnqueueError``
whose ``task_ids`` are exactly the messages on the queue, in order, whole batches only;
the refusal is its ``__cause__``; nothing of a later item was written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from platform_tasks.producer import PartialEnqueueError, TaskProducer
from platform_tasks.settings import load_settings

pytestmark = pytest.mark.integration

ADD = "platform_tasks.default.add_numbers"
BATCH = 100
ITEMS = 3000
#: Room for a few batches of ~1 KB messages, not for all of them.
HEADROOM_BYTES = 400_000


@pytest.fixture
def tight_broker(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used + HEADROOM_BYTES)
    try:
        yield client
    finally:
        client.config_set("maxmemory", 0)
        client.flushall()
        client.close()


def test_a_bulk_enqueue_stopped_by_the_broker_names_what_it_published(
    redis_url: str, tight_broker: redis.Redis,
) -> None:
    settings = load_settings({"PLATFORM_TASKS_REDIS_URL": redis_url})
    with TaskProducer(settings) as producer, pytest.raises(PartialEnqueueError) as caught:
        producer.enqueue_many(ADD, [([n, n], None) for n in range(ITEMS)],
                              queue="default", batch_size=BATCH)
    published = caught.value.task_ids
    assert 0 < len(published) < ITEMS
    assert len(published) % BATCH == 0  # a batch lands whole or not at all
    assert isinstance(caught.value.__cause__, redis.exceptions.OutOfMemoryError)
    assert f"published items 0-{len(published) - 1} of {ITEMS}" in str(caught.value)
    # Exactly those, oldest first, are on the queue (a worker pops from the right).
    queued = reversed(tight_broker.lrange("default", 0, -1))
    assert [json.loads(raw)["headers"]["id"] for raw in queued] == published
