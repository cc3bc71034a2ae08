"""The operator's command line against the running platform."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from platform_tasks.devstack.stack import DevStack


def platform_tasks(stack: DevStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "platform_tasks", *args],
        env=stack.env, capture_output=True, text=True, timeout=60, check=False,
    )


def test_enqueue_waits_for_and_prints_the_result(stack: DevStack) -> None:
    done = platform_tasks(stack, "enqueue", "platform_tasks.default.add_numbers",
                          "--queue", "default", "--args", "[20, 22]", "--wait", "30")
    assert done.returncode == 0, done.stderr
    task_id, status_line = done.stdout.strip().splitlines()
    status = json.loads(status_line)
    assert (status["task_id"], status["state"], status["result"]) == (task_id, "SUCCESS", 42)

    again = platform_tasks(stack, "status", task_id)
    assert json.loads(again.stdout)["result"] == 42


def test_waiting_for_a_task_that_fails_exits_1_with_its_status(stack: DevStack) -> None:
    done = platform_tasks(stack, "enqueue", "platform_tasks.email.send_welcome_email",
                          "--queue", "email", "--kwargs",
                          '{"user_email": "nobody@invalid.example.com"}', "--wait", "60")
    assert done.returncode == 1, done.stderr
    status = json.loads(done.stdout.strip().splitlines()[1])
    assert status["state"] == "FAILURE"


def test_a_refused_enqueue_exits_2_with_one_line(stack: DevStack) -> None:
    done = platform_tasks(stack, "enqueue", "platform_tasks.default.add_numbers",
                          "--queue", "nowhere", "--args", "[1, 2]")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "platform-tasks: refused: UnknownQueueError: unknown queue 'nowhere'; "
        "known queues: email, media, payments, default"
    )


def test_malformed_json_arguments_are_named(stack: DevStack) -> None:
    done = platform_tasks(stack, "enqueue", "platform_tasks.default.add_numbers",
                          "--queue", "default", "--args", "[1,")
    assert done.returncode == 2
    assert "--args is not valid JSON" in done.stderr


def test_a_bad_setting_exits_2_naming_the_variable(stack: DevStack) -> None:
    env = {**stack.env, "PLATFORM_TASKS_RESULT_DB": "sixteen"}
    done = subprocess.run([sys.executable, "-m", "platform_tasks", "queues"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("platform-tasks: configuration error: "
                                  "PLATFORM_TASKS_RESULT_DB: ")
    assert len(done.stderr.strip().splitlines()) == 1


def test_revoke_marks_a_waiting_task_revoked(stack: DevStack) -> None:
    enqueued = platform_tasks(stack, "enqueue", "platform_tasks.default.add_numbers",
                              "--queue", "default", "--args", "[1, 1]", "--countdown", "5")
    task_id = enqueued.stdout.strip()
    revoked = platform_tasks(stack, "revoke", task_id)
    assert (revoked.returncode, revoked.stdout.strip()) == (0, f"revoked {task_id}")
    deadline = time.monotonic() + 20  # past the countdown: it must not have run
    state = ""
    while time.monotonic() < deadline and state != "REVOKED":
        state = json.loads(platform_tasks(stack, "status", task_id).stdout)["state"]
    assert state == "REVOKED"


def test_queues_lists_every_queue(stack: DevStack) -> None:
    done = platform_tasks(stack, "queues", "--json")
    assert done.returncode == 0, done.stderr
    assert [row["queue"] for row in json.loads(done.stdout)] == [
        "email", "media", "payments", "default"
    ]
