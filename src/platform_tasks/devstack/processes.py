"""Child processes of the local stack: started, logged, stopped and, if asked, restarted.

Only processes started here are ever signalled, by the PID this module got from ``Popen``;
nothing is looked up or killed by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO


class ManagedProcess:
    """One child process whose output goes to ``log_path``.

    It runs in a session of its own, so the Ctrl-C a terminal sends to its foreground process
    group reaches only the parent, which then stops each child once, in order.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        log_path: Path,
        *,
        restart: bool = False,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.log_path = log_path
        self.restart = restart
        self.cwd = cwd
        self.starts = 0
        self.started_at: float | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._wanted = False
        self._terminating = False
        # The supervisor thread and the owner may start/stop the same process concurrently.
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, alive={self.alive})"

    @property
    def pid(self) -> int | None:
        """PID of the current (or last) run, ``None`` before the first start."""
        return self._popen.pid if self._popen is not None else None

    @property
    def alive(self) -> bool:
        """Whether the current run has not exited yet (an exited run is reaped here)."""
        with self._lock:
            return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last run, ``None`` while it runs or before it started."""
        with self._lock:
            return None if self._popen is None else self._popen.poll()

    @property
    def wanted(self) -> bool:
        """Started and not stopped by its owner: an exit now is unexpected."""
        return self._wanted

    def start(self, extra_argv: Sequence[str] = ()) -> None:
        """Start a run; a no-op while one is alive. ``extra_argv`` applies to this run only."""
        with self._lock:
            if self.alive:
                return
            self._close_log()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            # Append, so the log of a restarted process keeps what its previous run said.
            self._log = self.log_path.open("ab")
            argv = [*self.argv, *extra_argv]
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
            previous = "" if self._popen is None else f" (last run exited {self._popen.poll()})"
            self._log.write(
                f"--- {stamp} start #{self.starts + 1}{previous}: {' '.join(argv)}\n".encode()
            )
            self._log.flush()
            self._popen = subprocess.Popen(
                argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.starts += 1
            self.started_at = time.monotonic()
            self._wanted = True
            self._terminating = False

    def restart_if_wanted(self) -> bool:
        """Start a new run if the last one exited while still wanted; whether it did."""
        with self._lock:
            if not self._wanted or self.alive:
                return False
            self.start()
            return True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process (not its group); it stays 'wanted', as a crash would."""
        with self._lock:
            if self._popen is not None and self._popen.poll() is None:
                self._popen.send_signal(sig)

    def terminate(self) -> None:
        """Ask the process to exit (SIGTERM, once per run) without waiting; see :meth:`stop`."""
        with self._lock:
            self._wanted = False
            if self._popen is not None and not self._terminating and self._popen.poll() is None:
                # Once per run, so a stop() after terminate() waits instead of repeating it.
                self._popen.send_signal(signal.SIGTERM)
                self._terminating = True

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the current run to exit; its status or ``None``."""
        popen = self._popen
        if popen is None:
            return None
        try:
            return popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait ``timeout`` seconds, then SIGKILL; reaps the process. Its exit status."""
        with self._lock:
            self.terminate()
            popen = self._popen
            if popen is None:
                return None
            if popen.poll() is None:
                try:
                    popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    # The group is this child's own session; while the unreaped leader holds
                    # the PID, the group id cannot belong to anyone else. Killing the group
                    # also takes pool children a hung worker would otherwise orphan.
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(popen.pid, signal.SIGKILL)
                    popen.wait()
            self._close_log()
            return popen.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class _RestartState:
    delay: float
    due: float | None = None


class Supervisor:
    """A thread that restarts ``restart=True`` processes that exit while still wanted.

    Beat exits by design when a Sentinel failover breaks its lock; this brings it back the way
    Kubernetes would, after a delay that doubles on each quick crash.
    """

    def __init__(
        self,
        *,
        interval: float = 0.2,
        backoff_start: float = 0.5,
        backoff_max: float = 10.0,
        healthy_after: float = 30.0,
    ) -> None:
        self.interval = interval
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.healthy_after = healthy_after
        self._processes: dict[str, tuple[ManagedProcess, _RestartState]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, process: ManagedProcess) -> None:
        """Look after ``process`` from now on (only if it was made with ``restart=True``)."""
        if process.restart:
            with self._lock:
                self._processes[process.name] = (process, _RestartState(self.backoff_start))

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._run, name="devstack-supervisor", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop restarting; the processes themselves are left to their owner to stop."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            with self._lock:
                watched = list(self._processes.values())
            for process, state in watched:
                self._check(process, state)

    def _check(self, process: ManagedProcess, state: _RestartState) -> None:
        if not process.wanted or process.alive:
            return
        now = time.monotonic()
        if state.due is None:
            ran_for = now - (process.started_at or now)
            if ran_for >= self.healthy_after:
                state.delay = self.backoff_start
            state.due = now + state.delay
            state.delay = min(state.delay * 2, self.backoff_max)
            return
        if now >= state.due:
            state.due = None
            if not self._stopping.is_set():
                # Checked again under the process's lock: a stop() in between wins.
                process.restart_if_wanted()
