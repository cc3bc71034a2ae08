"""Tasks of the ``media`` queue."""

from __future__ import annotations

from typing import Any

from platform_tasks.contracts import MAKE_THUMBNAIL, ThumbnailArgs
from platform_tasks.imaging import ImageRejectedError, render_thumbnails
from platform_tasks.tasks._base import PermanentTaskError, PlatformTask, platform_task


@platform_task(MAKE_THUMBNAIL, ThumbnailArgs)
def make_thumbnail(task: PlatformTask, arguments: ThumbnailArgs) -> dict[str, Any]:
    """Write a thumbnail of ``source`` for each of ``sizes`` under ``media_root/thumbnails``.

    Rewriting the same files is harmless, so a redelivered task simply does the work again.
    """
    settings = task.settings
    try:
        thumbnails = render_thumbnails(
            settings.media_root,
            arguments.source,
            [(size.width, size.height) for size in arguments.sizes],
            settings.max_image_pixels,
        )
    except ImageRejectedError as error:
        raise PermanentTaskError(str(error)) from error
    except OSError as error:
        # Reading was fine (decode errors are ImageRejectedError); a full or flaky disk may recover.
        task.retry_transient(error)
    return {
        "source": arguments.source,
        "thumbnails": [thumbnail.as_dict() for thumbnail in thumbnails],
    }
