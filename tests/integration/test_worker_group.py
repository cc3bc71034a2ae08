"""The `default` queue's worker group: single-loop members under one supervisor.

Real members (Celery workers, solo pool) on a Sentinel topology: both consume; one that dies
is replaced and counted; signals reach every member once; a SIGKILLed supervisor takes its
members with it; time limits hold in the solo pool as in prefork; a task that kills its
member every time is dead-lettered and the group carries on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import solo_limit_tasks as tasks
from worker_env import worker_env

from platform_tasks import dead_letters, keys, solo_limits
from platform_tasks.app import create_app
from platform_tasks.devstack.ports import free_port
from platform_tasks.devstack.processes import ManagedProcess
from platform_tasks.devstack.stack import worker_argv
from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.queues import policy_for
from platform_tasks.settings import Settings

pytestmark = pytest.mark.integration

VISIBILITY_TIMEOUT = 6
MAX_REDELIVERIES = 2
GROUP_SIZE = policy_for("default").concurrency


@pytest.fixture(scope="module", name="worker_env")
def worker_env_fixture(sentinel_topology: SentinelTopology,
                       tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return worker_env(
        sentinel_topology, visibility_timeout_seconds=str(VISIBILITY_TIMEOUT),
        max_redeliveries=str(MAX_REDELIVERIES),
        heartbeat_file=str(tmp_path_factory.mktemp("alive") / "default.alive"))


@pytest.fixture
def group(worker_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[ManagedProcess, int]]:
    """The default queue's worker as shipped (a group), serving /metrics on a free port."""
    port = free_port()
    process = ManagedProcess(
        "group", [*worker_argv("default"), "--include", "solo_limit_tasks"],
        {**worker_env, "PLATFORM_TASKS_METRICS_HOST": "127.0.0.1",
         "PLATFORM_TASKS_METRICS_PORT": str(port)},
        tmp_path / "group.log", cwd=tmp_path,
    )
    process.start()
    yield process, port
    process.stop(30)


def members(supervisor: ManagedProcess) -> list[int]:
    assert supervisor.pid is not None
    try:
        children = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children").read_text()
    except OSError:
        return []
    return [int(pid) for pid in children.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)
    return value


def events(broker: redis.Redis, marker: str) -> list[tuple[str, int]]:
    found = []
    for item in broker.lrange(tasks.events_key(marker), 0, -1):
        event, pid = str(item).rsplit(":", 1)
        found.append((event, int(pid)))
    return found


def send(settings: Settings, name: str, *args: Any) -> str:
    app = create_app(settings)
    try:
        return str(app.send_task(name, args=list(args), queue="default").id)
    finally:
        app.close()


def outcome(settings: Settings, task_id: str, timeout: float) -> tuple[str, Any]:
    app = create_app(settings)
    try:
        result = app.AsyncResult(task_id)
        result.get(timeout=timeout, propagate=False)
        return str(result.state), result.result
    finally:
        app.close()


def member_names(broker: redis.Redis) -> set[str]:
    return {str(name) for name in broker.zrange(keys.worker_heartbeats("default"), 0, -1)}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def process_starts(port: int) -> float:
    for line in scrape(port).splitlines():
        if line.startswith('platform_tasks_pool_process_starts_total{queue="default"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def health(worker_env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "platform_tasks", "health", "--queue",
                           "default", *extra], env=worker_env, capture_output=True, text=True,
                          timeout=30, check=False)


def test_both_members_consume_and_a_dead_one_is_replaced(
    settings: Settings, broker: redis.Redis, worker_env: dict[str, str],
    group: tuple[ManagedProcess, int],
) -> None:
    supervisor, port = group
    host = socket.gethostname()
    expected = {f"default-{index}@{host}" for index in range(1, GROUP_SIZE + 1)}
    wait_until(lambda: member_names(broker) >= expected, 60, "every member's heartbeat")
    assert health(worker_env).returncode == 0
    local = health(worker_env, "--local")
    assert local.returncode == 0, local.stderr

    marker = uuid.uuid4().hex
    for _ in range(40):
        send(settings, tasks.RECORD_PID, marker)
    wait_until(lambda: len(events(broker, marker)) == 40, 60, "40 tasks")
    pids = set(members(supervisor))
    assert len(pids) == GROUP_SIZE
    assert {pid for _, pid in events(broker, marker)} == pids

    wait_until(lambda: process_starts(port) == GROUP_SIZE, 30, "the members' starts counted")
    victim = sorted(pids)[0]
    os.kill(victim, signal.SIGKILL)
    replaced = wait_until(lambda: (set(members(supervisor)) - pids) or None, 30,
                          "a replacement member")
    assert len(replaced) == 1
    assert victim not in members(supervisor)
    wait_until(lambda: process_starts(port) == GROUP_SIZE + 1, 30, "the replacement counted")
    after = uuid.uuid4().hex
    send(settings, tasks.RECORD_PID, after)
    wait_until(lambda: events(broker, after), 30, "a task after the replacement")


