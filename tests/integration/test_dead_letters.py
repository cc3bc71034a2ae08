"""Tasks and messages the workers give up on land in the dead-letter list, with their reason and
original message; the ``dead-letters`` commands list, show, replay and purge them."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from platform_tasks import dead_letters, headers, keys
from platform_tasks.observability import catalog
from platform_tasks.producer import TaskProducer
from platform_tasks.redis_client import connect

if TYPE_CHECKING:
    from platform_tasks.devstack.stack import DevStack

pytestmark = pytest.mark.integration

ADD = "platform_tasks.default.add_numbers"
WELCOME = "platform_tasks.email.send_welcome_email"
UNKNOWN = "platform_tasks.default.no_such_task"


@pytest.fixture(scope="module")
def dev_stack_options() -> dict[str, Any]:
    return {"queues": ["default", "email"], "monitor": False, "gateway": False}


@pytest.fixture(scope="module")
def producer(dev_stack: DevStack) -> Iterator[TaskProducer]:
    with TaskProducer(dev_stack.settings()) as task_producer:
        yield task_producer


@pytest.fixture(scope="module")
def client(dev_stack: DevStack) -> Iterator[redis.Redis]:
    broker = connect(dev_stack.settings())
    yield broker
    broker.close()


def cli(stack: DevStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "platform_tasks", "dead-letters", *args],
        env=stack.env, capture_output=True, text=True, timeout=60, check=False,
    )


def listed(stack: DevStack, *filters: str) -> list[dict[str, Any]]:
    done = cli(stack, "list", "--json", "--limit", "1000", *filters)
    assert done.returncode == 0, done.stderr
    entries: list[dict[str, Any]] = json.loads(done.stdout)
    return entries


def wait_for_entry(
    stack: DevStack, matches: Callable[[dict[str, Any]], bool], *filters: str,
    timeout: float = 30.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [entry for entry in listed(stack, *filters) if matches(entry)]
        if found:
            assert len(found) == 1, found
            return found[0]
        assert time.monotonic() < deadline, f"no such dead letter within {timeout}s"
        time.sleep(0.3)


def assert_workers_alive(stack: DevStack) -> None:
    for name in ("worker-default", "worker-email"):
        assert stack.processes[name].alive, name


def counter(stack: DevStack, queue: str, task: str, reason: str) -> float:
    url = stack.metrics_urls[f"worker-{queue}"]
    body = urllib.request.urlopen(url, timeout=10).read().decode()  # noqa: S310 - stack URL
    wanted = {"queue": queue, "task": task, "reason": reason}
    return sum(
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == catalog.DEAD_LETTERS.name and sample.labels == wanted
    )


def envelope(message_headers: dict[str, Any], body: bytes, content_type: str) -> str:
    """A message as kombu stores it on a queue list."""
    return json.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": message_headers,
        "properties": {
            "delivery_tag": str(uuid.uuid4()), "body_encoding": "base64", "priority": 0,
            "delivery_info": {"exchange": "default", "routing_key": "default"},
        },
    })


# -- where entries come from -----------------------------------------------------------------


def test_a_permanent_failure_is_kept_with_its_arguments_and_message(
    dev_stack: DevStack, producer: TaskProducer
) -> None:
    address = f"nobody-{uuid.uuid4().hex[:8]}@invalid.example.com"
    correlation_id = f"dl-{uuid.uuid4()}"
    task_id = producer.enqueue(WELCOME, queue="email", kwargs={"user_email": address},
                               correlation_id=correlation_id)
    assert producer.wait(task_id, 60).state == "FAILURE"

    entry = wait_for_entry(dev_stack, lambda e: e["task_id"] == task_id, "--task", WELCOME)
    assert entry["reason"] == "failed"
    assert entry["queue"] == "email"
    assert (entry["args"], entry["kwargs"]) == ([], {"user_email": address})
    assert entry["correlation_id"] == correlation_id
    assert entry["exception_type"] == "PermanentTaskError"
    assert "550" in entry["exception"]
    assert entry["worker"].startswith("email@")
    assert entry["message"]["headers"]["id"] == task_id
    assert entry["message"]["headers"]["task"] == WELCOME
    assert entry["message"]["headers"][headers.CORRELATION_ID] == correlation_id
    assert entry["message"]["body"][:2] == [[], {"user_email": address}]
    assert counter(dev_stack, "email", WELCOME, "failed") >= 1


def test_a_task_that_used_its_last_retry_is_kept_as_retries_exhausted(
    dev_stack: DevStack, producer: TaskProducer
) -> None:
    # The email queue retries 6 times with backoff; start at the last attempt. The sink
    # answers 451 (try later) the first time it sees a tempfail address.
    address = f"tempfail-{uuid.uuid4().hex[:8]}@example.com"
    result = producer.app.send_task(WELCOME, kwargs={"user_email": address}, queue="email",
                                    retries=6)
    entry = wait_for_entry(dev_stack, lambda e: e["task_id"] == result.id,
                           "--reason", "retries_exhausted")
    assert entry["queue"] == "email"
    assert entry["retries"] == 6
    assert entry["kwargs"] == {"user_email": address}


def test_an_unknown_task_name_is_kept_and_counted(
    dev_stack: DevStack, producer: TaskProducer
) -> None:
    before = counter(dev_stack, "default", UNKNOWN, "unknown_task")
    result = producer.app.send_task(UNKNOWN, args=[1, 2], queue="default")

    entry = wait_for_entry(dev_stack, lambda e: e["task_id"] == result.id,
                           "--reason", "unknown_task")
    assert (entry["task_name"], entry["queue"]) == (UNKNOWN, "default")
    assert (entry["args"], entry["kwargs"]) == ([1, 2], {})
    # The message exactly as kombu stored it: enough to push it back unchanged.
    assert entry["message"]["headers"]["task"] == UNKNOWN
    assert json.loads(base64.b64decode(entry["message"]["body"]))[:2] == [[1, 2], {}]
    assert counter(dev_stack, "default", UNKNOWN, "unknown_task") == before + 1


@pytest.mark.parametrize(
    ("item", "reason", "exception_type"),
    [
        ("garbage \x00 not json", "undecodable", "JSONDecodeError"),
        (json.dumps({"headers": {"id": "MARK"}, "body": ""}), "undecodable", "KeyError"),
        (envelope({"id": "MARK"}, b"{not json", "application/json"), "undecodable",
         "DecodeError"),
        (envelope({"id": "MARK", "task": ADD}, b"\x80\x04N.", "application/x-python-serialize"),
         "invalid_task", "ContentDisallowed"),
        (envelope({"id": "MARK"}, b'{"hello": 1}', "application/json"), "unknown_message",
         None),
    ],
    ids=["not-json", "not-an-envelope", "undecodable-body", "pickle", "no-task-name"],
)
def test_a_message_pushed_straight_onto_a_queue_is_kept_and_the_worker_lives_on(
    dev_stack: DevStack, producer: TaskProducer, client: redis.Redis,
    item: str, reason: str, exception_type: str | None,
) -> None:
    mark = f"garbage-{uuid.uuid4()}"
    client.lpush("default", item.replace("MARK", mark) if "MARK" in item else item + mark)

    entry = wait_for_entry(dev_stack, lambda e: mark in json.dumps(e["message"]),
                           "--reason", reason)
    assert entry["queue"] == "default"
    assert entry["exception_type"] == exception_type
    assert_workers_alive(dev_stack)
    task_id = producer.enqueue(ADD, queue="default", args=[20, 22])
    assert producer.wait(task_id, 30).result == 42


# -- the commands --------------------------------------------------------------------------------


def test_show_prints_one_entry_and_names_an_unknown_id(dev_stack: DevStack) -> None:
    some = listed(dev_stack)[0]
    shown = cli(dev_stack, "show", some["id"])
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == some

    missing = cli(dev_stack, "show", "no-such-id")
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "platform-tasks: no dead letter with id 'no-such-id' "
        "(see `platform-tasks dead-letters list`)"
    )
    assert cli(dev_stack, "replay", "no-such-id").returncode == 1


def test_the_table_lists_newest_first_with_filters(dev_stack: DevStack) -> None:
    done = cli(dev_stack, "list", "--queue", "email", "--limit", "1")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split()[:3] == ["id", "dead", "at"]
    assert len(rows) == 1
    newest = listed(dev_stack, "--queue", "email")[0]
    assert rows[0].split()[0] == newest["id"]


def test_replay_runs_the_task_again_under_its_correlation_id(
    dev_stack: DevStack, producer: TaskProducer, client: redis.Redis
) -> None:
    correlation_id = f"replay-{uuid.uuid4()}"
    dead = dead_letters.DeadLetter(
        reason="failed", queue="default", task_name=ADD, task_id=str(uuid.uuid4()),
        message={}, args=[2, 3], kwargs={}, correlation_id=correlation_id,
    )
    dead_letters.push(client, dead, max_length=1000)

    done = cli(dev_stack, "replay", dead.id)
    assert done.returncode == 0, done.stderr
    new_id = done.stdout.strip()
    assert new_id != dead.task_id
    assert producer.wait(new_id, 30).result == 5
    assert dead.id not in {entry["id"] for entry in listed(dev_stack)}


def test_a_replayed_failure_fails_again_and_is_kept_again(
    dev_stack: DevStack, producer: TaskProducer
) -> None:
    address = f"again-{uuid.uuid4().hex[:8]}@invalid.example.com"
    correlation_id = f"again-{uuid.uuid4()}"
    first = producer.enqueue(WELCOME, queue="email", kwargs={"user_email": address},
                             correlation_id=correlation_id)
    entry = wait_for_entry(dev_stack, lambda e: e["task_id"] == first, "--task", WELCOME)

    done = cli(dev_stack, "replay", "--all", "--task", WELCOME, "--queue", "email")
    assert done.returncode == 0, done.stderr
    assert entry["id"] not in {e["id"] for e in listed(dev_stack)}

    again = wait_for_entry(dev_stack, lambda e: e["correlation_id"] == correlation_id,
                           "--task", WELCOME)
    assert again["task_id"] in done.stdout.split()
    assert again["kwargs"] == {"user_email": address}


def test_what_cannot_be_replayed_is_refused_and_kept(dev_stack: DevStack) -> None:
    unknown = listed(dev_stack, "--reason", "unknown_task")[0]
    done = cli(dev_stack, "replay", unknown["id"])
    assert done.returncode == 1
    assert "not replayed" in done.stderr
    assert "UnknownTaskError" in done.stderr

    garbage = listed(dev_stack, "--reason", "undecodable")[0]
    done = cli(dev_stack, "replay", garbage["id"])
    assert done.returncode == 1
    assert "holds no task to run" in done.stderr
    ids = {entry["id"] for entry in listed(dev_stack)}
    assert {unknown["id"], garbage["id"]} <= ids


def test_purge_needs_yes_and_honours_filters(dev_stack: DevStack) -> None:
    refused = cli(dev_stack, "purge", "--reason", "undecodable")
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    undecodable = len(listed(dev_stack, "--reason", "undecodable"))
    others = len(listed(dev_stack)) - undecodable
    assert undecodable >= 3

    done = cli(dev_stack, "purge", "--reason", "undecodable", "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"purged {undecodable} dead letters"
    assert listed(dev_stack, "--reason", "undecodable") == []
    assert len(listed(dev_stack)) == others

    assert cli(dev_stack, "purge", "--yes").returncode == 0
    assert listed(dev_stack) == []


def test_the_list_keeps_only_the_newest_entries(client: redis.Redis) -> None:
    entries = [
        dead_letters.DeadLetter(reason="failed", queue="default", task_name=ADD,
                                task_id=str(n), message={}, args=[n, n], kwargs={})
        for n in range(5)
    ]
    for entry in entries:
        dead_letters.push(client, entry, max_length=3)
    kept = [dead_letters.DeadLetter.from_json(text)
            for text in client.lrange(keys.DEAD_LETTERS, 0, -1)]
    assert [entry.task_id for entry in kept] == ["4", "3", "2"]
    client.delete(keys.DEAD_LETTERS)
