"""Each lifecycle event in the workers' logs, once per occurrence, with the task's context.

Real tasks through the session's workers: a payment the gateway stub fails once (retried), one
it declines and a thumbnail of a missing file (failed), a countdown task revoked before it runs,
and messages no worker can run (rejected). Canvases show the producer's correlation id on every
task, with Celery's parent and root ids.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import chain, chord
from celery.result import AsyncResult

from platform_tasks import headers
from platform_tasks.app import PUBLISH_RETRY_POLICY
from platform_tasks.devstack.gateway import PaymentGatewayStub
from platform_tasks.devstack.stack import DevStack
from platform_tasks.heartbeat import queue_of_node
from platform_tasks.producer import TaskProducer
from platform_tasks.queues import policy_for

ADD = "platform_tasks.default.add_numbers"
SUM = "platform_tasks.default.sum_numbers"
WELCOME = "platform_tasks.email.send_welcome_email"
PAYMENT = "platform_tasks.payments.process_payment"
THUMBNAIL = "platform_tasks.media.make_thumbnail"

#: What every line logged inside a task carries (parent_id is None for a task nobody sent
#: from inside another task, but the key is there).
CONTEXT_FIELDS = (
    "task_id", "task_name", "queue", "retries", "worker", "correlation_id", "parent_id", "root_id",
)
TERMINAL = {"task_succeeded", "task_failed", "task_revoked", "task_rejected"}
#: Generous: two cores, other tests' workers and stacks running at the same time.
DEADLINE = 60.0


def records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a log file (the process manager's ``--- `` lines skipped)."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


def wait_for_lines(
    path: Path,
    select: Callable[[dict[str, Any]], bool],
    done: Callable[[list[dict[str, Any]]], bool],
    what: str,
    timeout: float = DEADLINE,
) -> list[dict[str, Any]]:
    """The selected lines of ``path`` once ``done`` accepts them; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        selected = [record for record in records(path) if select(record)]
        if done(selected):
            return selected
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name}: {what} not logged within {timeout:g}s: {selected}")
        time.sleep(0.2)


def task_lines(
    stack: DevStack, queue: str, task_id: str, until: Callable[[list[str]], bool]
) -> list[dict[str, Any]]:
    """The lines of ``task_id`` in its worker's log, once the events in them satisfy ``until``."""
    return wait_for_lines(
        stack.log_dir / f"worker-{queue}.log",
        lambda record: record.get("task_id") == task_id,
        lambda lines: until([line["event"] for line in lines]),
        f"the events of {task_id}",
    )


def ends(lines: list[str]) -> bool:
    return any(event in TERMINAL for event in lines)


def other_lines_about(stack: DevStack, queue: str, needle: str) -> list[dict[str, Any]]:
    """Lines mentioning ``needle`` that are not the platform's own task events.

    Celery's own per-task lines (``Task … succeeded``, ``Received unregistered task``,
    ``Discarding revoked task``…) say what an event says; they must be gone.
    """
    return [
        record for record in records(stack.log_dir / f"worker-{queue}.log")
        if needle in json.dumps(record) and record.get("logger") != "platform_tasks.task"
    ]


def assert_context(
    line: dict[str, Any], *, task_id: str, task_name: str, queue: str, correlation_id: str
) -> None:
    missing = [field for field in CONTEXT_FIELDS if field not in line]
    assert not missing, (missing, line)
    assert line["task_id"] == task_id, line
    assert line["task_name"] == task_name, line
    assert line["queue"] == queue, line
    assert queue_of_node(line["worker"]) == queue, line
    assert line["correlation_id"] == correlation_id, line
    assert isinstance(line["retries"], int), line
    assert line["root_id"], line


@pytest.fixture
def gateway(stack: DevStack) -> Iterator[PaymentGatewayStub]:
    assert stack.gateway is not None
    yield stack.gateway
    stack.gateway.fail_next(0)


def payment_kwargs(currency: str = "USD") -> dict[str, str]:
    key = f"log-events-{uuid.uuid4().hex}"
    return {"transaction_id": f"tx-{key}", "amount": "3.00", "currency": currency,
            "idempotency_key": key}


def correlation() -> str:
    return f"req-{uuid.uuid4().hex[:16]}"


# -- retried, succeeded --------------------------------------------------------------------


