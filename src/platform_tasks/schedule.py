"""The beat schedule: the seed's periodic tasks, in the configured time zone."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from platform_tasks.contracts import ADD_NUMBERS, SEND_DAILY_REPORT
from platform_tasks.settings import Settings

ADD_EVERY_MINUTE = "add-every-minute"
DAILY_REPORT = "daily-report"


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Entries celery-redbeat stores in Redis; crontabs follow the app's ``timezone``."""
    return {
        ADD_EVERY_MINUTE: {
            "task": ADD_NUMBERS.name,
            "schedule": crontab(),  # at second 0 of every minute
            "args": (16, 16),
            "options": {"queue": str(ADD_NUMBERS.queue)},
        },
        DAILY_REPORT: {
            "task": SEND_DAILY_REPORT.name,
            "schedule": crontab(minute="0", hour="0"),  # midnight in settings.timezone
            "args": (settings.report_recipient,),
            "options": {"queue": str(SEND_DAILY_REPORT.queue)},
        },
    }
