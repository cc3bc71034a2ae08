"""Log lines held back a moment so that several share one ``write(2)``.

A solo-pool worker writes three lifecycle lines per task, back to back on one thread: the
system call per line was a sizeable part of what logging costs a task. While holding is on,
``task_received`` and ``task_succeeded`` wait here and go out in the same write as the next
line; whatever is left is written when the consumer loop turns (a tick callback the
platform's transport registers), when the log handler flushes (every stdlib record,
``logging.shutdown``, exit) and before a fork. So a held line waits at most for the rest of
the batch of messages the loop is handling, and never behind a task that has started: a
task's ``task_started`` line is written, with what was held before it, before its body runs.

One write never carries more than ``PIPE_BUF`` bytes, the size Linux writes to a pipe
without interleaving it with another process's writes (a worker group's members share their
supervisor's stdout). Holding is for the solo pool only, where the loop that flushes is the
thread that logs; a forked child starts with holding off and nothing held.
"""

from __future__ import annotations

import os
import select
import threading

#: A write(2) of at most this many bytes to a pipe is never interleaved with another one.
ATOMIC_WRITE_BYTES = select.PIPE_BUF


class HeldLines:
    """The lines of one process waiting to be written, all to the same descriptor.

    Only the thread that turned holding on holds lines or flushes them (no lock on the path
    every line takes); another thread's lines are written at once, as without holding.
    """

    def __init__(self) -> None:
        self.enabled = False
        self._owner: int | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._fd = -1

    def take(self, fd: int, data: bytes, hold: bool) -> list[bytes]:
        """What to write to ``fd`` now, in order, for one more line ``data``.

        ``data`` is held instead when ``hold`` is set and it fits with what is held already.
        """
        if threading.get_ident() != self._owner:
            return [data]
        size = self._size + len(data)
        if fd == self._fd and size <= ATOMIC_WRITE_BYTES:
            # The usual case, written out: the line joins what is held, and goes out with it
            # unless it is held too.
            if hold:
                self._chunks.append(data)
                self._size += len(data)  # not ``size``: a handler may have held a line since
                return []
            chunks, self._chunks = self._chunks, []
            self._size = 0
            if not chunks:
                return [data]
            chunks.append(data)
            return [b"".join(chunks)]
        out = self._drain() if fd != self._fd else []
        self._fd = fd
        if self._size + len(data) > ATOMIC_WRITE_BYTES:
            out.extend(self._drain())
        self._chunks.append(data)
        self._size += len(data)
        if not hold:
            out.extend(self._drain())
        return out

    def add(self, fd: int, data: bytes, hold: bool) -> bytes | None:
        """:meth:`take` for the usual line, in one step: None when ``data`` is held, else the
        one write to make now (what was held, then ``data``). Empty bytes when this line is
        not the usual case (another thread or descriptor, or too long to join what is held):
        the caller then goes through :meth:`take`."""
        if (fd != self._fd or self._size + len(data) > ATOMIC_WRITE_BYTES
                or threading.get_ident() != self._owner):
            return b""
        # As in take(): a signal handler that logs may run between any two steps here.
        if hold:
            self._chunks.append(data)
            self._size += len(data)
            return None
        chunks, self._chunks = self._chunks, []
        self._size = 0
        if not chunks:
            return data
        chunks.append(data)
        return b"".join(chunks)

    def take_all(self) -> tuple[int, list[bytes]]:
        """The descriptor and the writes for everything held (none when nothing is, or
        when called from another thread than the holding one)."""
        if threading.get_ident() != self._owner:
            return self._fd, []
        return self._fd, self._drain()

    def _drain(self) -> list[bytes]:
        # Taken in one step: a signal handler that logs (the solo pool's time limits) may
        # run between any two lines here, and must not write the same chunks again.
        chunks, self._chunks = self._chunks, []
        self._size = 0
        if not chunks:
            return []
        return [b"".join(chunks) if len(chunks) > 1 else chunks[0]]

    def hold_on_this_thread(self) -> None:
        self._owner = threading.get_ident()
        self.enabled = True

    def forget(self) -> None:
        """Drop everything held and stop holding: a forked child's copy is its parent's."""
        self.enabled = False
        self._owner = None
        self._chunks = []
        self._size = 0
        self._fd = -1


HELD = HeldLines()


def write_all(fd: int, data: bytes) -> None:
    """Write ``data`` whole, through partial writes (a signal, a slow pipe)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def flush() -> None:
    """Write everything held now. Errors are swallowed: a log line must not fail its caller."""
    if not HELD._chunks:
        return
    fd, writes = HELD.take_all()
    for data in writes:
        try:
            write_all(fd, data)
        except OSError:
            return


def enable() -> None:
    """Hold lifecycle lines logged on this thread: the solo pool's consumer loop, which
    flushes them every turn."""
    HELD.hold_on_this_thread()


# Lines held before a fork are the parent's to write; the child must not write them again.
os.register_at_fork(before=flush, after_in_child=HELD.forget)
