"""The local stack runs the platform: the demo's tasks all finish, and beat survives a crash."""

from __future__ import annotations

import io
import signal
import time
from typing import Any

import pytest

from platform_tasks.devstack.demo import run_demo
from platform_tasks.devstack.stack import DevStack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dev_stack_options() -> dict[str, Any]:
    return {"beat": True}


def test_the_demo_finishes_as_expected_and_prints_each_transition(dev_stack: DevStack) -> None:
    out = io.StringIO()

    assert run_demo(dev_stack.settings(), out, timeout=60.0), out.getvalue()

    printed = out.getvalue()
    assert "-> SUCCESS  result=21" in printed  # the chord's body summed its header
    assert "-> REVOKED" in printed
    assert "demo finished as expected" in printed
    assert (dev_stack.media_root / "demo" / "sample.png").is_file()


def test_the_stack_settings_point_at_its_own_sentinels(dev_stack: DevStack) -> None:
    settings = dev_stack.settings()

    assert [tuple(a) for a in settings.sentinels] == dev_stack.topology.sentinel_addresses
    assert settings.media_root == dev_stack.media_root
    assert all(a.host == "127.0.0.1" for a in settings.sentinels)


def test_a_crashed_beat_is_started_again(dev_stack: DevStack) -> None:
    beat = dev_stack.processes["beat"]
    first_pid = beat.pid

    beat.kill(signal.SIGKILL)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (beat.alive and beat.pid != first_pid):
        time.sleep(0.05)
    assert beat.alive
    assert beat.pid != first_pid
