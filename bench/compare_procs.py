"""Processes for ``bench/compare.py``: a plain Redis, worker groups, and what /proc says of them.

Every process here is a :class:`ManagedProcess` started by the harness; it is stopped by its
own PID (and, if it hangs, its own process group), never looked up by name.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from platform_tasks.devstack.ports import LOOPBACK, free_port
from platform_tasks.devstack.processes import ManagedProcess
from platform_tasks.devstack.redis_binary import find_redis_server

#: Seconds a worker gets for its warm shutdown, after its measurement, before its process
#: group is killed. The measurement is over and Redis is emptied after it, so waiting longer
#: would measure nothing; and a Celery worker (the platform's or the seed's) now and then
#: takes 20-30 s to exit after SIGTERM (see docs/benchmarks.md).
STOP_GRACE = 5.0
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class HarnessError(RuntimeError):
    """A system under test did not do what the harness waited for."""


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The harness's environment without ``PLATFORM_TASKS_*`` (a developer's own settings
    would point a worker elsewhere), plus ``extra``."""
    inherited = {key: value for key, value in os.environ.items()
                 if not key.startswith("PLATFORM_TASKS_")}
    return {**inherited, "PYTHONUNBUFFERED": "1", **extra}


class PlainRedis:
    """One ``redis-server`` on a free loopback port with no persistence: the Redis the
    tutorials of Celery, Dramatiq and RQ start with (``redis-server`` and its defaults, minus
    snapshots that would pause it in the middle of a timing)."""

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        binary = find_redis_server().absolute()
        argv = [str(binary), "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(run_dir)]
        self.process = ManagedProcess("plain-redis", argv, None, run_dir / "plain-redis.log",
                                      cwd=run_dir)

    def url(self, db: int) -> str:
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    def client(self, db: int) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, db=db)

    def start(self) -> None:
        self.process.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                with self.client(0) as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if not self.process.alive or time.monotonic() > deadline:
                    raise HarnessError(
                        f"plain redis-server did not start; see {self.process.log_path}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.stop(10)


@dataclass
class Workers:
    """The worker processes of one system for one measurement."""

    name: str
    processes: list[ManagedProcess] = field(default_factory=list)

    def start(self) -> None:
        for process in self.processes:
            process.start()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM to all first, so their warm shutdowns overlap; then wait up to ``grace``
        seconds for each before its process group is killed (and say so on stderr)."""
        for process in self.processes:
            process.terminate()
        deadline = time.monotonic() + grace
        for process in self.processes:
            if process.wait(max(0.0, deadline - time.monotonic())) is None:
                print(f"note: {process.name} still running {grace:g}s after SIGTERM; killed",
                      file=sys.stderr, flush=True)
            process.stop(0)

    def check_alive(self) -> None:
        for process in self.processes:
            if not process.alive:
                raise HarnessError(f"{process.name} exited with {process.returncode}; "
                                   f"see {process.log_path}")

    @property
    def log_paths(self) -> list[Path]:
        return [process.log_path for process in self.processes]

    def rss_bytes(self) -> list[int]:
        """Resident memory of every process of these workers: each main process and all
        its descendants (pool children, Dramatiq's worker processes)."""
        sizes: list[int] = []
        for process in self.processes:
            if process.pid is not None:
                sizes.extend(_rss(pid) for pid in process_tree(process.pid))
        return [size for size in sizes if size > 0]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc (parents before children)."""
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            children = []
        found.extend(int(child) for child in children)
        index += 1
    return found


def _rss(pid: int) -> int:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * _PAGE_SIZE


def wait_for(
    read: Callable[[], int],
    target: int,
    workers: Workers,
    *,
    timeout: float,
    interval: float = 0.01,
    what: str = "tasks",
) -> tuple[float, int]:
    """Poll ``read()`` until it reaches ``target``; the ``time.perf_counter()`` of the first
    poll that saw it, and the value seen. Raises if the workers die or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if value >= target:
            return time.perf_counter(), value
        workers.check_alive()
        if time.monotonic() > deadline:
            raise HarnessError(f"{workers.name}: {value} of {target} {what} after {timeout:g}s; "
                               f"logs: {', '.join(map(str, workers.log_paths))}")
        time.sleep(interval)


def argv_python(*args: str) -> list[str]:
    """A command run by this venv's Python (workers, CLIs installed as modules)."""
    return [sys.executable, *args]


def managed(name: str, argv: Sequence[str], env: Mapping[str, str], run_dir: Path,
            cwd: Path | None = None) -> ManagedProcess:
    """A worker process whose output goes to ``run_dir/logs/<name>.log``."""
    return ManagedProcess(name, argv, env, run_dir / "logs" / f"{name}.log", cwd=cwd or run_dir)
