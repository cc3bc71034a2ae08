"""Tasks of the ``default`` queue: arithmetic (the seed's and the demo's) and the daily report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from platform_tasks import stats
from platform_tasks.contracts import (
    ADD_NUMBERS,
    SEND_DAILY_REPORT,
    SUM_NUMBERS,
    AddNumbersArgs,
    DailyReportArgs,
    SumNumbersArgs,
)
from platform_tasks.report import DaySection, report_message
from platform_tasks.tasks._base import PlatformTask, platform_task
from platform_tasks.tasks._mail_once import send_once
from platform_tasks.tasks._redis import client_for


@platform_task(ADD_NUMBERS, AddNumbersArgs)
def add_numbers(task: PlatformTask, arguments: AddNumbersArgs) -> int | float:
    """The seed's ``add(x, y)``."""
    return arguments.x + arguments.y


@platform_task(SUM_NUMBERS, SumNumbersArgs)
def sum_numbers(task: PlatformTask, arguments: SumNumbersArgs) -> int | float:
    """Sum a list: the body of the demo's chord, which passes its header's results."""
    return sum(arguments.numbers)


@platform_task(SEND_DAILY_REPORT, DailyReportArgs)
def send_daily_report(task: PlatformTask, arguments: DailyReportArgs) -> dict[str, Any]:
    """Mail per-task outcomes of the previous UTC day and of today so far to ``recipient``."""
    recipient = str(arguments.recipient)
    now = datetime.now(UTC)
    today = now.date()
    previous = today - timedelta(days=1)
    client = client_for(task.settings)
    try:
        previous_rows = stats.read_stats(client, previous)
        today_rows = stats.read_stats(client, today)
    except redis.RedisError as error:
        task.retry_transient(error)
    sections = [
        DaySection("Previous day (complete)", previous, previous_rows),
        DaySection(f"Today so far (until {now:%H:%M} UTC)", today, today_rows),
    ]
    outcome = send_once(
        task, report_message(recipient, task.settings.smtp_sender, sections, now)
    )
    return {
        "recipient": recipient,
        "day": previous.isoformat(),
        "totals": stats.totals(previous_rows),
        "today": today.isoformat(),
        "today_totals": stats.totals(today_rows),
        "tasks": len(previous_rows),
        "message_id": outcome.message_id,
        "deduplicated": outcome.deduplicated,
    }
