"""Per-task daily counters in Redis, fed by Celery signals, read by the daily report.

One hash per UTC day (``keys.task_stats``) with fields ``<task>|succeeded``, ``|failed``,
``|retried`` and ``|runtime_ms`` (summed over successes). Each process adds up its events in
memory and writes them in one pipeline about once a second. Statistics are a side show: a
handler logs its own failures and never lets them reach the task it is watching.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import redis
from celery import signals

from platform_tasks import keys, run_signals
from platform_tasks.settings import Settings
from platform_tasks.tasks._redis import client_for

logger = logging.getLogger(__name__)

Outcome = Literal["succeeded", "failed", "retried"]
OUTCOMES: tuple[Outcome, ...] = ("succeeded", "failed", "retried")
RUNTIME_FIELD = "runtime_ms"
#: A week of history for the report, plus a day of slack for time zones.
STATS_TTL_SECONDS = 8 * 24 * 3600
_SEPARATOR = "|"



@dataclass(frozen=True, slots=True)
class TaskDayStats:
    """One task's outcomes over one UTC day."""

    task: str
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    runtime_ms_total: int = 0

    @property
    def mean_runtime_ms(self) -> float | None:
        """Mean runtime of the successful runs, None when there were none."""
        return self.runtime_ms_total / self.succeeded if self.succeeded else None


def field_name(task: str, counter: str) -> str:
    return f"{task}{_SEPARATOR}{counter}"


def today_utc() -> date:
    return datetime.now(UTC).date()


def record(
    client: redis.Redis, task: str, outcome: Outcome, *, runtime_ms: int | None = None,
    day: date | None = None,
) -> None:
    """Count one ``outcome`` of ``task`` (and its runtime) in the day's hash, in one round trip."""
    key = keys.task_stats(day or today_utc())
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(key, field_name(task, outcome), 1)
    if runtime_ms is not None:
        pipe.hincrby(key, field_name(task, RUNTIME_FIELD), runtime_ms)
    pipe.expire(key, STATS_TTL_SECONDS)
    pipe.execute()


def read_stats(client: redis.Redis, day: date) -> list[TaskDayStats]:
    """Every task's counters for ``day`` (UTC), sorted by task name."""
    raw = client.hgetall(keys.task_stats(day))
    counters: dict[str, dict[str, int]] = {}
    for field, value in raw.items():
        name = field.decode() if isinstance(field, bytes) else field
        task, separator, counter = name.rpartition(_SEPARATOR)
        if not separator or counter not in (*OUTCOMES, RUNTIME_FIELD):
            continue  # a field some other version wrote; not ours to interpret
        try:
            counters.setdefault(task, {})[counter] = int(value)
        except ValueError:
            logger.warning("ignoring non-integer stats field %s=%r", name, value)
    return [
        TaskDayStats(
            task=task,
            succeeded=values.get("succeeded", 0),
            failed=values.get("failed", 0),
            retried=values.get("retried", 0),
            runtime_ms_total=values.get(RUNTIME_FIELD, 0),
        )
        for task, values in sorted(counters.items())
    ]


def totals(rows: Iterable[TaskDayStats]) -> dict[str, int]:
    """Succeeded, failed and retried summed over every task."""
    rows = list(rows)
    return {outcome: sum(getattr(row, outcome) for row in rows) for outcome in OUTCOMES}


# -- signal handlers ---------------------------------------------------------------------


def _settings_of(task: Any) -> Settings | None:
    settings = getattr(getattr(task, "app", None), "settings", None)
    return settings if isinstance(settings, Settings) else None


