"""Flower, unchanged, against the platform: the local stack's ``flower`` option, read over HTTP.

The stack starts Flower behind basic auth and turns the workers' task events on; after a task
on every queue, Flower's API lists a worker per queue and each task as SUCCESS.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from PIL import Image

from platform_tasks.devstack.ports import LOOPBACK
from platform_tasks.devstack.stack import DevStack
from platform_tasks.heartbeat import queue_of_node
from platform_tasks.producer import TaskProducer
from platform_tasks.queues import QUEUE_NAMES, policy_for

#: Generous: two cores, and Flower learns about workers and tasks asynchronously.
DEADLINE = 60.0

T = TypeVar("T")


@pytest.fixture(scope="module")
def dev_stack_options() -> dict[str, Any]:
    return {"flower": True, "gateway_fail_every": 0}


def get(stack: DevStack, path: str, auth: str | None) -> tuple[int, bytes]:
    """``GET path`` from the stack's Flower with ``auth`` (``user:password``) as basic auth."""
    assert stack.flower_port is not None
    request_headers = {}
    if auth is not None:
        request_headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    connection = http.client.HTTPConnection(LOOPBACK, stack.flower_port, timeout=10)
    try:
        connection.request("GET", path, headers=request_headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def login(stack: DevStack) -> str:
    assert stack.flower_auth is not None
    return ":".join(stack.flower_auth)


def eventually(probe: Callable[[], T | None], what: str, stack: DevStack) -> T:
    """Call ``probe`` until it returns something other than None (or raises no OSError)."""
    deadline = time.monotonic() + DEADLINE
    last: object = None
    while True:
        assert stack.processes["flower"].alive, f"flower exited; see {stack.log_dir}/flower.log"
        try:
            found = probe()
        except OSError as error:  # Flower not listening yet
            found, last = None, error
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {DEADLINE:g}s (last: {last!r})")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def task_ids(dev_stack: DevStack) -> dict[str, str]:
    """Queue -> the id of a task that ran there to SUCCESS."""
    with TaskProducer(dev_stack.settings()) as producer:
        return run_a_task_on_every_queue(dev_stack, producer)


def run_a_task_on_every_queue(stack: DevStack, producer: TaskProducer) -> dict[str, str]:
    Image.new("RGB", (64, 48), "teal").save(stack.media_root / "flower.png")
    task_ids = {
        "default": producer.enqueue("platform_tasks.default.add_numbers", queue="default",
                                    args=[2, 3]),
        "email": producer.enqueue("platform_tasks.email.send_welcome_email", queue="email",
                                  kwargs={"user_email": "flower-reader@example.com"}),
        "payments": producer.enqueue(
            "platform_tasks.payments.process_payment", queue="payments",
            kwargs={"transaction_id": "tx-flower", "amount": "4.00", "currency": "USD",
                    "idempotency_key": f"flower-{time.time_ns()}"},
        ),
        "media": producer.enqueue("platform_tasks.media.make_thumbnail", queue="media",
                                  kwargs={"source": "flower.png", "sizes": [16]}),
    }
    for queue, task_id in task_ids.items():
        assert producer.wait(task_id, timeout=DEADLINE).state == "SUCCESS", queue
    return task_ids


def test_flowers_api_shows_a_worker_per_queue_and_the_tasks_they_ran(
    dev_stack: DevStack, task_ids: dict[str, str]
) -> None:
    auth = login(dev_stack)

    def workers() -> dict[str, Any] | None:
        # refresh=1: Flower asks the workers now (broadcast inspect) instead of answering
        # from what it has seen so far.
        status, body = get(dev_stack, "/api/workers?refresh=1", auth)
        if status != 200:
            return None
        listed: dict[str, Any] = json.loads(body)
        seen = {queue_of_node(name) for name in listed}
        return listed if set(QUEUE_NAMES) <= seen else None

    listed = eventually(workers, "a worker of every queue in /api/workers", dev_stack)
    for queue in QUEUE_NAMES:
        names = [name for name in listed if queue_of_node(name) == queue]
        assert len(names) == policy_for(queue).worker_nodes, names
        for name in names:
            assert listed[name]["active_queues"][0]["name"] == queue, listed[name]

    def tasks() -> dict[str, Any] | None:
        status, body = get(dev_stack, "/api/tasks", auth)
        if status != 200:
            return None
        known: dict[str, Any] = json.loads(body)
        done = all(known.get(task_id, {}).get("state") == "SUCCESS"
                   for task_id in task_ids.values())
        return known if done else None

    known = eventually(tasks, "every task as SUCCESS in /api/tasks", dev_stack)
    for queue, task_id in task_ids.items():
        assert queue_of_node(known[task_id]["worker"]) == queue, known[task_id]
        assert known[task_id]["routing_key"] == queue, known[task_id]


def test_flowers_api_refuses_requests_without_the_login(dev_stack: DevStack) -> None:
    user, _ = login(dev_stack).split(":", 1)
    eventually(lambda: get(dev_stack, "/healthcheck", None)[0] == 200 or None,
               "Flower answering", dev_stack)
    assert get(dev_stack, "/api/workers", None)[0] == 401
    assert get(dev_stack, "/api/tasks", f"{user}:wrong-password")[0] == 401
    # The password is in Flower's environment, not on its command line (which is logged).
    assert login(dev_stack) not in (dev_stack.log_dir / "flower.log").read_text()


def test_flowers_metrics_count_the_task_events_of_every_queue(
    dev_stack: DevStack, task_ids: dict[str, str]
) -> None:
    def metrics() -> str | None:
        # Flower serves /metrics without asking for the login, for Prometheus to scrape.
        status, body = get(dev_stack, "/metrics", None)
        text = body.decode()
        if status != 200:
            return None
        succeeded = [line for line in text.splitlines()
                     if line.startswith("flower_events_total{") and "task-succeeded" in line]
        queues = {queue for queue in QUEUE_NAMES
                  for line in succeeded
                  if re.search(f'worker="{queue}(-[0-9]+)?@', line)}
        return text if queues == set(QUEUE_NAMES) else None

    text = eventually(metrics, "task-succeeded events of every queue in /metrics", dev_stack)
    assert "flower_task_runtime_seconds_bucket" in text
