"""A broker that does not answer, or keeps refusing writes for now: the producer raises one
error that names it, whichever path the call took, and that still is a redis-py
``ConnectionError`` and ``TimeoutError`` and a kombu ``OperationalError``, as the call's
errors were. A refusal that will not pass by waiting (out of memory) is raised as it was.

The servers are real: a port nothing listens on, a redis-server stopped mid-test, one with
a password the producer gets wrong, a replica of a master that never answers (read-only),
one whose memory limit is a byte. Only the retry budget is shortened (about 40 s as
shipped).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import pytest
import redis
from kombu.exceptions import OperationalError

from platform_tasks import producer as producer_module
from platform_tasks.devstack.ports import free_port
from platform_tasks.producer import (
    PUBLISHED_UNMARKED,
    BrokerUnavailableError,
    ProducerError,
    TaskProducer,
)
from platform_tasks.settings import load_settings

pytestmark = pytest.mark.integration

ADD = "platform_tasks.default.add_numbers"
PASSWORD = "not-in-any-message-7f3a"


SHORT_BUDGET_SECONDS = 0.3
SHORT_RETRY_POLICY = {
    "max_retries": 1, "interval_start": 0.05, "interval_step": 0.05, "interval_max": 0.05,
}


@pytest.fixture
def short_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producer_module, "PUBLISH_BUDGET_SECONDS", SHORT_BUDGET_SECONDS)
    monkeypatch.setattr(producer_module, "PUBLISH_RETRY_POLICY", SHORT_RETRY_POLICY)


def _assert_names_the_broker(error: BrokerUnavailableError, address: str, call: str, *,
                             publish: bool = True) -> None:
    message = str(error)
    assert message.startswith(f"{call}: the broker ({address}) is unavailable ("), message
    assert PASSWORD not in message
    assert ("enqueue again with the same idempotency key" in message) is publish, message
    assert error.__cause__ is not None
    # Handlers written for what the call raised before keep catching it.
    assert isinstance(error, redis.ConnectionError)
    assert isinstance(error, redis.TimeoutError)
    assert isinstance(error, OperationalError)
    assert isinstance(error, ProducerError)


@pytest.mark.usefixtures("short_retries")
def test_a_broker_never_reached() -> None:
    port = free_port()  # nothing listens here
    settings = load_settings(
        {"PLATFORM_TASKS_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{port}/0"}
    )
    with TaskProducer(settings) as producer:
        # The first publish onto a queue goes through Celery and kombu.
        with pytest.raises(BrokerUnavailableError) as caught:
            producer.enqueue(ADD, queue="default", args=[1, 2])
        _assert_names_the_broker(caught.value, f"redis://127.0.0.1:{port}/0", ADD)
        assert isinstance(caught.value.__cause__, OperationalError)


@pytest.mark.usefixtures("short_retries")
def test_a_broker_that_went_away(another_redis_url: str) -> None:
    with TaskProducer(load_settings({"PLATFORM_TASKS_REDIS_URL": another_redis_url})) as producer:
        producer.enqueue(ADD, queue="default", args=[1, 2])
        producer.enqueue_many(ADD, [([1, 2], None)], queue="default")
        # Stopped under the producer's open connections: its later publishes take its own
        # path (the kept template, then one Redis transaction), not kombu's.
        redis.Redis.from_url(another_redis_url).shutdown(nosave=True)

        with pytest.raises(BrokerUnavailableError) as caught:
            producer.enqueue(ADD, queue="default", args=[1, 2])
        _assert_names_the_broker(caught.value, another_redis_url, ADD)
        assert isinstance(caught.value.__cause__, redis.ConnectionError)

        with pytest.raises(BrokerUnavailableError) as caught:
            producer.enqueue_many(ADD, [([1, 2], None), ([3, 4], None)], queue="default")
        _assert_names_the_broker(caught.value, another_redis_url, ADD)

        with pytest.raises(BrokerUnavailableError) as caught:
            producer.revoke("0b4c6a5e-3c1e-4d0e-9a43-2f0f6f1f4d11")
        _assert_names_the_broker(caught.value, another_redis_url, "revoke", publish=False)

        producer.app.backend.max_retries = 1  # Celery's result backend retries 20 times
        with pytest.raises(BrokerUnavailableError) as caught:
            producer.status("0b4c6a5e-3c1e-4d0e-9a43-2f0f6f1f4d11")
        # Results are in the next database of the same server.
        results_url = another_redis_url.removesuffix("/0") + "/1"
        _assert_names_the_broker(caught.value, results_url, "status", publish=False)


@pytest.mark.usefixtures("short_retries")
def test_a_wrong_password_says_what_redis_said(protected_redis_url: str) -> None:
    url = protected_redis_url.replace("redis://", f"redis://:{PASSWORD}@")
    with (
        TaskProducer(load_settings({"PLATFORM_TASKS_REDIS_URL": url})) as producer,
        pytest.raises(BrokerUnavailableError) as caught,
    ):
        producer.enqueue(ADD, queue="default", args=[1, 2])
    _assert_names_the_broker(caught.value, protected_redis_url, ADD)
    assert "invalid username-password pair" in str(caught.value)


def test_the_command_line_says_the_broker_is_unavailable() -> None:
    # The real command, in a process of its own, with the same short retries.
    shortened = (
        "import sys\n"
        "from platform_tasks import cli, producer\n"
        f"producer.PUBLISH_BUDGET_SECONDS = {SHORT_BUDGET_SECONDS!r}\n"
        f"producer.PUBLISH_RETRY_POLICY = {SHORT_RETRY_POLICY!r}\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PLATFORM_TASKS_")}
    env["PLATFORM_TASKS_REDIS_URL"] = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    done = subprocess.run(
        [sys.executable, "-c", shortened, "enqueue", ADD, "--queue", "default",
         "--args", "[1, 2]"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(
        f"platform-tasks: broker unavailable: BrokerUnavailableError: {ADD}: the broker "
        f"(redis://127.0.0.1:{port}/0) is unavailable ("
    ), done.stderr
    assert PASSWORD not in done.stderr


@pytest.mark.usefixtures("short_retries")
def test_a_broker_refusing_writes_for_now_is_unavailable(read_only_redis_url: str) -> None:
    with TaskProducer(load_settings({"PLATFORM_TASKS_REDIS_URL": read_only_redis_url})) as producer:
        # A task's first publish onto a queue declares the queue's binding first.
        with pytest.raises(BrokerUnavailableError) as caught:
            producer.enqueue(ADD, queue="default", args=[1, 2])
        _assert_names_the_broker(caught.value, read_only_redis_url, ADD)
        assert "(ReadOnlyError: " in str(caught.value)
        # The producer's own write, retried through transient replies.
        with pytest.raises(BrokerUnavailableError) as caught:
            producer.revoke("0b4c6a5e-3c1e-4d0e-9a43-2f0f6f1f4d11")
        _assert_names_the_broker(caught.value, read_only_redis_url, "revoke", publish=False)
        assert "(ReadOnlyError: " in str(caught.value)


@pytest.mark.usefixtures("short_retries")
def test_a_refusal_that_is_not_unavailability_is_raised_as_it_is(full_redis_url: str) -> None:
    with TaskProducer(load_settings({"PLATFORM_TASKS_REDIS_URL": full_redis_url})) as producer:
        # Out of memory is not "try again later": Redis' reply, as it came.
        with pytest.raises(redis.exceptions.OutOfMemoryError) as caught:
            producer.enqueue(ADD, queue="default", args=[1, 2])
        assert not isinstance(caught.value, BrokerUnavailableError)
        with pytest.raises(redis.exceptions.OutOfMemoryError) as caught:
            producer.revoke("0b4c6a5e-3c1e-4d0e-9a43-2f0f6f1f4d11")
        assert not isinstance(caught.value, BrokerUnavailableError)


@pytest.mark.usefixtures("short_retries")
def test_a_publish_whose_key_cannot_be_marked_says_it_was_published(
    another_redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    queued: list[int] = []
    with TaskProducer(load_settings({"PLATFORM_TASKS_REDIS_URL": another_redis_url})) as producer:
        write = producer._write

        def write_then_lose_the_broker(queue: str, commands: list[Any]) -> None:
            write(queue, commands)
            server = redis.Redis.from_url(another_redis_url)
            queued.append(server.llen("default"))
            server.shutdown(nosave=True)  # before the key is marked as published

        monkeypatch.setattr(producer, "_write", write_then_lose_the_broker)
        with pytest.raises(BrokerUnavailableError) as caught:
            producer.enqueue(ADD, queue="default", args=[1, 2], idempotency_key="order-7")
    assert queued == [1]
    message = str(caught.value)
    assert message.startswith(f"{ADD}: the broker ({another_redis_url}) is "), message
    assert message.endswith(f"; {PUBLISHED_UNMARKED}"), message


def test_a_first_publish_rides_through_a_broker_refusing_writes_for_now(
    read_only_redis_url: str,
) -> None:
    # As a demoted master does until the Sentinels point the producer at the new one: here
    # the same server is promoted a moment later, within the publish retries.
    server = redis.Redis.from_url(read_only_redis_url)
    promotion = threading.Timer(1.5, server.replicaof, args=("NO", "ONE"))
    try:
        settings = load_settings({"PLATFORM_TASKS_REDIS_URL": read_only_redis_url})
        with TaskProducer(settings) as producer:
            promotion.start()
            task_id = producer.enqueue(ADD, queue="default", args=[1, 2])
        assert promotion.finished.is_set()
        queued = [json.loads(raw)["headers"]["id"] for raw in server.lrange("default", 0, -1)]
        assert queued == [task_id]
    finally:
        promotion.cancel()
        promotion.join()
        server.close()
