"""Per-task metric updates kept in memory and written to prometheus-client once a second.

In multiprocess mode every ``inc()`` or ``observe()`` takes a lock and writes one or two
values into a memory-mapped file; a task made six such writes (in flight up and down, its
wait and its runtime observed), a third of what its metrics cost. Here the hot series add to
plain numbers, and a daemon thread per process applies the sums once a second (and at exit),
so a scrape sees a finished task at most a second later. A process killed outright (SIGKILL,
the OOM killer) loses at most its last second of counts.

Only the labelled children of the per-task series are buffered; rare events (retries,
failures, dead letters) still write at once.
"""

from __future__ import annotations

import atexit
import bisect
import os
import threading
from collections.abc import Callable
from typing import Any

#: Seconds between two writes of the buffered sums.
FLUSH_INTERVAL_SECONDS = 1.0


class BufferedValue:
    """A counter's or gauge's labelled child whose increments wait for the next flush."""

    def __init__(self, child: Any) -> None:
        self._child = child
        self._pending = 0.0
        self._lock = threading.Lock()
        _register(self)

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._pending += amount

    def dec(self, amount: float = 1.0) -> None:
        with self._lock:
            self._pending -= amount

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, 0.0
        if pending:
            self._child.inc(pending)

    def forget(self) -> None:
        """Drop what is pending (a forked child: those counts are its parent's)."""
        with self._lock:
            self._pending = 0.0


class BufferedHistogram:
    """A histogram's labelled child whose observations wait for the next flush.

    Writes prometheus-client's own bucket and sum values (``_upper_bounds``, ``_buckets``,
    ``_sum``: what ``Histogram.observe`` writes); a unit test checks the result is what
    observing directly gives.
    """

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._lock = threading.Lock()
        _register(self)

    def observe(self, amount: float) -> None:
        # The first bucket whose upper bound is >= amount, as observe() picks it.
        index = bisect.bisect_left(self._bounds, amount)
        with self._lock:
            self._sum += amount
            if index < len(self._counts):
                self._counts[index] += 1

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, [0] * len(self._bounds)
            total, self._sum = self._sum, 0.0
        if not any(counts):
            return
        self._child._sum.inc(total)
        for index, count in enumerate(counts):
            if count:
                self._child._buckets[index].inc(count)

    def forget(self) -> None:
        with self._lock:
            self._counts = [0] * len(self._bounds)
            self._sum = 0.0


_buffers: list[BufferedValue | BufferedHistogram] = []
_buffers_lock = threading.Lock()
_flusher_pid: int | None = None
_stop = threading.Event()


def _register(buffer: BufferedValue | BufferedHistogram) -> None:
    with _buffers_lock:
        _buffers.append(buffer)
    _ensure_flusher()


#: Called first by every flush: metrics computed from state once a second.
_flush_hooks: list[Callable[[], None]] = []


def before_each_flush(hook: Callable[[], None]) -> None:
    """Run ``hook`` at every flush: once a second from the first buffered update of this
    process (or of a process it forks) on, and at exit.

    Registering starts no thread: a prefork pool's main process records nothing buffered,
    and a thread running there at a fork could leave a lock held in the child.
    """
    if hook not in _flush_hooks:
        _flush_hooks.append(hook)


def flush() -> None:
    """Write every pending sum now (the flusher does it once a second, and at exit)."""
    with _buffers_lock:
        buffers = list(_buffers)
    for work in [*_flush_hooks, *(buffer.flush for buffer in buffers)]:
        try:
            work()
        except Exception:  # a metric must never break the worker; the next flush retries
            import logging

            logging.getLogger(__name__).warning("could not write buffered metrics",
                                                exc_info=True)


def _run() -> None:
    while not _stop.wait(FLUSH_INTERVAL_SECONDS):
        flush()


def _ensure_flusher() -> None:
    global _flusher_pid
    if _flusher_pid == os.getpid():
        return
    _flusher_pid = os.getpid()
    threading.Thread(target=_run, name="platform-tasks-metrics-flush", daemon=True).start()


def _after_fork_in_child() -> None:
    # The parent writes what it had pending; the child starts from nothing, and starts its
    # own flusher at its first update (threads do not survive a fork). A lock the parent's
    # flusher held at the fork would stay held here: every one is made anew.
    global _flusher_pid, _buffers_lock
    _flusher_pid = None
    _buffers_lock = threading.Lock()
    for buffer in _buffers:
        buffer._lock = threading.Lock()
        buffer.forget()
    if _buffers:
        _ensure_flusher()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(flush)
