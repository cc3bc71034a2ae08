"""Worker heartbeats in Redis: who consumes each queue, and the probe that asks "am I alive?".

The worker's main process refreshes its entry in ``keys.worker_heartbeats(queue)`` (a sorted
set: hostname -> Unix time) every ``heartbeat_interval_seconds`` once it consumes, and removes
it at shutdown. An entry older than :data:`MISSED_BEATS` intervals counts as gone: the monitor
reports consumers from it and ``platform-tasks health`` turns it into an exit status, which is
what the startup and readiness probes run (a Redis read, no broadcast to every worker).

Each beat also writes the time to a local file; ``platform-tasks health --local`` reads only
that, for the liveness probe: a broker outage must not make Kubernetes restart every worker,
which would interrupt running tasks and cannot bring the broker back.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from platform_tasks import consumer_loop, keys
from platform_tasks.redis_client import connect, no_retry
from platform_tasks.settings import Settings

logger = logging.getLogger(__name__)

#: Heartbeats a worker may miss before it counts as gone.
MISSED_BEATS = 3
#: Entries this many intervals old are deleted by any live worker of the queue.
FORGET_AFTER_BEATS = 100


def worker_hostname(queue: str, host: str | None = None, member: int | None = None) -> str:
    """The node name ``platform-tasks worker`` gives itself (Celery's ``<queue>@%h``); a
    worker group's members are ``<queue>-<member>@%h``."""
    name = queue if member is None else f"{queue}-{member}"
    return f"{name}@{host or socket.gethostname()}"


def queue_of_node(hostname: str) -> str:
    """The queue a worker's node name says it consumes: ``default-2@pod`` -> ``default``."""
    name = hostname.rpartition("@")[0]
    prefix, _, member = name.rpartition("-")
    return prefix if prefix and member.isdigit() else name


def _is_on_host(hostname: str, queue: str, host: str) -> bool:
    return hostname.rpartition("@")[2] == host and queue_of_node(hostname) == queue


def freshness_limit(settings: Settings) -> float:
    return MISSED_BEATS * settings.heartbeat_interval_seconds


def liveness_file(settings: Settings, queue: str, member: int | None = None) -> Path:
    """Where the worker of ``queue`` records each beat on local disk (a worker group's
    member: its own file next to it, which the group's supervisor watches)."""
    if settings.heartbeat_file is not None:
        path = settings.heartbeat_file
    else:
        path = Path(tempfile.gettempdir()) / f"platform-tasks-{queue}.alive"
    if member is None:
        return path
    return path.with_name(f"{path.stem}-{member}{path.suffix}")


def last_alive(settings: Settings, queue: str) -> float | None:
    """Unix time the local worker last beat, from its file; None when there is none."""
    try:
        return float(liveness_file(settings, queue).read_text().strip())
    except (OSError, ValueError):
        return None


class Heartbeat:
    """A daemon thread that keeps one worker's entry fresh until :meth:`stop`."""

    def __init__(self, settings: Settings, queue: str, hostname: str, *,
                 watch_loop: bool = True, member: int | None = None) -> None:
        self.settings = settings
        #: Whether a consumer loop that stopped turning stops the beats (not for the solo
        #: pool, whose loop runs each task itself and is legitimately busy that long).
        self.watch_loop = watch_loop
        self.key = keys.worker_heartbeats(queue)
        self.file = liveness_file(settings, queue, member)
        self.hostname = hostname
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def beat_once(self, client: Any) -> None:
        now = time.time()
        forget_before = now - FORGET_AFTER_BEATS * self.settings.heartbeat_interval_seconds
        with client.pipeline(transaction=False) as pipe:
            pipe.zadd(self.key, {self.hostname: now})
            pipe.zremrangebyscore(self.key, "-inf", forget_before)
            pipe.execute()

    def _touch_file(self) -> None:
        # Local and independent of Redis: liveness must not fail because the broker does.
        try:
            temporary = self.file.with_name(self.file.name + ".tmp")
            temporary.write_text(f"{time.time():.3f}\n")
            temporary.replace(self.file)
        except OSError as error:
            logger.warning("liveness file %s not written: %s", self.file, error)

    def beat(self, client: Any) -> bool:
        """One beat: the liveness file and the Redis entry; False (no beat) when the
        consumer loop is wedged."""
        stalled = consumer_loop.stalled_for() if self.watch_loop else None
        if stalled is not None:
            logger.error("consumer loop has not turned for %.0f s: heartbeat withheld so the "
                         "liveness probe restarts this worker", stalled)
            return False
        self._touch_file()
        try:
            self.beat_once(client)
        except Exception as error:
            # A failover or a network blip: the next beat tries again; a worker that stays
            # cut off goes stale, which is what its probe should then report.
            logger.warning("heartbeat not written: %s: %s", type(error).__name__, error)
        return True

    def _run(self) -> None:
        client = connect(self.settings, retry=no_retry())
        try:
            while not self._stopped.is_set():
                self.beat(client)
                self._stopped.wait(self.settings.heartbeat_interval_seconds)
            try:
                client.zrem(self.key, self.hostname)
            except Exception as error:
                logger.warning("heartbeat not removed: %s: %s", type(error).__name__, error)
        finally:
            client.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)


def last_seen(settings: Settings, queue: str, hostname: str) -> float | None:
    """Unix time of ``hostname``'s last heartbeat on ``queue``, None when it has none."""
    client = connect(settings, retry=no_retry())
    try:
        score = client.zscore(keys.worker_heartbeats(queue), hostname)
    finally:
        client.close()
    return None if score is None else float(score)


def last_seen_on_host(settings: Settings, queue: str, host: str | None = None) -> float | None:
    """The latest heartbeat on ``queue`` from this host's worker, or from any member of its
    worker group; None when there is none."""
    host = host or socket.gethostname()
    client = connect(settings, retry=no_retry())
    try:
        entries: Any = client.zrange(
            keys.worker_heartbeats(queue), 0, -1, withscores=True)
    finally:
        client.close()
    scores = [float(score) for name, score in entries
              if _is_on_host(name.decode() if isinstance(name, bytes) else str(name),
                             queue, host)]
    return max(scores, default=None)


def live_consumers(client: Any, queue: str, settings: Settings, now: float) -> int:
    """Workers of ``queue`` whose heartbeat is fresh."""
    return int(client.zcount(keys.worker_heartbeats(queue), now - freshness_limit(settings),
                             "+inf"))


_heartbeat: Heartbeat | None = None


def install(settings: Settings, queue: str, *, watch_loop: bool = True,
            member: int | None = None) -> None:
    """Beat from the moment the worker consumes until it shuts down."""

    def on_ready(sender: Any = None, **_: Any) -> None:
        global _heartbeat
        hostname = str(getattr(sender, "hostname", None) or worker_hostname(queue, None, member))
        _heartbeat = Heartbeat(settings, queue, hostname, watch_loop=watch_loop, member=member)
        _heartbeat.start()

    def on_shutdown(**_: Any) -> None:
        if _heartbeat is not None:
            _heartbeat.stop()

    worker_ready.connect(on_ready, weak=False, dispatch_uid="platform-tasks-heartbeat-start")
    worker_shutdown.connect(on_shutdown, weak=False, dispatch_uid="platform-tasks-heartbeat-stop")