def _blocked_waits(broker: redis.Redis) -> int:
    return sum(1 for client in broker.client_list() if client.get("cmd") == "blmove")


class _CommandLog:
    """The first word of every command the master runs (MONITOR), while it is open."""

    END = "end-of-command-log"

    def __init__(self, master: redis.Redis) -> None:
        self._master = master
        self.commands: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> _CommandLog:
        self._monitor = self._master.monitor().__enter__()
        self._thread.start()
        return self

    def _read(self) -> None:
        while True:
            command = self._monitor.next_command()
            if command["client_type"] == "lua":
                continue  # the fetch script's own RPOPs
            if self.END in command["command"]:
                return
            self.commands.append(command["command"].split(" ", 1)[0].upper())

    def __exit__(self, *_: object) -> None:
        self._master.echo(self.END)
        self._thread.join(10)
        self._monitor.__exit__()


def test_one_idle_member_wakes_per_message(
    settings: Settings, broker: redis.Redis, master: redis.Redis,
    group: tuple[ManagedProcess, int],
) -> None:
    """Each message wakes one idle member, not every member blocked on the queue: a wait
    that woke all of them cost each loser a wait and a fetch per message (for a group of
    N members, N-1 wasted round trips on the master for every message at light load)."""
    host = socket.gethostname()
    expected = {f"default-{index}@{host}" for index in range(1, GROUP_SIZE + 1)}
    wait_until(lambda: member_names(broker) >= expected, 60, "every member's heartbeat")
    wait_until(lambda: _blocked_waits(broker) == GROUP_SIZE, 30, "every member idle")
    marker = uuid.uuid4().hex
    messages = 30
    started = time.monotonic()
    with _CommandLog(master) as log:
        for index in range(messages):
            send(settings, tasks.RECORD_PID, marker)
            wait_until(lambda n=index + 1: len(events(broker, marker)) == n, 30, "the task")
            # Idle again, all of them, before the next message.
            wait_until(lambda: _blocked_waits(broker) == GROUP_SIZE, 30, "every member idle")
    elapsed = time.monotonic() - started
    waits = log.commands.count("BLMOVE")
    # One wait per message for the member it woke, plus the waits that ran out meanwhile
    # (each member's runs out once per 1 s poll timeout); waking every member added
    # GROUP_SIZE - 1 more per message.
    timed_out = GROUP_SIZE * (int(elapsed) + 2)
    assert messages <= waits <= messages + timed_out, (elapsed, log.commands)
    assert timed_out < messages * (GROUP_SIZE - 1), f"too slow to tell: {elapsed:.1f}s"


def test_tasks_a_task_enqueues_are_its_results_children(
    settings: Settings, group: tuple[ManagedProcess, int],
) -> None:
    """As with ``.delay()`` inside a task, the parent's result lists them."""
    parent_id = send(settings, tasks.ENQUEUES_CHILDREN)
    state, child_ids = outcome(settings, parent_id, 60)
    assert state == "SUCCESS", child_ids
    assert len(child_ids) == 3

    app = create_app(settings)
    try:
        parent = app.AsyncResult(parent_id)
        assert [child.id for child in parent.children] == child_ids
        for child_id in child_ids:
            child = app.AsyncResult(child_id)
            assert child.get(timeout=60) in (2, 4, 6)
    finally:
        app.close()


def test_sigterm_stops_every_member_and_the_group_exits_cleanly(
    broker: redis.Redis, group: tuple[ManagedProcess, int]
) -> None:
    supervisor, _ = group
    pids = wait_until(lambda: len(members(supervisor)) == GROUP_SIZE and members(supervisor),
                      60, "the members")
    wait_until(lambda: len(member_names(broker)) >= GROUP_SIZE, 60, "the heartbeats")
    assert supervisor.stop(40) == 0
    assert not any(alive(pid) for pid in pids)
    # Each member removed its heartbeat on the way out.
    wait_until(lambda: not member_names(broker), 10, "the heartbeats removed")


def test_members_do_not_outlive_a_killed_supervisor(group: tuple[ManagedProcess, int]) -> None:
    supervisor, _ = group
    pids = wait_until(lambda: len(members(supervisor)) == GROUP_SIZE and members(supervisor),
                      60, "the members")
    supervisor.kill(signal.SIGKILL)
    wait_until(lambda: not any(alive(pid) for pid in pids), 10, "the members to die with it")


def test_the_soft_limit_interrupts_a_task_that_can_clean_up(
    settings: Settings, broker: redis.Redis, group: tuple[ManagedProcess, int]
) -> None:
    marker = uuid.uuid4().hex
    task_id = send(settings, tasks.CLEANS_UP, marker)
    assert outcome(settings, task_id, 60) == ("SUCCESS", "cleaned up")
    assert [event for event, _ in events(broker, marker)] == ["started", "soft"]


