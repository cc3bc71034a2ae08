"""Every Redis key the platform itself writes, in one place.

Celery's own keys (queue lists, ``unacked``, ``celery-task-meta-*``) keep kombu's names so
that Flower, celery-exporter and KEDA find them where they look.
"""

from __future__ import annotations

from datetime import date

PREFIX = "platform-tasks:"

BEAT_KEY_PREFIX = f"{PREFIX}redbeat:"
"""celery-redbeat's schedule entries and its lock live under this prefix."""

BEAT_LOCK = f"{BEAT_KEY_PREFIX}lock"

BEAT_SCHEDULE = f"{BEAT_KEY_PREFIX}:schedule"
"""redbeat's sorted set of schedule entries scored by next due time; redbeat appends
``:schedule`` to its prefix, hence the double colon."""


def task_stats(day: date) -> str:
    """Hash of per-task counters for one day (UTC): ``<task>|<outcome>`` -> count."""
    return f"{PREFIX}stats:{day.isoformat()}"


def payment_record(idempotency_key: str) -> str:
    """The charge made for one idempotency key; its presence means 'already charged'."""
    return f"{PREFIX}payments:charged:{idempotency_key}"


def payment_lock(idempotency_key: str) -> str:
    """Held while one worker talks to the gateway for this key, so runs never overlap."""
    return f"{PREFIX}payments:lock:{idempotency_key}"


def email_sent(task_id: str) -> str:
    """Marks a task's e-mail as handed to the SMTP server, so a redelivery does not resend."""
    return f"{PREFIX}email:sent:{task_id}"


def enqueue_dedup(task_name: str, idempotency_key: str) -> str:
    """Held by the producer for an idempotency key: a second enqueue returns the first id."""
    return f"{PREFIX}enqueue:{task_name}:{idempotency_key}"


def revoked(task_id: str) -> str:
    """A revoked task id, kept so workers that start after the revoke still honour it."""
    return f"{PREFIX}revoked:{task_id}"


BEAT_LAST_TICK = f"{PREFIX}beat:last-tick"
"""Unix time of the leader beat's last tick, written by the scheduler, read by the monitor."""


def worker_heartbeats(queue: str) -> str:
    """Sorted set of the workers consuming ``queue``: hostname -> Unix time of last heartbeat."""
    return f"{PREFIX}workers:{queue}"


DEAD_LETTERS = f"{PREFIX}dead-letters"
"""List of dead letters, newest first, each a JSON object; capped at
``PLATFORM_TASKS_DEAD_LETTER_MAX_LENGTH`` entries (see :mod:`platform_tasks.dead_letters`)."""


def redelivered_runs(task_id: str, retries: int) -> str:
    """How many times a redelivered message (one attempt of a task) started running.

    Keyed by attempt: a retry is a new message with a count of its own.
    """
    return f"{PREFIX}redelivered-runs:{task_id}:{retries}"
