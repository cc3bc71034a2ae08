"""Tasks of the ``default`` queue: the seed's arithmetic and the daily report."""

from __future__ import annotations

from platform_tasks.contracts import ADD_NUMBERS, AddNumbersArgs
from platform_tasks.tasks._base import PlatformTask, platform_task


@platform_task(ADD_NUMBERS, AddNumbersArgs)
def add_numbers(task: PlatformTask, arguments: AddNumbersArgs) -> int | float:
    """The seed's ``add(x, y)``."""
    return arguments.x + arguments.y
