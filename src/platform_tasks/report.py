"""The daily report's text: per-task outcomes for the previous UTC day and today so far."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from email.message import EmailMessage

from platform_tasks.stats import TaskDayStats, totals

_HEADERS = ("task", "succeeded", "failed", "retried", "mean runtime")


@dataclass(frozen=True, slots=True)
class DaySection:
    title: str
    day: date
    rows: Sequence[TaskDayStats]


def _runtime(row: TaskDayStats) -> str:
    mean = row.mean_runtime_ms
    if mean is None:
        return "-"
    return f"{mean:.0f} ms" if mean < 10_000 else f"{mean / 1000:.1f} s"


def render_table(rows: Sequence[TaskDayStats]) -> str:
    """A fixed-width table with a totals line; plain text survives every mail client."""
    if not rows:
        return "  (no tasks ran)\n"
    summed = totals(rows)
    body = [
        (row.task, str(row.succeeded), str(row.failed), str(row.retried), _runtime(row))
        for row in rows
    ]
    footer = ("total", str(summed["succeeded"]), str(summed["failed"]),
              str(summed["retried"]), "")
    widths = [max(len(line[i]) for line in (_HEADERS, *body, footer))
              for i in range(len(_HEADERS))]

    def line(cells: Sequence[str]) -> str:
        # The task name reads left to right; numbers line up on the right.
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  " + "  ".join([first, *rest]).rstrip() + "\n"

    rule = "  " + "  ".join("-" * width for width in widths) + "\n"
    return line(_HEADERS) + rule + "".join(line(cells) for cells in body) + rule + line(footer)


def render_report(sections: Sequence[DaySection], generated_at: datetime) -> str:
    """The whole report: one titled table per section."""
    parts = [
        "platform-tasks daily report\n",
        f"generated {generated_at.isoformat(timespec='seconds')}\n",
        "Days are UTC days. Runtime is the mean over successful runs.\n",
    ]
    for section in sections:
        heading = f"{section.title}: {section.day.isoformat()}"
        parts.append(f"\n{heading}\n{'=' * len(heading)}\n")
        parts.append(render_table(section.rows))
    return "".join(parts)


def report_message(
    recipient: str, sender: str, sections: Sequence[DaySection], generated_at: datetime
) -> EmailMessage:
    """The report as an e-mail; the subject names the day it is mainly about (the first)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    first = sections[0].day.isoformat() if sections else generated_at.date().isoformat()
    message["Subject"] = f"platform-tasks daily report for {first}"
    message.set_content(render_report(sections, generated_at))
    return message