def test_the_hard_limit_fails_a_task_that_ignores_the_soft_one(
    settings: Settings, broker: redis.Redis, group: tuple[ManagedProcess, int]
) -> None:
    supervisor, _ = group
    marker = uuid.uuid4().hex
    started = time.monotonic()
    task_id = send(settings, tasks.IGNORES_SOFT, marker)
    state, error = outcome(settings, task_id, 60)
    assert state == "FAILURE"
    assert type(error).__name__ == "TimeLimitExceeded", error
    assert time.monotonic() - started < tasks.HARD_LIMIT + 15
    assert [event for event, _ in events(broker, marker)] == ["started", "soft"]
    # The member that ran it goes on: nothing was replaced.
    [(_, pid)] = events(broker, marker)[:1]
    assert pid in members(supervisor)
    time.sleep(1)
    assert broker.hlen("unacked") == 0


def test_a_task_ignoring_both_limits_costs_its_member_and_runs_again(
    settings: Settings, broker: redis.Redis, group: tuple[ManagedProcess, int]
) -> None:
    supervisor, _ = group
    marker = uuid.uuid4().hex
    send(settings, tasks.IGNORES_BOTH, marker)
    wait_until(lambda: len([e for e, _ in events(broker, marker) if e == "started"]) >= 2,
               solo_limits.EXIT_GRACE_SECONDS + 6 * VISIBILITY_TIMEOUT, "the second delivery")
    seen = events(broker, marker)
    first_pid = seen[0][1]
    assert [event for event, _ in seen[:3]] == [
        "started", "SoftTimeLimitExceeded", "TimeLimitExceeded"]
    assert "finished" not in [event for event, _ in seen]
    assert not alive(first_pid)
    assert first_pid not in members(supervisor)
    log = supervisor.log_path.read_text()
    assert f"exited with status {solo_limits.EXIT_STATUS}" in log


def test_a_task_that_kills_its_member_every_time_is_dead_lettered(
    settings: Settings, broker: redis.Redis, group: tuple[ManagedProcess, int]
) -> None:
    marker = uuid.uuid4().hex
    task_id = send(settings, tasks.CRASH, marker)

    def dead_lettered() -> list[dict[str, Any]]:
        return [json.loads(item) for item in broker.lrange(keys.DEAD_LETTERS, 0, -1)
                if json.loads(item).get("task_id") == task_id]

    wait_until(dead_lettered, 90, "the dead letter")
    assert dead_lettered()[0]["reason"] == dead_letters.REDELIVERED_TOO_OFTEN
    assert len(events(broker, marker)) == 1 + MAX_REDELIVERIES
    follow_up = uuid.uuid4().hex
    send(settings, tasks.RECORD_PID, follow_up)
    wait_until(lambda: events(broker, follow_up), 30, "a task after the poison")
    with contextlib.suppress(Exception):
        broker.delete(tasks.events_key(marker))


def test_a_batch_waiting_behind_a_long_task_stays_with_its_member(
    settings: Settings, broker: redis.Redis, group: tuple[ManagedProcess, int]
) -> None:
    """A member fetches up to its prefetch at once and runs them one after the other; the
    ones waiting behind a task that outlasts the visibility timeout are refreshed as held,
    so the other member's sweep never hands them out a second time."""
    first, second, batch = (uuid.uuid4().hex for _ in range(3))
    send(settings, tasks.HOLDS, first, 0)
    wait_until(lambda: events(broker, first), 60, "one member busy")
    send(settings, tasks.HOLDS, second, 1)
    wait_until(lambda: events(broker, second), 30, "the other member busy")
    for index in range(4):
        send(settings, tasks.HOLDS, batch, index)
    wait_until(lambda: broker.llen("default") == 4, 10, "the batch waiting")
    # The first member is free: it takes the whole batch and runs its first task, which
    # holds on; the other three wait in that member behind it.
    broker.set(tasks.release_key(first), "1")
    wait_until(lambda: events(broker, batch), 30, "the batch's first task running")
    holder = events(broker, batch)[0][1]
    assert broker.llen("default") == 0
    broker.set(tasks.release_key(second), "1")  # the other member is idle, and sweeps
    time.sleep(3 * VISIBILITY_TIMEOUT)
    assert [event for event, _ in events(broker, batch)] == ["started-0"]
    broker.set(tasks.release_key(batch), "1")
    wait_until(lambda: len(events(broker, batch)) == 8, 30, "the batch run")
    seen = events(broker, batch)
    assert sorted(event for event, _ in seen) == sorted(
        [f"started-{index}" for index in range(4)] + [f"finished-{index}" for index in range(4)])
    assert {pid for _, pid in seen} == {holder}
