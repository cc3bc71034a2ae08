"""Names and files of a worker group's members, and the group's own supervision rules."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from platform_tasks.heartbeat import liveness_file, queue_of_node, worker_hostname
from platform_tasks.queues import QUEUES, policy_for
from platform_tasks.settings import load_settings
from platform_tasks.worker_group import MIN_STALE_SECONDS, WorkerGroup


@pytest.mark.parametrize(("node", "queue"), [
    ("default@pod-a", "default"),
    ("default-1@pod-a", "default"),
    ("default-12@pod-7", "default"),
    ("email@pod-1", "email"),
    ("my-queue@pod", "my-queue"),
    ("my-queue-3@pod", "my-queue"),
])
def test_a_node_name_says_its_queue(node: str, queue: str) -> None:
    assert queue_of_node(node) == queue


def test_members_are_named_after_their_queue_and_index() -> None:
    assert worker_hostname("default", "pod-a") == "default@pod-a"
    assert worker_hostname("default", "pod-a", 2) == "default-2@pod-a"
    assert queue_of_node(worker_hostname("default", "pod-a", 2)) == "default"


def test_each_member_has_its_own_liveness_file(tmp_path: Path) -> None:
    base = {"PLATFORM_TASKS_REDIS_URL": "redis://127.0.0.1:1/0"}
    settings = load_settings({**base, "PLATFORM_TASKS_HEARTBEAT_FILE": str(tmp_path / "w.alive")})
    assert liveness_file(settings, "default") == tmp_path / "w.alive"
    assert liveness_file(settings, "default", 1) == tmp_path / "w-1.alive"
    assert liveness_file(settings, "default", 2) == tmp_path / "w-2.alive"
    default = liveness_file(load_settings(base), "default", 1)
    assert default.name == "platform-tasks-default-1.alive"


def test_the_default_queue_runs_a_group_and_the_others_one_node() -> None:
    assert policy_for("default").pool == "solo"
    assert policy_for("default").worker_nodes == policy_for("default").concurrency == 2
    for name, policy in QUEUES.items():
        if name != "default":
            assert policy.worker_nodes == 1, name
    # Every pool but threads enforces the time limits (solo: platform_tasks.solo_limits).
    assert policy_for("default").enforces_time_limits
    assert not policy_for("email").enforces_time_limits


def test_a_group_has_two_members_at_least_and_a_generous_wedge_limit(tmp_path: Path) -> None:
    def argv(index: int) -> list[str]:
        return [sys.executable, "-c", "pass"]

    def files(index: int) -> Path:
        return tmp_path / f"{index}.alive"

    with pytest.raises(ValueError, match="at least two"):
        WorkerGroup("default", 1, argv, files, tmp_path / "g.alive", 3.0)
    group = WorkerGroup("default", 3, argv, files, tmp_path / "g.alive", 3.0)
    assert [member.index for member in group.members] == [1, 2, 3]
    assert group.stale_after_seconds == MIN_STALE_SECONDS
