"""A real worker runs every task of a bulk enqueue, with the producer's correlation header."""

from __future__ import annotations

from typing import Any

import pytest

from platform_tasks.devstack.stack import DevStack
from platform_tasks.producer import EnqueueRequest, TaskProducer

pytestmark = pytest.mark.integration

ADD = "platform_tasks.default.add_numbers"


@pytest.fixture(scope="module")
def dev_stack_options() -> dict[str, Any]:
    return {"queues": ["default"]}


def test_a_worker_runs_every_bulk_enqueued_task(dev_stack: DevStack) -> None:
    with TaskProducer(dev_stack.settings()) as producer:
        items = [([n, 1], None) for n in range(300)]
        items.append(EnqueueRequest(args=[1, 1], countdown=1))  # an eta message too
        ids = producer.enqueue_many(ADD, items, queue="default", batch_size=128)

        outcomes = [producer.wait(task_id, timeout=90) for task_id in ids]

    assert [o.state for o in outcomes] == ["SUCCESS"] * 301
    assert [o.result for o in outcomes] == [n + 1 for n in range(300)] + [2]
