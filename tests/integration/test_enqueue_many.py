"""Bulk enqueue publishes exactly what ``enqueue`` publishes, all or nothing per refusal.

No worker runs here, so the messages stay on the broker to be compared byte for byte; a
worker running them is in ``test_enqueue_many_worker.py``.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery.signals import before_task_publish

from platform_tasks import headers
from platform_tasks import producer as producer_module
from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.producer import (
    EnqueueRequest,
    InvalidPayloadError,
    InvalidScheduleError,
    PayloadNotJSONError,
    PayloadTooLargeError,
    ProducerError,
    TaskProducer,
    UnknownQueueError,
    UnknownTaskError,
)
from platform_tasks.settings import load_settings

pytestmark = pytest.mark.integration

ADD = "platform_tasks.default.add_numbers"
WELCOME = "platform_tasks.email.send_welcome_email"


def published(master: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The queue's messages in the order a worker takes them (it pops from the right)."""
    return [json.loads(raw) for raw in reversed(master.lrange(queue, 0, -1))]


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """The message with what differs between any two publishes (ids, times) blanked."""
    copy = json.loads(json.dumps(message))
    task_id = copy["headers"]["id"]
    for field in ("id", "root_id", headers.ENQUEUED_AT):
        copy["headers"][field] = "<varies>"
    if copy["headers"][headers.CORRELATION_ID] == task_id:
        copy["headers"][headers.CORRELATION_ID] = "<task id>"
    for field in ("correlation_id", "delivery_tag"):
        copy["properties"][field] = "<varies>"
    return copy


ETA = datetime.now(UTC) + timedelta(minutes=5)
SHAPES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("positional", ADD, "default", {"args": [2, 3]}),
    ("keyword", ADD, "default", {"kwargs": {"x": 1.5, "y": -4}}),
    ("eta and correlation", ADD, "default",
     {"args": [7, 8], "eta": ETA, "correlation_id": "req-42"}),
    ("idempotency key", WELCOME, "email",
     {"kwargs": {"user_email": "ada@example.com"}, "idempotency_key": "signup-1"}),
    ("quotes and unicode", WELCOME, "email",
     {"kwargs": {"user_email": "o'brien.é@example.com"}}),
]


