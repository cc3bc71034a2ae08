"""render_thumbnails on real image files: sizes, formats, and every input it must refuse."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from platform_tasks.imaging import ImageRejectedError, render_thumbnails

MAX_PIXELS = 40_000_000


def make_image(path: Path, size: tuple[int, int], image_format: str, mode: str = "RGB",
               **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = (200, 40, 40, 128) if mode == "RGBA" else (200, 40, 40) if mode == "RGB" else 7
    Image.new(mode, size, color).save(path, format=image_format, **save)
    return path


def open_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` with (almost) no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))
    return path


def test_png_thumbnails_keep_the_aspect_ratio_and_fit_their_box(tmp_path: Path) -> None:
    make_image(tmp_path / "photo.png", (400, 200), "PNG")

    made = render_thumbnails(tmp_path, "photo.png", [(100, 100), (50, 80)], MAX_PIXELS)

    assert [t.as_dict() for t in made] == [
        {"path": "thumbnails/photo_100x100.png", "width": 100, "height": 50},
        {"path": "thumbnails/photo_50x80.png", "width": 50, "height": 25},
    ]
    assert open_size(tmp_path / "thumbnails/photo_100x100.png") == (100, 50)
    assert open_size(tmp_path / "thumbnails/photo_50x80.png") == (50, 25)


def test_jpeg_thumbnails_are_jpeg_and_honour_exif_rotation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    make_image(tmp_path / "shot.jpg", (400, 200), "JPEG", exif=exif.tobytes())

    [made] = render_thumbnails(tmp_path, "shot.jpg", [(100, 100)], MAX_PIXELS)

    assert (made.path, made.width, made.height) == ("thumbnails/shot_100x100.jpg", 50, 100)
    with Image.open(tmp_path / made.path) as written:
        assert written.format == "JPEG"
        assert written.size == (50, 100)


def test_transparent_and_palette_images_are_thumbnailed(tmp_path: Path) -> None:
    make_image(tmp_path / "alpha.png", (300, 300), "PNG", mode="RGBA")
    make_image(tmp_path / "anim.gif", (300, 150), "GIF", mode="P")

    [alpha] = render_thumbnails(tmp_path, "alpha.png", [(30, 30)], MAX_PIXELS)
    [gif] = render_thumbnails(tmp_path, "anim.gif", [(60, 60)], MAX_PIXELS)

    with Image.open(tmp_path / alpha.path) as written:
        assert written.mode == "RGBA"
    assert (gif.width, gif.height) == (60, 30)


def test_a_small_image_is_not_enlarged(tmp_path: Path) -> None:
    make_image(tmp_path / "tiny.png", (20, 10), "PNG")

    [made] = render_thumbnails(tmp_path, "tiny.png", [(200, 200)], MAX_PIXELS)

    assert (made.width, made.height) == (20, 10)


def test_a_nested_source_keeps_its_folder_under_thumbnails(tmp_path: Path) -> None:
    make_image(tmp_path / "users/7/avatar.png", (100, 100), "PNG")

    [made] = render_thumbnails(tmp_path, "users/7/avatar.png", [(10, 10)], MAX_PIXELS)

    assert made.path == "thumbnails/users/7/avatar_10x10.png"


def test_running_twice_replaces_the_files_and_leaves_no_temp_files(tmp_path: Path) -> None:
    make_image(tmp_path / "photo.png", (400, 200), "PNG")

    render_thumbnails(tmp_path, "photo.png", [(100, 100)], MAX_PIXELS)
    render_thumbnails(tmp_path, "photo.png", [(100, 100)], MAX_PIXELS)

    assert sorted(p.name for p in (tmp_path / "thumbnails").iterdir()) == ["photo_100x100.png"]


def test_a_file_that_is_not_an_image_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_bytes(b"this is not a picture at all" * 10)

    with pytest.raises(ImageRejectedError, match="not an image in an accepted format"):
        render_thumbnails(tmp_path, "notes.png", [(10, 10)], MAX_PIXELS)


def test_a_truncated_image_is_refused_as_corrupt(tmp_path: Path) -> None:
    source = make_image(tmp_path / "broken.png", (300, 300), "PNG", mode="RGB",
                        compress_level=0)
    source.write_bytes(source.read_bytes()[: source.stat().st_size // 2])

    with pytest.raises(ImageRejectedError, match="corrupt or truncated"):
        render_thumbnails(tmp_path, "broken.png", [(10, 10)], MAX_PIXELS)
    assert not (tmp_path / "thumbnails").exists()


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    png_header_only(tmp_path / "big.png", 5000, 5000)  # 25 Mpx claimed, no data to decode

    with pytest.raises(ImageRejectedError, match="5000x5000 = 25000000 pixels"):
        render_thumbnails(tmp_path, "big.png", [(10, 10)], max_pixels=1_000_000)


def test_a_decompression_bomb_is_refused_even_under_a_generous_limit(tmp_path: Path) -> None:
    png_header_only(tmp_path / "bomb.png", 30_000, 30_000)  # 900 Mpx: Pillow's own hard stop

    with pytest.raises(ImageRejectedError, match="too large to decode"):
        render_thumbnails(tmp_path, "bomb.png", [(10, 10)], max_pixels=10**10)


def test_a_file_over_the_byte_cap_is_refused(tmp_path: Path) -> None:
    make_image(tmp_path / "photo.png", (100, 100), "PNG")

    with pytest.raises(ImageRejectedError, match="bytes, over the limit of 10"):
        render_thumbnails(tmp_path, "photo.png", [(10, 10)], MAX_PIXELS, max_bytes=10)


@pytest.mark.parametrize("source", ["../outside.png", "sub/../../outside.png",
                                    "/tmp/outside.png", "."])
def test_paths_leaving_the_media_root_are_refused(tmp_path: Path, source: str) -> None:
    root = tmp_path / "media"
    root.mkdir()
    make_image(tmp_path / "outside.png", (10, 10), "PNG")

    with pytest.raises(ImageRejectedError, match="outside the media root"):
        render_thumbnails(root, source, [(5, 5)], MAX_PIXELS)


def test_a_symlink_pointing_outside_the_media_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "media"
    root.mkdir()
    make_image(tmp_path / "secret.png", (10, 10), "PNG")
    (root / "link.png").symlink_to(tmp_path / "secret.png")

    with pytest.raises(ImageRejectedError, match="outside the media root"):
        render_thumbnails(root, "link.png", [(5, 5)], MAX_PIXELS)


def test_a_missing_file_and_a_directory_are_refused(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()

    with pytest.raises(ImageRejectedError, match="does not exist"):
        render_thumbnails(tmp_path, "missing.png", [(5, 5)], MAX_PIXELS)
    with pytest.raises(ImageRejectedError, match="not a regular file"):
        render_thumbnails(tmp_path, "folder", [(5, 5)], MAX_PIXELS)
