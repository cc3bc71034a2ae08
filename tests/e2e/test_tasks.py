"""Each task end to end: producer -> Sentinel-backed broker -> its queue's worker -> real effect."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
from PIL import Image

from platform_tasks.devstack.stack import DevStack
from platform_tasks.producer import TaskProducer
from platform_tasks.redis_client import connect
from platform_tasks.stats import read_stats, today_utc

ADD = "platform_tasks.default.add_numbers"
WELCOME = "platform_tasks.email.send_welcome_email"
PAYMENT = "platform_tasks.payments.process_payment"
THUMBNAIL = "platform_tasks.media.make_thumbnail"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_add_numbers_returns_the_sum(producer: TaskProducer) -> None:
    task_id = producer.enqueue(ADD, queue="default", args=[16, 16])
    outcome = producer.wait(task_id, timeout=30)
    assert (outcome.state, outcome.result) == ("SUCCESS", 32)


def test_welcome_email_reaches_the_smtp_server(stack: DevStack, producer: TaskProducer) -> None:
    assert stack.smtp is not None
    address = f"{unique('newcomer')}@example.com"
    task_id = producer.enqueue(WELCOME, queue="email", kwargs={"user_email": address})
    outcome = producer.wait(task_id, timeout=30)
    assert outcome.state == "SUCCESS"
    message = stack.smtp.wait_for(lambda m: m["To"] == address, timeout=10)
    assert message["Subject"] == "Welcome aboard"
    assert address in message.get_content()
    assert outcome.result["message_id"] == message["Message-ID"]


def test_a_refused_address_fails_fast_without_retries(producer: TaskProducer) -> None:
    address = f"{unique('nobody')}@invalid.example.com"
    task_id = producer.enqueue(WELCOME, queue="email", kwargs={"user_email": address})
    outcome = producer.wait(task_id, timeout=30)
    assert outcome.state == "FAILURE"
    assert outcome.retries == 0
    assert outcome.error is not None
    assert "550" in outcome.error


def test_a_transient_smtp_reply_is_retried_until_delivered(
    stack: DevStack, producer: TaskProducer
) -> None:
    assert stack.smtp is not None
    address = f"tempfail-{uuid.uuid4().hex[:8]}@example.com"  # the sink answers 451 once
    task_id = producer.enqueue(WELCOME, queue="email", kwargs={"user_email": address})
    outcome = producer.wait(task_id, timeout=60)
    assert outcome.state == "SUCCESS"
    assert outcome.retries is not None
    assert outcome.retries >= 1
    assert [m for m in stack.smtp.messages() if m["To"] == address]


def payment_kwargs(key: str, amount: str = "19.99", currency: str = "USD") -> dict[str, str]:
    return {"transaction_id": unique("tx"), "amount": amount, "currency": currency,
            "idempotency_key": key}


def test_payment_is_retried_through_gateway_failures_and_charged_once(
    stack: DevStack, producer: TaskProducer
) -> None:
    assert stack.gateway is not None
    key = unique("order")
    stack.gateway.fail_next(2)
    calls_before = stack.gateway.requests_seen
    task_id = producer.enqueue(PAYMENT, queue="payments", kwargs=payment_kwargs(key))
    outcome = producer.wait(task_id, timeout=90)
    assert outcome.state == "SUCCESS", outcome.error
    assert outcome.retries == 2
    assert outcome.result["amount"] == "19.99"
    assert outcome.result["deduplicated"] is False
    # Two 503s and one charge: each attempt called the gateway once.
    assert stack.gateway.requests_seen - calls_before == 3
    assert stack.gateway.charge_count(key) == 1


def test_a_payment_delivered_twice_is_charged_once(
    stack: DevStack, producer: TaskProducer
) -> None:
    assert stack.gateway is not None
    key = unique("order")
    kwargs = payment_kwargs(key, amount="5.00")
    client = connect(stack.settings())
    before = _succeeded(client, PAYMENT)
    calls_before = stack.gateway.requests_seen
    # The same message published twice, as a redelivery or a producer retry would do.
    task_id = str(uuid.uuid4())
    for _ in range(2):
        producer.app.send_task(PAYMENT, kwargs=kwargs, queue="payments", task_id=task_id)
    assert producer.wait(task_id, timeout=60).state == "SUCCESS"
    _wait_until(lambda: _succeeded(client, PAYMENT) >= before + 2, timeout=60)
    # Both deliveries ran; only one reached the gateway, the other found the stored charge
    # (or waited on the lock and then found it). The gateway's own dedupe was never needed.
    assert stack.gateway.requests_seen - calls_before == 1
    assert stack.gateway.charge_count(key) == 1
    client.close()


def test_a_declined_payment_fails_without_retry(producer: TaskProducer) -> None:
    task_id = producer.enqueue(
        PAYMENT, queue="payments", kwargs=payment_kwargs(unique("order"), currency="XXX")
    )
    outcome = producer.wait(task_id, timeout=30)
    assert outcome.state == "FAILURE"
    assert outcome.retries == 0
    assert outcome.error is not None
    assert "402" in outcome.error


def test_thumbnails_are_written_at_the_requested_sizes(
    stack: DevStack, producer: TaskProducer
) -> None:
    source = Path("uploads") / f"{unique('photo')}.png"
    (stack.media_root / source).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (800, 600), (200, 40, 40)).save(stack.media_root / source)
    task_id = producer.enqueue(
        THUMBNAIL, queue="media", kwargs={"source": str(source), "sizes": [[128, 128], [64, 32]]}
    )
    outcome = producer.wait(task_id, timeout=60)
    assert outcome.state == "SUCCESS", outcome.error
    sizes = []
    for thumbnail in outcome.result["thumbnails"]:
        with Image.open(stack.media_root / thumbnail["path"]) as image:
            sizes.append(image.size)
    # Aspect ratio kept (4:3), each fitting inside its box.
    assert sizes == [(128, 96), (43, 32)]


def test_a_corrupt_image_fails_fast(stack: DevStack, producer: TaskProducer) -> None:
    source = f"{unique('broken')}.png"
    (stack.media_root / source).write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    task_id = producer.enqueue(THUMBNAIL, queue="media",
                               kwargs={"source": source, "sizes": [64]})
    outcome = producer.wait(task_id, timeout=30)
    assert outcome.state == "FAILURE"
    assert outcome.retries == 0


def test_an_invalid_payload_pushed_past_the_producer_fails_without_retries(
    producer: TaskProducer,
) -> None:
    # send_task skips the producer's checks, as a foreign client would.
    result = producer.app.send_task(ADD, args=["sixteen", 16], queue="default")
    outcome = producer.wait(result.id, timeout=30)
    assert outcome.state == "FAILURE"
    assert outcome.retries == 0
    assert outcome.error is not None
    assert outcome.error.startswith("InvalidArgumentsError")


def _succeeded(client: redis.Redis, task: str) -> int:
    return sum(row.succeeded for row in read_stats(client, today_utc()) if row.task == task)


def _wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.1)