def test_a_retried_task_logs_each_event_once_per_occurrence(
    stack: DevStack, producer: TaskProducer, gateway: PaymentGatewayStub
) -> None:
    correlation_id = correlation()
    gateway.fail_next(1)  # the first charge gets a 503: GatewayUnavailableError, retried
    task_id = producer.enqueue(PAYMENT, queue="payments", kwargs=payment_kwargs(),
                               correlation_id=correlation_id)
    assert producer.wait(task_id, timeout=DEADLINE).state == "SUCCESS"

    mine = task_lines(stack, "payments", task_id, lambda events: "task_succeeded" in events)
    events = [line["event"] for line in mine]
    # Two deliveries (the first run and the retry's message), one retry, one success.
    assert sorted(events) == sorted([
        "task_received", "task_started", "task_retried",
        "task_received", "task_started", "task_succeeded",
    ]), events
    for line in mine:
        assert_context(line, task_id=task_id, task_name=PAYMENT, queue="payments",
                       correlation_id=correlation_id)
        assert line["level"] == ("warning" if line["event"] == "task_retried" else "info")
    received = [line for line in mine if line["event"] == "task_received"]
    assert [line["retries"] for line in received] == [0, 1]
    retried = next(line for line in mine if line["event"] == "task_retried")
    assert retried["retries"] == 0
    assert retried["exception_type"] == "GatewayUnavailableError"
    assert "503" in retried["exception"]
    succeeded = next(line for line in mine if line["event"] == "task_succeeded")
    assert succeeded["retries"] == 1
    assert isinstance(succeeded["runtime_ms"], int | float)
    assert succeeded["runtime_ms"] >= 0
    assert other_lines_about(stack, "payments", task_id) == []


# -- failed ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task_name", "queue", "kwargs", "reason"),
    [
        # A thread pool: the gateway declines the currency (402), a permanent failure.
        (PAYMENT, "payments", payment_kwargs("XXX"), "declined"),
        # A prefork pool: the image does not exist.
        (THUMBNAIL, "media", {"source": "no-such-image.png", "sizes": [16]}, "does not exist"),
    ],
)
def test_a_failed_task_logs_its_traceback_as_a_list_of_frames(
    stack: DevStack, producer: TaskProducer, task_name: str, queue: str,
    kwargs: dict[str, Any], reason: str,
) -> None:
    correlation_id = correlation()
    task_id = producer.enqueue(task_name, queue=queue, kwargs=kwargs,
                               correlation_id=correlation_id)
    assert producer.wait(task_id, timeout=DEADLINE).state == "FAILURE"

    mine = task_lines(stack, queue, task_id, ends)
    events = [line["event"] for line in mine]
    assert sorted(events) == ["task_failed", "task_received", "task_started"], events
    for line in mine:
        assert_context(line, task_id=task_id, task_name=task_name, queue=queue,
                       correlation_id=correlation_id)
    failed = next(line for line in mine if line["event"] == "task_failed")
    assert failed["level"] == "error"
    assert failed["exception_type"] == "PermanentTaskError"
    assert reason in failed["exception"]
    assert isinstance(failed["runtime_ms"], int | float)
    frames = failed["traceback"]
    assert isinstance(frames, list)
    assert frames, failed
    for frame in frames:
        assert set(frame) == {"file", "line", "function", "code"}, frame
        assert isinstance(frame["file"], str)
        assert isinstance(frame["line"], int)
        assert isinstance(frame["function"], str)
    # The innermost frame is where the task raised, in its queue's module.
    assert frames[-1]["file"].endswith(f"platform_tasks/tasks/{queue}.py"), frames[-1]
    # Celery's own "Task … raised expected/unexpected" line is not logged besides the event.
    assert other_lines_about(stack, queue, task_id) == []


# -- revoked ---------------------------------------------------------------------------------


def test_a_revoked_task_logs_task_revoked_once_and_never_starts(
    stack: DevStack, producer: TaskProducer
) -> None:
    correlation_id = correlation()
    # The worker receives it at once and holds it until the countdown is over.
    task_id = producer.enqueue(ADD, queue="default", args=[20, 22], countdown=3,
                               correlation_id=correlation_id)
    task_lines(stack, "default", task_id, lambda events: "task_received" in events)
    producer.revoke(task_id)
    assert producer.wait(task_id, timeout=DEADLINE).state == "REVOKED"

    # Logged when the countdown is over and the worker discards the task instead of running it.
    mine = task_lines(stack, "default", task_id, lambda events: "task_revoked" in events)
    events = [line["event"] for line in mine]
    assert sorted(events) == ["task_received", "task_revoked"], events
    for line in mine:
        assert_context(line, task_id=task_id, task_name=ADD, queue="default",
                       correlation_id=correlation_id)
    revoked = next(line for line in mine if line["event"] == "task_revoked")
    assert revoked["level"] == "warning"
    assert revoked["terminated"] is False
    assert revoked["expired"] is False
    # Celery's "Discarding revoked task" is gone; its control command's receipt stays, once
    # per worker that received the broadcast (each member of default's worker group).
    others = other_lines_about(stack, "default", task_id)
    assert [line["logger"] for line in others] == (
        ["celery.worker.control"] * policy_for("default").worker_nodes), others


