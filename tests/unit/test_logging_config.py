"""configure_logging: structlog events and stdlib records come out as the same JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent(
    """
    import logging, sys
    import structlog
    from platform_tasks.observability import configure_logging
    from platform_tasks.observability.task_context import install
    from platform_tasks.settings import load_settings

    settings = load_settings()
    configure_logging(settings, process="probe")
    configure_logging(settings, process="probe")  # idempotent: still one handler
    install()
    assert len(logging.getLogger().handlers) == 1, logging.getLogger().handlers
    logging.getLogger("kombu").warning("lost connection to %s", sys.argv[1])
    structlog.get_logger("platform_tasks.test").info("hello", user_email="ann@example.com")
    structlog.contextvars.bind_contextvars(task_id="t-1")
    logging.getLogger("platform_tasks.tasks").info("inside a task")
    logging.getLogger("celery.app.trace").info(
        "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
        {"name": "x", "id": "t-1", "runtime": 0.1, "return_value": None},
    )
    logging.getLogger("platform_tasks.test").debug("below the level")
    """
)

ENV = {
    "PLATFORM_TASKS_SENTINELS": "127.0.0.1:1",
    "PLATFORM_TASKS_REDIS_PASSWORD": "redis-Pa55word",
    "PLATFORM_TASKS_SENTINEL_PASSWORD": "sentinel-Pa55word",
}


def run(extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, "sentinel://:redis-Pa55word@h1:26379"],
        env={**ENV, **(extra_env or {})}, capture_output=True, text=True, timeout=60,
        check=True,
    )


def test_stdlib_and_structlog_lines_are_json_with_the_same_keys() -> None:
    lines = [json.loads(line) for line in run().stdout.splitlines()]
    kombu, ours, in_task = lines
    common = {"event", "level", "logger", "timestamp", "process", "pid"}
    assert common <= set(kombu)
    assert common <= set(ours)
    assert kombu["logger"] == "kombu"
    assert kombu["level"] == "warning"
    assert kombu["process"] == "probe"
    assert kombu["timestamp"].endswith("Z")
    assert ours["event"] == "hello"
    assert in_task["task_id"] == "t-1"


def test_secrets_and_addresses_are_redacted_and_celery_task_lines_dropped() -> None:
    out = run().stdout
    assert "Pa55word" not in out
    assert "ann@example.com" not in out
    assert "a***@example.com" in out
    assert "succeeded in" not in out
    assert "below the level" not in out


def test_console_format_and_level_come_from_the_settings() -> None:
    out = run({"PLATFORM_TASKS_LOG_FORMAT": "console",
               "PLATFORM_TASKS_LOG_LEVEL": "debug"}).stdout
    assert not out.lstrip().startswith("{")
    assert "hello" in out
    assert "below the level" in out
    assert "Pa55word" not in out


def test_a_clock_interrupted_at_a_new_second_does_not_stamp_the_old_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A signal handler (the solo pool's time limit) may raise inside the clock at the moment
    # it formats a new second; the next line must still get the right second.
    import time
    from datetime import UTC, datetime, timedelta

    from platform_tasks.observability import logging as platform_logging

    clock = platform_logging._UtcClock()
    clock.now()
    clock._second -= 60  # as if the last line was a minute ago
    clock._prefix = "2000-01-01T00:00:00."

    def interrupted(seconds: float | None = None) -> time.struct_time:
        raise RuntimeError("a time limit, inside the clock")

    monkeypatch.setattr(platform_logging.time, "gmtime", interrupted)
    with pytest.raises(RuntimeError):
        clock.now()
    monkeypatch.undo()
    stamp = datetime.fromisoformat(clock.now().replace("Z", "+00:00"))
    assert abs(stamp - datetime.now(UTC)) < timedelta(seconds=1)


def test_line_timestamps_are_utc_iso_8601_with_microseconds() -> None:
    import re
    from datetime import UTC, datetime, timedelta

    from platform_tasks.observability.logging import _UtcClock

    clock = _UtcClock()
    for _ in range(2000):  # several calls within a second, and perhaps across one
        before = datetime.now(UTC)
        stamp = clock.now()
        after = datetime.now(UTC)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        # The clock truncates to the microsecond where datetime rounds: 1 µs of slack.
        assert before - timedelta(microseconds=1) <= parsed <= after
