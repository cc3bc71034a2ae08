"""The local stack's process handling: logs, stopping by PID, and restarts of crashed children."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from platform_tasks.devstack.processes import ManagedProcess, Supervisor

PYTHON = sys.executable


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def said(process: ManagedProcess, line: str) -> bool:
    """Whether the process printed ``line`` (the log's header quotes the command, not a line)."""
    return line in process.log_path.read_text().splitlines()


@pytest.fixture
def started() -> Iterator[list[ManagedProcess]]:
    """Processes a test appends here are stopped afterwards, whatever the test did."""
    processes: list[ManagedProcess] = []
    yield processes
    for process in processes:
        process.stop(timeout=1.0)


def sleeper(tmp_path: Path, name: str = "sleeper", *, restart: bool = False) -> ManagedProcess:
    script = "import time; print('up', flush=True); time.sleep(60)"
    return ManagedProcess(
        name, [PYTHON, "-c", script], None, tmp_path / f"{name}.log", restart=restart
    )


def test_output_goes_to_the_log_file_and_stop_reaps_the_process(
    tmp_path: Path, started: list[ManagedProcess]
) -> None:
    process = sleeper(tmp_path)
    started.append(process)
    process.start()
    assert wait_until(lambda: said(process, "up"))

    status = process.stop(timeout=2.0)

    assert status == -signal.SIGTERM
    assert not process.alive


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout(
    tmp_path: Path, started: list[ManagedProcess]
) -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    process = ManagedProcess("stubborn", [PYTHON, "-c", script], None, tmp_path / "s.log")
    started.append(process)
    process.start()
    assert wait_until(lambda: said(process, "up"))

    began = time.monotonic()
    status = process.stop(timeout=0.5)

    assert status == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - began < 3.0


def test_the_supervisor_restarts_a_crashed_process_marked_restart(
    tmp_path: Path, started: list[ManagedProcess]
) -> None:
    process = sleeper(tmp_path, restart=True)
    started.append(process)
    supervisor = Supervisor(interval=0.02, backoff_start=0.1)
    process.start()
    supervisor.watch(process)
    supervisor.start()
    try:
        first_pid = process.pid
        process.kill(signal.SIGKILL)

        assert wait_until(lambda: process.alive and process.pid != first_pid)
        assert process.starts == 2
    finally:
        supervisor.stop()


def test_the_supervisor_leaves_stopped_and_unmarked_processes_alone(
    tmp_path: Path, started: list[ManagedProcess]
) -> None:
    stopped = sleeper(tmp_path, "stopped", restart=True)
    unmarked = sleeper(tmp_path, "unmarked")
    started.extend((stopped, unmarked))
    supervisor = Supervisor(interval=0.02, backoff_start=0.05)
    for process in (stopped, unmarked):
        process.start()
        supervisor.watch(process)
    supervisor.start()
    try:
        stopped.stop(timeout=2.0)
        unmarked.kill(signal.SIGKILL)
        time.sleep(0.3)

        assert not stopped.alive
        assert stopped.starts == 1
        assert not unmarked.alive
        assert unmarked.starts == 1
    finally:
        supervisor.stop()