@pytest.mark.parametrize(("task_name", "queue", "call"),
                         [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
def test_each_bulk_message_is_the_message_enqueue_publishes(
    producer: TaskProducer, master: redis.Redis, task_name: str, queue: str,
    call: dict[str, Any],
) -> None:
    single_id = producer.enqueue(task_name, queue=queue, **call)
    (single,) = published(master, queue)
    master.flushall()  # the idempotency key too, so the bulk call publishes again
    # The first message of a batch takes Celery's whole publish path, the others are made
    # from it: three items check both.
    key = call.get("idempotency_key")
    requests = [EnqueueRequest(**{**call, "idempotency_key": f"{key}-{n}" if key else None})
                for n in range(3)]

    bulk_ids = producer.enqueue_many(task_name, requests, queue=queue)

    bulk = published(master, queue)
    assert [m["headers"]["id"] for m in bulk] == bulk_ids
    assert single_id not in bulk_ids
    expected = comparable(single)
    for n, message in enumerate(bulk):
        if key:
            expected["headers"][headers.IDEMPOTENCY_KEY] = f"{key}-{n}"
        assert comparable(message) == expected
        assert message["properties"]["correlation_id"] == message["headers"]["id"]
        assert message["headers"]["root_id"] == message["headers"]["id"]
        assert isinstance(message["headers"][headers.ENQUEUED_AT], float)


def raw_published(master: redis.Redis, queue: str) -> list[str]:
    """The queue's messages as stored, oldest first."""
    return list(reversed(master.lrange(queue, 0, -1)))


def with_varying_values_marked(raw: str) -> str:
    """``raw`` with its task id, delivery tag and enqueue time replaced by marks, every
    other byte left as it was stored."""
    message = json.loads(raw)
    for value, mark in ((message["headers"]["id"], '"<id>"'),
                        (message["properties"]["delivery_tag"], '"<tag>"')):
        raw = raw.replace(json.dumps(value), mark)
    return raw.replace(repr(message["headers"][headers.ENQUEUED_AT]), "<time>")


@pytest.fixture
def roomy_producer(sentinel_topology: SentinelTopology) -> Iterator[TaskProducer]:
    """A new producer (no template kept yet), its payload limit high enough for an argument
    list to outgrow Celery's repr cut."""
    env = {**sentinel_topology.settings_env(), "PLATFORM_TASKS_MAX_PAYLOAD_BYTES": "65536"}
    with TaskProducer(load_settings(env)) as client:
        yield client


def _observer(**_: Any) -> None:
    """A publish receiver of someone else's: with it connected, no template is used."""


def publish(producer: TaskProducer, master: redis.Redis, task_name: str, queue: str,
            requests: list[EnqueueRequest], *, each_through_kombu: bool = False) -> list[str]:
    """Publish ``requests`` and return their messages as stored (the queue emptied after).

    ``each_through_kombu``: every request is a call of its own with a publish receiver
    connected, so each message is the first of its batch and goes all the way through
    Celery and kombu: the reference the spliced messages are compared with.
    """
    if each_through_kombu:
        before_task_publish.connect(_observer, weak=False)
        try:
            for request in requests:
                producer.enqueue_many(task_name, [request], queue=queue)
        finally:
            before_task_publish.disconnect(_observer)
    else:
        producer.enqueue_many(task_name, requests, queue=queue)
    messages = raw_published(master, queue)
    master.delete(queue)
    return messages


def marked(messages: list[str], relabel: tuple[str, str] | None = None) -> list[str]:
    """The messages with their varying values marked, and idempotency keys of one run
    written as another's (``relabel``: a key, once claimed, is not published again)."""
    if relabel is not None:
        messages = [raw.replace(*relabel) for raw in messages]
    return [with_varying_values_marked(raw) for raw in messages]


@pytest.fixture
def rendered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every message made from a template from now on, in order."""
    made: list[str] = []
    render = producer_module._rendered

    def counting(*args: Any) -> Iterator[str]:
        for payload in render(*args):
            made.append(payload)
            yield payload

    monkeypatch.setattr(producer_module, "_rendered", counting)
    return made


TEMPLATE_SHAPES = [
    *SHAPES,
    ("arguments cut in the reprs", "platform_tasks.default.sum_numbers", "default",
     {"args": [list(range(2000))]}),
    ("payment, quotes and unicode", "platform_tasks.payments.process_payment",
     "payments", {"kwargs": {"transaction_id": 'tx-"ü"', "amount": "12.50",
                             "currency": "EUR", "idempotency_key": "pay-\\'é'-0001"},
                  "correlation_id": "req-\"ü\""}),
]


@pytest.mark.parametrize(("task_name", "queue", "call"),
                         [s[1:] for s in TEMPLATE_SHAPES], ids=[s[0] for s in TEMPLATE_SHAPES])
def test_messages_made_from_a_template_are_kombus_bytes(
    roomy_producer: TaskProducer, master: redis.Redis, rendered: list[str],
    task_name: str, queue: str, call: dict[str, Any],
) -> None:
    key = call.get("idempotency_key")

    def requests(label: str, count: int = 4) -> list[EnqueueRequest]:
        return [EnqueueRequest(**{**call, "idempotency_key":
                                  f"{key}-{label}{n}" if key else None})
                for n in range(count)]

    def relabel(label: str) -> tuple[str, str] | None:
        return (f"{key}-{label}", f"{key}-a") if key else None

    # The first message is Celery's and kombu's, the rest are spliced from its template.
    first_batch = marked(publish(roomy_producer, master, task_name, queue, requests("a")))
    assert len(rendered) == 3, "the batch did not take the template path"
    # The template is kept: a later call makes every message from it.
    kept = marked(publish(roomy_producer, master, task_name, queue, requests("b")),
                  relabel("b"))
    assert len(rendered) == 7, "the later call did not start from the kept template"
    single_id = roomy_producer.enqueue(task_name, queue=queue,
                                       **{**call, "idempotency_key": f"{key}-d0" if key else None})
    assert len(rendered) == 8
    single = raw_published(master, queue)
    master.delete(queue)
    by_kombu = marked(publish(roomy_producer, master, task_name, queue, requests("c"),
                              each_through_kombu=True), relabel("c"))

    assert len(rendered) == 8, "with a receiver connected, no message may be spliced"
    assert first_batch == by_kombu
    assert kept == by_kombu
    assert marked(single, relabel("d")) == by_kombu[:1]
    assert json.loads(single[0])["headers"]["id"] == single_id


def test_a_batch_of_different_calls_is_spliced_as_kombu_writes_each(
    roomy_producer: TaskProducer, master: redis.Redis, rendered: list[str],
) -> None:
    # Only the batch's first message is checked against kombu at run time: the others
    # differ from it here in every field a call can vary.
    def requests(label: str) -> list[EnqueueRequest]:
        return [
            EnqueueRequest(args=[1, 2]),
            EnqueueRequest(args=[3.5, -4], eta=ETA, correlation_id="req-\"é\""),
            EnqueueRequest(kwargs={"x": 5, "y": 6}, idempotency_key=f"mix-{label}"),
            EnqueueRequest(args=(7,), kwargs={"y": 8}, countdown=90),
            EnqueueRequest(args=[9, 10], correlation_id="req-2"),
        ]

    batch = publish(roomy_producer, master, ADD, "default", requests("a"))
    assert len(rendered) == 4
    one_by_one = publish(roomy_producer, master, ADD, "default", requests("b"),
                         each_through_kombu=True)

    assert len(rendered) == 4
    assert [json.loads(raw)["headers"]["eta"] is None for raw in batch] == [
        True, False, True, False, True]
    spliced, by_kombu = marked(batch), marked(one_by_one, ("mix-b", "mix-a"))
    # A countdown becomes an eta from the moment of the call: same shape, another instant.
    spliced[3], by_kombu[3] = (re.sub(r'"eta": "[^"]+"', '"eta": "<eta>"', raw)
                               for raw in (spliced[3], by_kombu[3]))
    assert spliced == by_kombu


def test_plain_pairs_and_a_shared_correlation_id(
    producer: TaskProducer, master: redis.Redis
) -> None:
    ids = producer.enqueue_many(
        ADD,
        [([1, 2], None), ((3,), {"y": 4}), EnqueueRequest(args=[5, 6], correlation_id="own")],
        queue="default",
        correlation_id="import-9",
    )

    messages = published(master, "default")
    assert [m["headers"]["id"] for m in messages] == ids
    assert [m["headers"]["argsrepr"] for m in messages] == ["[1, 2]", "[3]", "[5, 6]"]
    assert [m["headers"][headers.CORRELATION_ID] for m in messages] == [
        "import-9", "import-9", "own"
    ]


REFUSALS: list[tuple[str, str, str, Any, type[ProducerError], str]] = [
    ("wrong type", ADD, "default", ([1, "two"], None), InvalidPayloadError, "item 3: "),
    ("extra argument", ADD, "default", ([1, 2, 3], None), InvalidPayloadError,
     "item 3: platform_tasks.default.add_numbers takes 2 arguments"),
    ("not JSON", ADD, "default", ([1, math.nan], None), PayloadNotJSONError, "item 3: "),
    ("too large", WELCOME, "email", ((), {"user_email": "a" * 2000 + "@example.com"}),
     PayloadTooLargeError, "item 3: "),
    ("negative countdown", ADD, "default", EnqueueRequest(args=[1, 2], countdown=-1),
     InvalidScheduleError, "item 3: countdown must be >= 0"),
    ("empty idempotency key", ADD, "default", EnqueueRequest(args=[1, 2], idempotency_key=""),
     InvalidPayloadError, "item 3: idempotency_key must be 1-255 characters"),
    ("not an item", ADD, "default", [1, 2], InvalidPayloadError,
     "item 3: expected an EnqueueRequest or an (args, kwargs) tuple, got list"),
]


@pytest.mark.parametrize(("task_name", "queue", "bad", "error", "message"),
                         [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_one_refused_item_refuses_the_whole_call_naming_its_index(
    producer: TaskProducer, master: redis.Redis, task_name: str, queue: str, bad: Any,
    error: type[ProducerError], message: str,
    broker_keys: Callable[[], dict[int, list[str]]],
) -> None:
    good: Any = ([1, 2], None) if task_name == ADD else ((), {"user_email": "a@example.com"})
    before = broker_keys()

    with pytest.raises(error) as caught:
        producer.enqueue_many(task_name, [good, good, good, bad, good], queue=queue,
                              batch_size=2)

    assert str(caught.value).startswith(message)
    assert broker_keys() == before


@pytest.mark.parametrize(("task_name", "queue", "error", "message"), [
    (ADD, "urgent", UnknownQueueError, "unknown queue 'urgent'"),
    ("platform_tasks.default.sub", "default", UnknownTaskError, "unknown task"),
])
def test_an_unknown_queue_or_task_is_refused_for_the_call(
    producer: TaskProducer, master: redis.Redis, task_name: str, queue: str,
    error: type[ProducerError], message: str,
    broker_keys: Callable[[], dict[int, list[str]]],
) -> None:
    with pytest.raises(error, match=message):
        producer.enqueue_many(task_name, [([1, 2], None)], queue=queue)
    assert broker_keys() == {0: [], 1: []}


def test_a_large_batch_lands_completely_and_in_order(
    producer: TaskProducer, master: redis.Redis
) -> None:
    ids = producer.enqueue_many(ADD, [([n, n], None) for n in range(5000)], queue="default")

    assert len(set(ids)) == 5000
    messages = published(master, "default")
    assert [m["headers"]["id"] for m in messages] == ids
    assert [m["headers"]["argsrepr"] for m in messages[:2]] == ["[0, 0]", "[1, 1]"]
    assert messages[-1]["headers"]["argsrepr"] == "[4999, 4999]"


def test_batches_that_do_not_divide_evenly_all_land(
    producer: TaskProducer, master: redis.Redis
) -> None:
    ids = producer.enqueue_many(ADD, [([n, 1], None) for n in range(23)], queue="default",
                                batch_size=5)

    assert [m["headers"]["id"] for m in published(master, "default")] == ids


def test_no_items_publish_nothing(producer: TaskProducer, master: redis.Redis) -> None:
    assert producer.enqueue_many(ADD, [], queue="default") == []
    assert master.llen("default") == 0


def test_idempotency_keys_publish_each_key_once(
    producer: TaskProducer, master: redis.Redis
) -> None:
    email = {"user_email": "a@example.com"}
    earlier = producer.enqueue(WELCOME, queue="email", kwargs=email, idempotency_key="k-0")

    ids = producer.enqueue_many(
        WELCOME,
        [EnqueueRequest(kwargs=email, idempotency_key=key)
         for key in ("k-0", "k-1", "k-2", "k-1")],
        queue="email",
    )

    assert ids[0] == earlier  # published before: not again
    assert ids[1] == ids[3]  # the same key twice in one call is one task
    assert len({earlier, ids[1], ids[2]}) == 3
    messages = published(master, "email")
    assert [m["headers"]["id"] for m in messages] == [earlier, ids[1], ids[2]]
    assert [m["headers"][headers.IDEMPOTENCY_KEY] for m in messages] == ["k-0", "k-1", "k-2"]

    again = producer.enqueue_many(
        WELCOME, [EnqueueRequest(kwargs=email, idempotency_key="k-2")], queue="email"
    )
    assert again == [ids[2]]
    assert master.llen("email") == 3


def test_a_key_being_published_elsewhere_refuses_its_batch_and_releases_the_rest(
    producer: TaskProducer, master: redis.Redis
) -> None:
    from platform_tasks import keys
    from platform_tasks.producer import EnqueueInProgressError

    master.set(keys.enqueue_dedup(ADD, "busy"), "pending", ex=60)

    with pytest.raises(EnqueueInProgressError, match="item 1: "):
        producer.enqueue_many(ADD, [EnqueueRequest(args=[1, 2], idempotency_key="free"),
                                    EnqueueRequest(args=[1, 2], idempotency_key="busy")],
                              queue="default")

    assert master.llen("default") == 0
    assert master.get(keys.enqueue_dedup(ADD, "free")) is None


def test_with_task_events_on_every_message_takes_celerys_whole_path_and_sends_its_event(
    sentinel_topology: SentinelTopology, master: redis.Redis
) -> None:
    env = {**sentinel_topology.settings_env(), "PLATFORM_TASKS_TASK_EVENTS": "true"}
    with TaskProducer(load_settings(env)) as events_on:
        single_id = events_on.enqueue(ADD, queue="default", args=[2, 3])
        (single,) = published(master, "default")
        master.delete("default")
        pubsub = master.pubsub()
        pubsub.psubscribe("*celeryev*")
        pubsub.get_message(timeout=1)  # the subscription's confirmation

        ids = events_on.enqueue_many(ADD, [([2, 3], None)] * 3, queue="default")

        bulk = published(master, "default")
        assert [m["headers"]["id"] for m in bulk] == ids
        assert all(comparable(m) == comparable(single) for m in bulk)
        sent = []
        while (event := pubsub.get_message(timeout=1)) is not None:
            if event["type"] == "pmessage":
                sent.append(json.loads(base64.b64decode(json.loads(event["data"])["body"])))
        pubsub.close()
    assert single_id not in ids
    assert [e["uuid"] for e in sent if e["type"] == "task-sent"] == ids


@pytest.mark.parametrize(("task_name", "queue", "call"),
                         [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
def test_on_a_single_redis_enqueue_publishes_the_message_celery_would(
    redis_url: str, task_name: str, queue: str, call: dict[str, Any], rendered: list[str],
) -> None:
    # Without a replica to wait for, enqueue writes the same rendered commands minus the
    # WAIT; what lands must still be what Celery's own send_task publishes. The first
    # enqueue of a task onto a queue goes through Celery and kombu, the second is made
    # from the template kept from it: both are compared.
    lone = redis.Redis.from_url(redis_url)
    lone.flushdb()
    key = call.get("idempotency_key")
    with TaskProducer(load_settings({"PLATFORM_TASKS_REDIS_URL": redis_url})) as producer:
        ours = [producer.enqueue(task_name, queue=queue,
                                 **{**call, "idempotency_key": f"{key}-{n}" if key else None})
                for n in range(2)]
        assert len(rendered) == 1  # the second, from the template
        correlation = call.get("correlation_id") or "<celery's>"
        platform_headers = {headers.CORRELATION_ID: correlation, headers.ENQUEUED_AT: 0.0}
        if key:
            platform_headers[headers.IDEMPOTENCY_KEY] = f"{key}-0"
        celerys = producer.app.send_task(
            task_name, args=call.get("args"), kwargs=call.get("kwargs"), queue=queue,
            eta=call.get("eta"), headers=platform_headers,
        ).id
    messages = published(lone, queue)
    lone.close()
    assert [m["headers"]["id"] for m in messages] == [*ours, celerys]
    theirs = comparable(messages[2])
    if correlation == "<celery's>":
        theirs["headers"][headers.CORRELATION_ID] = "<task id>"
    for n, message in enumerate(messages[:2]):
        if key:
            theirs["headers"][headers.IDEMPOTENCY_KEY] = f"{key}-{n}"
        assert comparable(message) == theirs, n
