"""Failover smoke: SIGKILL the Redis master while tasks flow; workers resume, every task completes.

The full loss accounting (a ledger, many faults) belongs to the reliability suite; this proves
the basic promise already holds.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from platform_tasks.devstack.stack import DevStack
from platform_tasks.producer import TaskProducer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADD = "platform_tasks.default.add_numbers"
TASKS = 200


@pytest.fixture(scope="module")
def dev_stack_options() -> dict[str, Any]:
    return {"queues": ["default"], "beat": False, "smtp": False, "gateway": False}


def test_tasks_enqueued_across_a_failover_all_complete(dev_stack: DevStack) -> None:
    producer = TaskProducer(dev_stack.settings())
    task_ids: list[str] = []
    halfway = threading.Event()

    def produce() -> None:
        for n in range(TASKS):
            task_ids.append(producer.enqueue(ADD, queue="default", args=[n, n]))
            if n == TASKS // 2:
                halfway.set()

    sender = threading.Thread(target=produce)
    sender.start()
    assert halfway.wait(timeout=60)
    old_master = dev_stack.topology.kill_master()
    new_master = dev_stack.topology.wait_for_failover(old_master, timeout=30)
    sender.join(timeout=120)
    assert not sender.is_alive(), "the producer did not get through the failover"
    assert new_master != old_master
    assert len(task_ids) == TASKS

    outcomes = [producer.wait(task_id, timeout=90) for task_id in task_ids]
    assert [o.state for o in outcomes] == ["SUCCESS"] * TASKS
    assert [o.result for o in outcomes] == [2 * n for n in range(TASKS)]
    assert dev_stack.processes["worker-default"].alive
    producer.close()
