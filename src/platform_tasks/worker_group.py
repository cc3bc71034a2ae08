"""One queue's worker as several single-loop processes under a small supervisor.

A prefork worker's parent process fetches every message, hands it to a pool process over a
pipe, reads the result back and acknowledges it: on short tasks that parent is the
bottleneck (about half the throughput of the same cores running the tasks directly, see
``docs/benchmarks.md``). A queue whose policy says ``solo`` with a concurrency of N runs N
Celery workers with the solo pool instead, each fetching, running and acknowledging on its own
loop. This module is their supervisor, the container's main process:

- starts the members (``platform-tasks worker --member I``, node name ``<queue>-I@<host>``),
  each in its own session so a terminal's Ctrl-C reaches them once, through here;
- forwards SIGTERM (warm shutdown), SIGINT and SIGQUIT to every member and exits when they all
  have, with the first non-zero status among them;
- starts a member again when it exits on its own (a crash, the hard time limit's last resort,
  an out-of-memory kill), after 1 s doubling to 30 s while it keeps failing fast;
- replaces a member whose liveness file stopped moving (a task holding the interpreter in C
  code) and keeps the pod's own liveness file fresh while it runs;
- serves ``/metrics`` for the whole group from the shared multiprocess directory.

Each member asks the kernel to kill it if the supervisor dies, so nothing outlives the pod's
main process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)

FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
#: A member that ran this long before exiting is restarted after the first delay again.
STABLE_AFTER_SECONDS = 60.0
TICK_SECONDS = 0.5
#: A member's liveness file may lag by a blocked Redis call (the beat thread touches it
#: between writes to Redis), so a member is replaced only after this long at the least.
MIN_STALE_SECONDS = 60.0
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


@dataclass
class Member:
    """One solo-pool worker process of the group and its restart bookkeeping."""

    index: int
    liveness_file: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_delay: float = FIRST_RESTART_DELAY
    start_due: float = 0.0
    exit_statuses: list[int] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _last_beat(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


class WorkerGroup:
    """Runs ``size`` members until a forwarded signal stops them all."""

    def __init__(
        self,
        queue: str,
        size: int,
        argv_for: Callable[[int], Sequence[str]],
        liveness_file_for: Callable[[int], Path],
        group_liveness_file: Path,
        stale_after_seconds: float,
    ) -> None:
        if size < 2:
            raise ValueError("a worker group needs at least two members")
        self.queue = queue
        self.argv_for = argv_for
        self.group_liveness_file = group_liveness_file
        self.stale_after_seconds = max(stale_after_seconds, MIN_STALE_SECONDS)
        self.members = [Member(index, liveness_file_for(index)) for index in range(1, size + 1)]
        self._stop_signal: int | None = None
        self._wake = threading.Event()

    # -- signals -------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_signal is None:
            logger.info("worker group of %s: %s received, stopping %d processes", self.queue,
                        signal.Signals(signum).name, len(self.members))
        self._stop_signal = signum
        self._forward(signum)
        self._wake.set()

    def _forward(self, signum: int) -> None:
        for member in self.members:
            if member.running and member.process is not None:
                member.process.send_signal(signum)

    # -- members -------------------------------------------------------------------------

    def _start(self, member: Member) -> None:
        with contextlib.suppress(OSError):
            member.liveness_file.unlink(missing_ok=True)
        member.process = subprocess.Popen(list(self.argv_for(member.index)),
                                          start_new_session=True)
        member.started_at = time.monotonic()
        logger.info("worker group of %s: member %d started (pid %d)", self.queue,
                    member.index, member.process.pid)

    def _reap(self, member: Member, now: float) -> None:
        assert member.process is not None
        status = member.process.returncode
        member.exit_statuses.append(status)
        member.process = None
        if self._stop_signal is not None:
            return
        lived = now - member.started_at
        if lived >= STABLE_AFTER_SECONDS:
            member.restart_delay = FIRST_RESTART_DELAY
        member.start_due = now + member.restart_delay
        logger.error("worker group of %s: member %d exited with status %d after %.1fs; "
                     "starting it again in %.0fs", self.queue, member.index, status, lived,
                     member.restart_delay)
        member.restart_delay = min(member.restart_delay * 2, MAX_RESTART_DELAY)

    def _replace_if_wedged(self, member: Member) -> None:
        """SIGKILL a member whose liveness file, once written this run, stopped moving."""
        assert member.process is not None
        beat = _last_beat(member.liveness_file)
        if beat is None:
            # Not consuming yet (start-up, or the broker is down): the startup and readiness
            # probes judge that, not a restart.
            return
        age = time.time() - beat
        if age <= self.stale_after_seconds:
            return
        logger.error("worker group of %s: member %d (pid %d) last beat %.0fs ago; killing it "
                     "to start a fresh one", self.queue, member.index, member.process.pid, age)
        member.process.kill()

    def _touch_group_liveness(self) -> None:
        try:
            temporary = self.group_liveness_file.with_name(
                self.group_liveness_file.name + ".tmp")
            temporary.write_text(f"{time.time():.3f}\n")
            temporary.replace(self.group_liveness_file)
        except OSError as error:
            logger.warning("liveness file %s not written: %s", self.group_liveness_file, error)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until stopped; the first non-zero member exit status after that, else 0."""
        previous = {signum: signal.signal(signum, self._on_signal) for signum in _FORWARDED}
        try:
            logger.info("worker group of %s: %d single-loop processes", self.queue,
                        len(self.members))
            for member in self.members:
                self._start(member)
            while True:
                now = time.monotonic()
                for member in self.members:
                    if member.process is not None and member.process.poll() is not None:
                        self._reap(member, now)
                    if self._stop_signal is not None:
                        continue
                    if member.process is None and now >= member.start_due:
                        self._start(member)
                    elif member.process is not None:
                        self._replace_if_wedged(member)
                if self._stop_signal is not None and not any(m.running for m in self.members):
                    break
                if self._stop_signal is None:
                    self._touch_group_liveness()
                self._wake.wait(TICK_SECONDS)
                self._wake.clear()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        statuses = [m.exit_statuses[-1] for m in self.members if m.exit_statuses]
        # Celery exits with 0 after a warm shutdown; a negative status is a signal's number.
        return next((status for status in statuses if status != 0), 0)


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent exits; exit now if it already has."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        logger.warning("cannot ask to die with the worker group's supervisor (not Linux?)")
    if os.getppid() != parent_pid:
        os._exit(1)
