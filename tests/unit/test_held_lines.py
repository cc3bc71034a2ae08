"""Held lifecycle lines: they share writes, keep their order and are never lost or repeated.

Each program runs in a fresh interpreter with the JSON pipeline writing to a pipe or a file,
so what is checked is what reached the descriptor, write by write where it matters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from platform_tasks.observability.held_lines import ATOMIC_WRITE_BYTES, HeldLines

ENV = {"PLATFORM_TASKS_REDIS_URL": "redis://127.0.0.1:1/0", "PLATFORM_TASKS_LOG_FORMAT": "json",
       "PATH": os.environ.get("PATH", "")}

SETUP = textwrap.dedent(
    """
    import logging, os, sys
    from platform_tasks.observability import held_lines
    from platform_tasks.observability.logging import SplicedLine, configure_logging
    from platform_tasks.settings import load_settings

    out = open(sys.argv[1], "w")
    configure_logging(load_settings(), process="worker", stream=out)
    held_lines.enable()
    fd = out.fileno()

    def line(event, hold):
        assert SplicedLine("platform_tasks.task", "info", event,
                           frozenset({"task_id"})).write('"task_id": "t"', hold=hold)

    def size():
        return os.fstat(fd).st_size
    """
)


def run(program: str, tmp_path: Path) -> list[dict[str, object]]:
    log = tmp_path / "out.log"
    done = subprocess.run([sys.executable, "-c", SETUP + textwrap.dedent(program), str(log)],
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [json.loads(text) for text in log.read_text().splitlines()]


def test_a_held_line_goes_out_in_the_same_write_as_the_next_one(tmp_path: Path) -> None:
    lines = run(
        """
        line("task_received", hold=True)
        assert size() == 0, "the received line was written on its own"
        line("task_started", hold=False)
        assert size() > 0
        """,
        tmp_path,
    )
    assert [entry["event"] for entry in lines] == ["task_received", "task_started"]


def test_what_is_held_is_written_when_the_loop_flushes(tmp_path: Path) -> None:
    lines = run(
        """
        line("task_succeeded", hold=True)
        assert size() == 0
        held_lines.flush()
        assert size() > 0
        held_lines.flush()  # nothing left: nothing written twice
        """,
        tmp_path,
    )
    assert [entry["event"] for entry in lines] == ["task_succeeded"]


def test_a_stdlib_record_comes_after_the_lines_held_before_it(tmp_path: Path) -> None:
    lines = run(
        """
        line("task_succeeded", hold=True)
        logging.getLogger("celery.worker").warning("a warning of Celery's")
        """,
        tmp_path,
    )
    assert [entry["event"] for entry in lines] == ["task_succeeded", "a warning of Celery's"]


def test_held_lines_are_written_at_exit(tmp_path: Path) -> None:
    lines = run('line("task_succeeded", hold=True)\n', tmp_path)
    assert [entry["event"] for entry in lines] == ["task_succeeded"]


def test_a_forked_child_does_not_write_its_parents_held_lines(tmp_path: Path) -> None:
    lines = run(
        """
        line("task_succeeded", hold=True)
        pid = os.fork()
        if pid == 0:
            line("in_child", hold=True)  # holding is off in the child: written at once
            os._exit(0)
        os.waitpid(pid, 0)
        line("in_parent", hold=False)
        """,
        tmp_path,
    )
    events = [entry["event"] for entry in lines]
    assert sorted(events) == ["in_child", "in_parent", "task_succeeded"]
    assert events.index("task_succeeded") < events.index("in_parent")


def test_another_thread_writes_at_once_and_flushes_nothing_of_the_loops(tmp_path: Path) -> None:
    lines = run(
        """
        import threading
        line("task_succeeded", hold=True)
        def other():
            line("from_thread", hold=True)
            held_lines.flush()
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert size() > 0
        first = open(sys.argv[1]).read()
        assert "from_thread" in first and "task_succeeded" not in first
        """,
        tmp_path,
    )
    assert [entry["event"] for entry in lines] == ["from_thread", "task_succeeded"]


def test_no_write_is_larger_than_a_pipe_writes_whole() -> None:
    held = HeldLines()
    held.hold_on_this_thread()
    line = b"x" * 999 + b"\n"
    writes: list[bytes] = []
    for _ in range(20):
        writes += held.take(7, line, hold=True)
    writes += held.take_all()[1]
    assert b"".join(writes) == line * 20
    assert all(len(write) <= ATOMIC_WRITE_BYTES for write in writes)
    assert all(write.endswith(b"\n") for write in writes)


def test_a_line_for_another_descriptor_sends_the_held_ones_first() -> None:
    held = HeldLines()
    held.hold_on_this_thread()
    assert held.take(3, b"a\n", hold=True) == []
    assert held.take(4, b"b\n", hold=True) == [b"a\n"]
    assert held.take_all() == (4, [b"b\n"])


def test_a_line_not_held_goes_out_with_what_was_held_then_alone() -> None:
    held = HeldLines()
    held.hold_on_this_thread()
    assert held.take(3, b"a\n", hold=True) == []
    assert held.take(3, b"b\n", hold=True) == []
    assert held.take(3, b"c\n", hold=False) == [b"a\nb\nc\n"]
    assert held.take(3, b"d\n", hold=False) == [b"d\n"]
    assert held.take_all() == (3, [])


def test_add_is_take_for_the_usual_line_and_declines_the_rest() -> None:
    held = HeldLines()
    held.hold_on_this_thread()
    assert held.add(3, b"a\n", hold=True) == b""  # no descriptor yet: take() sets it
    assert held.take(3, b"a\n", hold=True) == []
    assert held.add(3, b"b\n", hold=True) is None
    assert held.add(3, b"c\n", hold=False) == b"a\nb\nc\n"
    assert held.add(3, b"d\n", hold=False) == b"d\n"
    assert held.add(4, b"e\n", hold=True) == b""  # another descriptor
    long_line = b"x" * (ATOMIC_WRITE_BYTES - 2) + b"\n"
    assert held.add(3, b"f\n", hold=True) is None
    assert held.add(3, long_line, hold=True) == b""  # would not fit with what is held
    assert held.take_all() == (3, [b"f\n"])

    other = HeldLines()  # holding on another thread
    other.hold_on_this_thread()
    other.take(3, b"g\n", hold=True)
    other._owner = -1
    assert other.add(3, b"h\n", hold=True) == b""