# -- rejected --------------------------------------------------------------------------------


def publish_raw(producer: TaskProducer, body: Any, message_headers: dict[str, Any]) -> None:
    """Put a message on the default queue as another client would, bypassing every check."""
    with producer.app.producer_or_acquire() as publisher:
        publisher.publish(
            body, exchange="default", routing_key="default", serializer="json",
            headers=message_headers, retry=True, retry_policy=PUBLISH_RETRY_POLICY,
        )


def send_unregistered(producer: TaskProducer, task_id: str, correlation_id: str) -> None:
    producer.app.send_task(
        "platform_tasks.default.no_such_task", args=[1], queue="default", task_id=task_id,
        headers={headers.CORRELATION_ID: correlation_id},
    )


def send_bad_eta(producer: TaskProducer, task_id: str, correlation_id: str) -> None:
    publish_raw(
        producer,
        [[1, 2], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
        {"lang": "py", "task": ADD, "id": task_id, "root_id": task_id, "parent_id": None,
         "retries": 0, "eta": "not-a-date", headers.CORRELATION_ID: correlation_id},
    )


def send_not_a_task(producer: TaskProducer, task_id: str, correlation_id: str) -> None:
    # No task name anywhere: Celery deletes it as an unknown message.
    publish_raw(producer, {"hello": task_id},
                {"id": task_id, headers.CORRELATION_ID: correlation_id})


@pytest.mark.parametrize(
    ("send", "task_name", "reason"),
    [
        # Celery 5.7 sends task_unknown here, not task_rejected; the platform logs it as a
        # rejection all the same.
        (send_unregistered, "platform_tasks.default.no_such_task", "unregistered task"),
        # Celery's strategy raises InvalidTaskError: task_rejected.
        (send_bad_eta, ADD, "invalid ETA"),
        # Celery's consumer finds no task name: task_rejected without an exception.
        (send_not_a_task, None, "not a task message"),
    ],
    ids=["unregistered-name", "invalid-eta", "no-task-name"],
)
def test_a_message_no_worker_can_run_logs_task_rejected_once(
    stack: DevStack, producer: TaskProducer,
    send: Callable[[TaskProducer, str, str], None], task_name: str | None, reason: str,
) -> None:
    task_id = f"rejected-{uuid.uuid4().hex}"
    correlation_id = correlation()
    send(producer, task_id, correlation_id)

    [rejected] = wait_for_lines(
        stack.log_dir / "worker-default.log",
        lambda record: record.get("correlation_id") == correlation_id,
        lambda lines: any(line["event"] == "task_rejected" for line in lines),
        "task_rejected",
    )
    assert rejected["event"] == "task_rejected"
    assert rejected["level"] == "warning"
    assert rejected["task_id"] == task_id
    assert rejected["task_name"] == task_name
    assert rejected["queue"] == "default"
    assert queue_of_node(rejected["worker"]) == "default"
    assert reason in rejected["reason"]
    # Celery's own report of the message (with its body and a traceback) is not logged too.
    assert other_lines_about(stack, "default", task_id) == []


# -- context on every line -------------------------------------------------------------------


def test_every_line_inside_a_task_carries_its_context(
    stack: DevStack, producer: TaskProducer
) -> None:
    # The same welcome mail delivered twice under one task id, as a redelivery would: the
    # second run logs, from the task's own code (stdlib logging), that it does not resend.
    task_id = str(uuid.uuid4())
    correlation_id = correlation()
    address = f"context-{uuid.uuid4().hex[:8]}@example.com"
    for _ in range(2):
        producer.app.send_task(WELCOME, kwargs={"user_email": address}, queue="email",
                               task_id=task_id, headers={headers.CORRELATION_ID: correlation_id})
        assert producer.wait(task_id, timeout=DEADLINE).state == "SUCCESS"
        task_lines(stack, "email", task_id, lambda events: "task_succeeded" in events)
    mine = task_lines(stack, "email", task_id,
                      lambda events: events.count("task_succeeded") == 2)
    from_the_task = [line for line in mine if line["logger"] != "platform_tasks.task"]
    assert [line["logger"] for line in from_the_task] == ["platform_tasks.tasks._mail_once"]
    assert "not sending again" in from_the_task[0]["event"]
    for line in mine:
        assert_context(line, task_id=task_id, task_name=WELCOME, queue="email",
                       correlation_id=correlation_id)
        assert line["parent_id"] is None
        assert line["root_id"] == task_id

    # In a prefork child one task runs at a time: every line the child writes between the
    # task's start and its end belongs to it and carries its context.
    add_id = producer.enqueue(ADD, queue="default", args=[1, 2], correlation_id=correlation_id)
    assert producer.wait(add_id, timeout=DEADLINE).state == "SUCCESS"
    lines = task_lines(stack, "default", add_id, lambda events: "task_succeeded" in events)
    child = next(line["pid"] for line in lines if line["event"] == "task_started")
    everything = records(stack.log_dir / "worker-default.log")
    start = next(i for i, line in enumerate(everything)
                 if line.get("task_id") == add_id and line["event"] == "task_started")
    end = next(i for i, line in enumerate(everything)
               if line.get("task_id") == add_id and line["event"] == "task_succeeded")
    inside = [line for line in everything[start:end + 1] if line.get("pid") == child]
    assert len(inside) >= 2
    for line in inside:
        assert_context(line, task_id=add_id, task_name=ADD, queue="default",
                       correlation_id=correlation_id)


# -- correlation through canvases -------------------------------------------------------------


def canvas_lines(stack: DevStack, task_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    return {
        task_id: task_lines(stack, "default", task_id,
                            lambda events: "task_succeeded" in events)
        for task_id in task_ids
    }


def test_the_producers_correlation_id_reaches_every_task_of_a_chain(
    stack: DevStack, producer: TaskProducer
) -> None:
    correlation_id = correlation()
    add = producer.app.signature(ADD, queue="default")
    result = chain(add.clone(args=(1, 1)), add.clone(args=(2,)), add.clone(args=(3,))).apply_async(
        headers={headers.CORRELATION_ID: correlation_id}
    )
    assert producer.wait(result.id, timeout=DEADLINE).result == 7
    third, second, first = result.id, result.parent.id, result.parent.parent.id

    by_task = canvas_lines(stack, [first, second, third])
    expected_parent = {first: None, second: first, third: second}
    for task_id, lines in by_task.items():
        events = sorted(line["event"] for line in lines)
        assert events == ["task_received", "task_started", "task_succeeded"], events
        for line in lines:
            assert_context(line, task_id=task_id, task_name=ADD, queue="default",
                           correlation_id=correlation_id)
            assert line["parent_id"] == expected_parent[task_id], line
            assert line["root_id"] == first, line


def chord_ids(result: AsyncResult) -> tuple[str, list[str], str]:
    """The body's id, the header tasks' ids and the group's id of a chord's result."""
    group_result = result.parent
    return result.id, [child.id for child in group_result.results], group_result.id


def test_the_producers_correlation_id_reaches_every_task_of_a_chord(
    stack: DevStack, producer: TaskProducer
) -> None:
    correlation_id = correlation()
    add = producer.app.signature(ADD, queue="default")
    total = producer.app.signature(SUM, queue="default")
    result = chord([add.clone(args=(i, i)) for i in range(3)], total).apply_async(
        headers={headers.CORRELATION_ID: correlation_id}
    )
    # get(), not a poll: sending a chord subscribes this process to its header's results, and
    # get() drains them; left subscribed, their garbage collection after the session's stack
    # is gone would retry the dead broker for minutes.
    assert result.get(timeout=DEADLINE) == 6
    body, header, _ = chord_ids(result)

    by_task = canvas_lines(stack, [*header, body])
    for task_id, lines in by_task.items():
        name = SUM if task_id == body else ADD
        for line in lines:
            assert_context(line, task_id=task_id, task_name=name, queue="default",
                           correlation_id=correlation_id)
    # Celery's ids: a group sent from outside a task has no parent, and each member is its
    # own root; the body is sent by the header task that finished last, its parent.
    for task_id in header:
        for line in by_task[task_id]:
            assert line["parent_id"] is None, line
            assert line["root_id"] == task_id, line
    body_lines = by_task[body]
    parent = body_lines[0]["parent_id"]
    assert parent in header
    for line in body_lines:
        assert line["parent_id"] == parent, line
        assert line["root_id"] == by_task[parent][0]["root_id"], line


def test_a_chord_sent_without_a_correlation_id_shares_its_group_id(
    stack: DevStack, producer: TaskProducer
) -> None:
    add = producer.app.signature(ADD, queue="default")
    total = producer.app.signature(SUM, queue="default")
    result = chord([add.clone(args=(i, 1)) for i in range(3)], total)()
    # get(), not a poll: sending a chord subscribes this process to its header's results, and
    # get() drains them; left subscribed, their garbage collection after the session's stack
    # is gone would retry the dead broker for minutes.
    assert result.get(timeout=DEADLINE) == 6
    body, header, group_id = chord_ids(result)

    for task_id, lines in canvas_lines(stack, [*header, body]).items():
        assert {line["correlation_id"] for line in lines} == {group_id}, (task_id, lines)
