"""The producer refuses bad input with its documented exception, and then Redis stays untouched.

No worker runs here, so whatever the producer publishes stays on the broker to be inspected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from platform_tasks import headers
from platform_tasks.producer import (
    InvalidPayloadError,
    InvalidScheduleError,
    PayloadNotJSONError,
    PayloadTooLargeError,
    ProducerError,
    TaskProducer,
    UnknownQueueError,
    UnknownTaskError,
)
from platform_tasks.queues import policy_for

pytestmark = pytest.mark.integration

MAX_DELAY_SECONDS = policy_for("default").max_delay_seconds

ADD = "platform_tasks.default.add_numbers"
WELCOME = "platform_tasks.email.send_welcome_email"


#: A list that holds itself: no JSON can carry it.
CIRCULAR: list[Any] = []
CIRCULAR.append(CIRCULAR)

REFUSALS: list[tuple[str, dict[str, Any], type[ProducerError], str]] = [
    ("unknown queue", {"task_name": ADD, "queue": "urgent", "args": [1, 2]},
     UnknownQueueError, "unknown queue 'urgent'; known queues: email, media, payments, default"),
    ("kwargs not a mapping", {"task_name": ADD, "queue": "default", "kwargs": [("x", 1)]},
     InvalidPayloadError, "kwargs must be a mapping"),
    ("empty idempotency key", {"task_name": ADD, "queue": "default", "args": [1, 2],
                               "idempotency_key": ""},
     InvalidPayloadError, "idempotency_key must be 1-255 characters"),
    ("refused with an idempotency key", {"task_name": ADD, "queue": "default",
                                         "args": [1, "x"], "idempotency_key": "k-1"},
     InvalidPayloadError, "y:"),
    ("unknown task", {"task_name": "platform_tasks.default.sub", "queue": "default"},
     UnknownTaskError, "unknown task 'platform_tasks.default.sub'"),
    ("wrong type", {"task_name": ADD, "queue": "default", "args": [1, "two"]},
     InvalidPayloadError, "y:"),
    ("missing argument", {"task_name": ADD, "queue": "default", "args": [1]},
     InvalidPayloadError, "y: Field required"),
    ("extra argument", {"task_name": ADD, "queue": "default", "args": [1, 2, 3]},
     InvalidPayloadError, "takes 2 arguments"),
    ("bad address", {"task_name": WELCOME, "queue": "email",
                     "kwargs": {"user_email": "not-an-address"}},
     InvalidPayloadError, "user_email"),
    ("not JSON", {"task_name": ADD, "queue": "default", "args": [1, {2, 3}]},
     PayloadNotJSONError, "not JSON"),
    ("NaN", {"task_name": ADD, "queue": "default", "args": [1, math.nan]},
     PayloadNotJSONError, "not JSON"),
    ("contains itself", {"task_name": ADD, "queue": "default", "args": [1, CIRCULAR]},
     PayloadNotJSONError, "contains itself"),
    ("too large", {"task_name": WELCOME, "queue": "email",
                   "kwargs": {"user_email": "a" * 2000 + "@example.com"}},
     PayloadTooLargeError, "the limit is 1024"),
    ("countdown and eta", {"task_name": ADD, "queue": "default", "args": [1, 2],
                           "countdown": 5, "eta": datetime.now(UTC)},
     InvalidScheduleError, "not both"),
    ("negative countdown", {"task_name": ADD, "queue": "default", "args": [1, 2],
                            "countdown": -1},
     InvalidScheduleError, "countdown must be >= 0"),
    ("naive eta", {"task_name": ADD, "queue": "default", "args": [1, 2],
                   "eta": datetime(2030, 1, 1)},  # naive on purpose
     InvalidScheduleError, "timezone-aware"),
    ("eta past the visibility timeout", {"task_name": ADD, "queue": "default", "args": [1, 2],
                                         "countdown": MAX_DELAY_SECONDS + 120},
     InvalidScheduleError, "use a beat schedule"),
]


@pytest.mark.parametrize(("call", "error", "message"),
                         [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_a_refused_enqueue_raises_and_writes_nothing(
    producer: TaskProducer, master: redis.Redis, call: dict[str, Any],
    error: type[ProducerError], message: str,
    broker_keys: Callable[[], dict[int, list[str]]],
) -> None:
    before = broker_keys()
    task_name = call.pop("task_name")
    with pytest.raises(error) as caught:
        producer.enqueue(task_name, **call)
    assert message in str(caught.value)
    assert broker_keys() == before


def test_an_accepted_enqueue_lands_on_its_queue_with_correlation_headers(
    producer: TaskProducer, master: redis.Redis
) -> None:
    task_id = producer.enqueue(ADD, queue="default", args=[2, 3], correlation_id="req-42")
    assert master.llen("default") == 1
    message = json.loads(master.lindex("default", 0))
    assert message["headers"]["id"] == task_id
    assert message["headers"]["task"] == ADD
    assert message["headers"][headers.CORRELATION_ID] == "req-42"
    assert isinstance(message["headers"][headers.ENQUEUED_AT], float)
    assert message["content-type"] == "application/json"


def test_without_a_correlation_id_the_task_id_is_used(
    producer: TaskProducer, master: redis.Redis
) -> None:
    task_id = producer.enqueue(ADD, queue="default", args=[2, 3])
    message = json.loads(master.lindex("default", 0))
    assert message["headers"][headers.CORRELATION_ID] == task_id


def test_an_idempotency_key_enqueues_once(producer: TaskProducer, master: redis.Redis) -> None:
    first = producer.enqueue(WELCOME, queue="email", kwargs={"user_email": "a@example.com"},
                             idempotency_key="signup-77")
    second = producer.enqueue(WELCOME, queue="email", kwargs={"user_email": "a@example.com"},
                              idempotency_key="signup-77")
    assert first == second
    assert master.llen("email") == 1


def test_a_countdown_within_the_limit_is_accepted(
    producer: TaskProducer, master: redis.Redis
) -> None:
    producer.enqueue(ADD, queue="default", args=[1, 1],
                     eta=datetime.now(UTC) + timedelta(seconds=MAX_DELAY_SECONDS - 60))
    assert master.llen("default") == 1