class _PendingCounts:
    """This process's counter increments not yet written, written about once a second.

    A round trip per task event was a tenth of a pool process's time on short tasks; one
    pipeline per second carries any number of them. What a killed process had not written
    yet (at most a second's worth) is missing from the daily report.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[date, str], int] = {}
        self._settings: Settings | None = None
        self._flusher_pid: int | None = None

    def add(self, settings: Settings, task: str, outcome: Outcome,
            runtime_ms: int | None) -> None:
        day = today_utc()
        with self._lock:
            self._settings = settings
            self._bump(day, field_name(task, outcome), 1)
            if runtime_ms is not None:
                self._bump(day, field_name(task, RUNTIME_FIELD), runtime_ms)
            if self._flusher_pid != os.getpid():  # none yet, or inherited through a fork
                self._flusher_pid = os.getpid()
                threading.Thread(target=self._flush_every_second, daemon=True,
                                 name="platform-tasks-stats").start()

    def _bump(self, day: date, field: str, amount: int) -> None:
        self._counts[(day, field)] = self._counts.get((day, field), 0) + amount

    def _flush_every_second(self) -> None:
        pid = os.getpid()
        while self._flusher_pid == pid:
            time.sleep(FLUSH_INTERVAL_SECONDS)
            self.flush()

    def flush(self) -> None:
        """Write what is pending; on failure keep it for the next flush."""
        with self._lock:
            counts, self._counts = self._counts, {}
            settings = self._settings
        if not counts or settings is None:
            return
        try:
            pipe = client_for(settings).pipeline(transaction=False)
            for (day, field), amount in counts.items():
                pipe.hincrby(keys.task_stats(day), field, amount)
            for day in {day for day, _ in counts}:
                pipe.expire(keys.task_stats(day), STATS_TTL_SECONDS)
            pipe.execute()
        except Exception:
            logger.warning("could not write %d task statistics counters; retrying",
                           len(counts), exc_info=True)
            with self._lock:
                for (day, field), amount in counts.items():
                    self._bump(day, field, amount)


FLUSH_INTERVAL_SECONDS = 1.0
_pending = _PendingCounts()


def flush() -> None:
    """Write this process's pending counters now (at shutdown, and for tests)."""
    _pending.flush()


def _safely_record(
    task: Any, outcome: Outcome, runtime_ms: int | None = None
) -> None:
    try:
        settings = _settings_of(task)
        if settings is None:
            return  # not a platform app (a test's bare Celery); nowhere to write
        _pending.add(settings, str(task.name), outcome, runtime_ms)
    except Exception:
        logger.warning("could not record %s of %s in the task statistics",
                       outcome, getattr(task, "name", "?"), exc_info=True)


def _on_shutdown(**_: Any) -> None:
    flush()


def _on_success(task_id: str | None, task: Any, request: Any) -> None:
    run = run_signals.current(task_id) if task_id else None
    runtime_ms = round((time.monotonic() - run.started) * 1000) if run is not None else None
    # A success without a start time (no prerun seen) still counts, with no runtime.
    _safely_record(task, "succeeded", runtime_ms)


def _on_failure(sender: Any = None, **_: Any) -> None:
    _safely_record(sender, "failed")


def _on_retry(sender: Any = None, **_: Any) -> None:
    _safely_record(sender, "retried")


def connect_signals() -> None:
    """Start counting outcomes in this process; calling it again changes nothing."""
    run_signals.observe(run_signals.Stage.STATS, success=_on_success)
    signals.task_failure.connect(
        _on_failure, weak=False, dispatch_uid="platform-tasks-stats-failure"
    )
    signals.task_retry.connect(_on_retry, weak=False, dispatch_uid="platform-tasks-stats-retry")
    # A pool process that exits normally, and the worker itself, write what is pending.
    signals.worker_process_shutdown.connect(
        _on_shutdown, weak=False, dispatch_uid="platform-tasks-stats-child-exit"
    )
    signals.worker_shutdown.connect(
        _on_shutdown, weak=False, dispatch_uid="platform-tasks-stats-exit"
    )


def disconnect_signals() -> None:
    """Stop counting (tests that connect the handlers undo it with this)."""
    run_signals.forget(_on_success)
    for signal, uid in (
        (signals.task_failure, "platform-tasks-stats-failure"),
        (signals.task_retry, "platform-tasks-stats-retry"),
        (signals.worker_process_shutdown, "platform-tasks-stats-child-exit"),
        (signals.worker_shutdown, "platform-tasks-stats-exit"),
    ):
        signal.disconnect(dispatch_uid=uid)
