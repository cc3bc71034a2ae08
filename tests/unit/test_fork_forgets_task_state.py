"""A forked process (a prefork pool child) keeps none of its parent's per-task state.

The prefork parent logs every task_received and keeps the identity it read for the started
line; a child forked later must not take an earlier run's identity for a retry of the same
task, nor count its parent's running tasks in its in-flight gauge.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent(
    """
    import os, sys
    from platform_tasks.observability import task_context, worker_metrics

    task_context._received["t-1"] = ({"task_name": "x", "retries": 0}, "encoded")
    series = worker_metrics._series_of("default", "x")
    worker_metrics._running["t-2"] = (0.0, series)
    series.written_in_flight = 1
    pid = os.fork()
    if pid == 0:
        ok = (not task_context._received and not worker_metrics._running
              and series.written_in_flight == 0)
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert task_context._received and worker_metrics._running  # the parent keeps its own
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def test_a_forked_child_starts_without_its_parents_task_state() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                          timeout=60, check=False,
                          env={"PLATFORM_TASKS_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert done.returncode == 0, done.stdout + done.stderr


LOCKS_PROGRAM = textwrap.dedent(
    """
    import os, signal, sys
    from prometheus_client import Counter
    from platform_tasks.observability import metric_buffer

    counter = Counter("forked_total", "c", ("q",))
    buffered = metric_buffer.BufferedValue(counter.labels("a"))
    # As if the parent's flusher thread were inside a flush at the moment of the fork.
    metric_buffer._buffers_lock.acquire()
    buffered._lock.acquire()
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)  # a lock still held would hang the child here
        buffered.inc()
        metric_buffer.BufferedValue(counter.labels("b")).inc()
        metric_buffer.flush()
        os._exit(0)
    buffered._lock.release()
    metric_buffer._buffers_lock.release()
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def test_a_forked_child_is_not_stuck_on_a_lock_its_parents_flusher_held() -> None:
    done = subprocess.run([sys.executable, "-c", LOCKS_PROGRAM], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
