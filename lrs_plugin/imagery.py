"""Reading large remote-sensing images without global side effects.

LRS-VQA holds TIFF and PNG images up to 27,328 px a side (650 Mpx); 66 of them exceed twice Pillow's decompression
bomb limit, so a plain ``Image.open`` refuses them. The limit is raised here only for the duration of our own
``open`` calls (:func:`pillow_pixel_limit`), never process-wide.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from lrs_plugin.errors import ImageReadError

__all__ = ["MAX_PIXELS", "pillow_pixel_limit", "open_lazy", "image_size"]

#: Largest image (in pixels) our readers accept: above the biggest LRS-VQA image (27,328 x 27,328 = 747 Mpx) with
#: head-room, still a guard against corrupted headers that claim absurd sizes.
MAX_PIXELS = 2_000_000_000

_LIMIT_LOCK = threading.RLock()


@contextlib.contextmanager
def pillow_pixel_limit(max_pixels: int | None = MAX_PIXELS) -> Iterator[None]:
    """Temporarily set ``PIL.Image.MAX_IMAGE_PIXELS`` for the calls made inside the ``with`` block.

    Pillow only exposes a module attribute, so the value is restored on exit and changes are serialised with a lock
    so that two threads of ours never restore each other's value.

    Args:
        max_pixels: The limit to apply inside the block (``None`` disables the check).
    """
    from PIL import Image

    with _LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def open_lazy(path: str | Path):
    """Open an image without decoding its pixels (Pillow reads the header only).

    The returned image decodes when its pixels are first touched (``load``, ``convert``, ``crop``...). Pillow checks
    the bomb limit only when opening, so a large image opened here can later be decoded by any caller.

    Args:
        path: Image file.

    Returns:
        A lazy ``PIL.Image.Image``.

    Raises:
        ImageReadError: The file is missing or its header cannot be parsed.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file not found: {str(path)!r}")
    try:
        with pillow_pixel_limit():
            return Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot read image header of {str(path)!r}: {exc}") from exc


def image_size(path: str | Path) -> tuple[int, int]:
    """Return ``(width, height)`` of an image from its header, without decoding pixels.

    Raises:
        ImageReadError: The file is missing or unreadable.
    """
    image = open_lazy(path)
    try:
        return image.size
    finally:
        image.close()
