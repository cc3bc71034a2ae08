"""Thumbnails with Pillow: the media task's work as a plain function, with no Celery in it.

Images come from producers, so every input is treated as hostile: the path must stay inside
the media root, the file must be small enough to read, the pixel count is checked from the
header before anything is decoded, and only a few well-known formats are even tried.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

THUMBNAIL_DIR = "thumbnails"
#: Formats Pillow both reads and writes well; other decoders are attack surface we do not need.
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
#: Largest source file read at all; a bigger one is refused before Pillow sees it.
DEFAULT_MAX_SOURCE_BYTES = 64 * 1024 * 1024
#: Output modes each format can store; anything else is converted first.
_SAVE_MODES = {"JPEG": {"RGB", "L", "CMYK"}, "BMP": {"RGB", "L", "P", "1"}}
# Everything Pillow raises on a broken or hostile file (its decoders use all of these).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError)


class ImageRejectedError(ValueError):
    """The source cannot be made into thumbnails, now or ever (missing, corrupt, too big)."""


@dataclass(frozen=True, slots=True)
class Thumbnail:
    #: Relative to the media root, with forward slashes.
    path: str
    width: int
    height: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "width": self.width, "height": self.height}


def resolve_source(media_root: Path, source: str) -> tuple[Path, Path]:
    """``(media root, source file)``, both resolved; refuses paths that leave the root."""
    root = media_root.resolve()
    candidate = (root / source).resolve()
    # resolve() follows symlinks too, so a link pointing outside is refused like "../".
    if candidate == root or not candidate.is_relative_to(root):
        raise ImageRejectedError(f"source {source!r} is outside the media root")
    if not candidate.exists():
        raise ImageRejectedError(f"source {source!r} does not exist under the media root")
    if not candidate.is_file():
        raise ImageRejectedError(f"source {source!r} is not a regular file")
    return root, candidate


def thumbnail_path(root: Path, source_file: Path, width: int, height: int) -> Path:
    """``<root>/thumbnails/<source's folder>/<stem>_<w>x<h><suffix>``."""
    folder = source_file.parent.relative_to(root)
    name = f"{source_file.stem}_{width}x{height}{source_file.suffix}"
    return root / THUMBNAIL_DIR / folder / name


def _write_atomically(image: Image.Image, target: Path, image_format: str) -> None:
    """Write to a temp file beside ``target`` and rename, so no reader sees half an image."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        os.fchmod(descriptor, 0o644)  # mkstemp's 0600 would hide thumbnails from web servers
        with os.fdopen(descriptor, "wb") as handle:
            image.save(handle, format=image_format)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def _for_saving(image: Image.Image, image_format: str) -> Image.Image:
    allowed = _SAVE_MODES.get(image_format)
    if allowed is None or image.mode in allowed:
        return image
    return image.convert("RGB")


def _for_resizing(image: Image.Image) -> Image.Image:
    # Pillow resizes palette and 1-bit images with nearest-neighbour; convert for a smooth result.
    if image.mode in {"P", "1"}:
        return image.convert("RGBA" if image.has_transparency_data else "RGB")
    return image


def _decode(
    source: str, source_file: Path, sizes: Sequence[tuple[int, int]], max_pixels: int
) -> tuple[Image.Image, str]:
    """Open, check the header's pixel count, then decode (upright, per EXIF)."""
    try:
        with Image.open(source_file, formats=ACCEPTED_FORMATS) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise ImageRejectedError(
                    f"source {source!r} is {width}x{height} = {width * height} pixels, "
                    f"over the limit of {max_pixels}"
                )
            image_format = str(opened.format)
            # JPEG can decode at 1/2, 1/4 or 1/8 scale: ask for no more than twice the
            # largest thumbnail, either way round since EXIF may rotate the image.
            longest = max(max(size) for size in sizes)
            opened.draft(None, (2 * longest, 2 * longest))
            opened.load()
            return ImageOps.exif_transpose(opened), image_format
    except ImageRejectedError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageRejectedError(f"source {source!r} is too large to decode: {error}") from None
    except UnidentifiedImageError:
        raise ImageRejectedError(
            f"source {source!r} is not an image in an accepted format "
            f"({', '.join(ACCEPTED_FORMATS)})"
        ) from None
    except _DECODE_ERRORS as error:
        raise ImageRejectedError(f"source {source!r} is corrupt or truncated: {error}") from None


def render_thumbnails(
    media_root: Path,
    source: str,
    sizes: Sequence[tuple[int, int]],
    max_pixels: int,
    *,
    max_bytes: int = DEFAULT_MAX_SOURCE_BYTES,
) -> list[Thumbnail]:
    """Write one thumbnail of ``media_root/source`` per ``(width, height)`` in ``sizes``.

    Each keeps the aspect ratio and fits inside its box (a smaller image is not enlarged).
    Raises :class:`ImageRejectedError` for anything a retry would not fix.
    """
    if not sizes:
        raise ImageRejectedError("no thumbnail sizes requested")
    root, source_file = resolve_source(media_root, source)
    file_size = source_file.stat().st_size
    if file_size > max_bytes:
        raise ImageRejectedError(
            f"source {source!r} is {file_size} bytes, over the limit of {max_bytes}"
        )
    decoded, image_format = _decode(source, source_file, sizes, max_pixels)
    upright = _for_resizing(decoded)
    written: list[Thumbnail] = []
    for width, height in sizes:
        thumbnail = upright.copy()
        thumbnail.thumbnail((width, height), Image.Resampling.LANCZOS)
        target = thumbnail_path(root, source_file, width, height)
        _write_atomically(_for_saving(thumbnail, image_format), target, image_format)
        written.append(
            Thumbnail(
                path=target.relative_to(root).as_posix(),
                width=thumbnail.width,
                height=thumbnail.height,
            )
        )
    return written
