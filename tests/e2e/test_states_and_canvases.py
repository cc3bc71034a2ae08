"""Result states as the producer API sees them, routing, revocation, and Celery's canvases."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from celery import chain, chord, group
from celery.canvas import xstarmap

from platform_tasks.devstack.gateway import PaymentGatewayStub
from platform_tasks.devstack.stack import DevStack
from platform_tasks.heartbeat import queue_of_node
from platform_tasks.producer import TaskProducer

ADD = "platform_tasks.default.add_numbers"
SUM = "platform_tasks.default.sum_numbers"
PAYMENT = "platform_tasks.payments.process_payment"


def states_until_ready(producer: TaskProducer, task_id: str, timeout: float) -> list[str]:
    """Every distinct state seen, in order, polling until the task is ready."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = producer.status(task_id)
        if not seen or seen[-1] != current.state:
            seen.append(current.state)
        if current.ready:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"{task_id} not ready after {timeout}s; states seen: {seen}")


@pytest.fixture
def gateway(stack: DevStack) -> Iterator[PaymentGatewayStub]:
    assert stack.gateway is not None
    yield stack.gateway
    stack.gateway.release()
    stack.gateway.fail_next(0)


def payment(key: str, currency: str = "USD") -> dict[str, str]:
    return {"transaction_id": f"tx-{key}", "amount": "1.00", "currency": currency,
            "idempotency_key": key}


def test_states_go_pending_started_retry_success(
    producer: TaskProducer, gateway: PaymentGatewayStub
) -> None:
    key = f"states-{uuid.uuid4().hex}"
    gateway.hold()  # the first attempt stays STARTED until released
    gateway.fail_next(1)  # ... and then fails transiently, so the task retries
    task_id = producer.enqueue(PAYMENT, queue="payments", kwargs=payment(key), countdown=1)
    assert producer.status(task_id).state == "PENDING"
    deadline = time.monotonic() + 20
    while producer.status(task_id).state != "STARTED":
        assert time.monotonic() < deadline, "never STARTED"
        time.sleep(0.02)
    gateway.release()
    after_release = states_until_ready(producer, task_id, timeout=60)
    assert after_release[0] in {"STARTED", "RETRY"}
    assert "RETRY" in after_release
    assert after_release[-1] == "SUCCESS"
    assert after_release.index("RETRY") < after_release.index("SUCCESS")


def test_a_failing_task_ends_in_failure_with_its_reason(producer: TaskProducer) -> None:
    task_id = producer.enqueue(PAYMENT, queue="payments",
                               kwargs=payment(f"declined-{uuid.uuid4().hex}", currency="XXX"))
    states = states_until_ready(producer, task_id, timeout=30)
    assert states[-1] == "FAILURE"
    assert "declined" in (producer.status(task_id).error or "")


def test_a_revoked_task_never_runs(producer: TaskProducer) -> None:
    task_id = producer.enqueue(ADD, queue="default", args=[1, 1], countdown=3)
    producer.revoke(task_id)
    outcome = producer.wait(task_id, timeout=30)
    assert outcome.state == "REVOKED"
    assert outcome.result is None


@pytest.mark.parametrize(
    ("task", "queue", "kwargs"),
    [
        (ADD, "default", {"x": 1, "y": 2}),
        ("platform_tasks.email.send_welcome_email", "email", {"user_email": "r@example.com"}),
        (PAYMENT, "payments", payment("routing-" + uuid.uuid4().hex)),
        ("platform_tasks.media.make_thumbnail", "media", {"source": "missing.png",
                                                          "sizes": [8]}),
    ],
)
def test_each_task_runs_on_its_own_queue_worker(
    producer: TaskProducer, task: str, queue: str, kwargs: dict[str, object]
) -> None:
    result = producer.app.send_task(task, kwargs=kwargs)  # no queue given: routing decides
    producer.wait(result.id, timeout=60)
    meta = producer.app.backend.get_task_meta(result.id)
    assert meta["queue"] == queue
    assert queue_of_node(str(meta["worker"])) == queue


def test_a_producer_may_send_a_task_to_another_queue(producer: TaskProducer) -> None:
    task_id = producer.enqueue("platform_tasks.email.send_welcome_email", queue="default",
                               kwargs={"user_email": "elsewhere@example.com"})
    producer.wait(task_id, timeout=30)
    meta = producer.app.backend.get_task_meta(task_id)
    assert queue_of_node(str(meta["worker"])) == "default"


def test_chain_passes_each_result_on(producer: TaskProducer) -> None:
    add = producer.app.signature(ADD, queue="default")
    result = chain(add.clone(args=(2, 2)), add.clone(args=(4,)), add.clone(args=(8,)))()
    assert result.get(timeout=30) == 16


def test_group_returns_every_result_in_order(producer: TaskProducer) -> None:
    add = producer.app.signature(ADD, queue="default")
    result = group(add.clone(args=(i, i)) for i in range(10))()
    assert result.get(timeout=30) == [2 * i for i in range(10)]


def test_chord_feeds_the_group_results_to_its_body(producer: TaskProducer) -> None:
    add = producer.app.signature(ADD, queue="default")
    body = producer.app.signature(SUM, queue="default")
    result = chord([add.clone(args=(i, 1)) for i in range(5)], body)()
    assert result.get(timeout=30) == sum(i + 1 for i in range(5))


def test_starmap_applies_the_task_to_each_argument_tuple(producer: TaskProducer) -> None:
    add = producer.app.signature(ADD, queue="default")
    result = xstarmap(add, [(1, 2), (3, 4), (5, 6)], app=producer.app).apply_async(queue="default")
    assert result.get(timeout=30) == [3, 7, 11]


def test_a_chain_with_a_failing_step_reports_the_failure(producer: TaskProducer) -> None:
    add = producer.app.signature(ADD, queue="default")
    result = chain(add.clone(args=(1, 1)), add.clone(args=("x",)))()
    with pytest.raises(Exception, match=r"InvalidArgumentsError|Input should be"):
        result.get(timeout=30)
