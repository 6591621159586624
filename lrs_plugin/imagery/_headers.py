"""Image files without decoding their pixels: the one pixel limit, Pillow's limit raised in a scope, header reads.

Plumbing of :mod:`lrs_plugin.imagery.large_image` (which re-exports every public name here). The size of an image
comes from its header (tifffile for TIFF and BigTIFF, Pillow's parser for everything else) and the limit is checked
on it before anything is decoded; :func:`pillow_pixel_limit` raises Pillow's bomb limit only for the calls inside
it; :func:`file_of` names the file a task's visual stands for.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lrs_plugin.errors import ImageReadError, ImageTooLargeError
from lrs_plugin.imagery._decoders import is_tiff, tiff_size

__all__ = ["MAX_PIXELS", "check_pixel_limit", "file_of", "image_size", "open_lazy", "pillow_pixel_limit"]

#: Largest image (in pixels) our readers accept: above the biggest LRS-VQA image (27,328 x 27,328 = 747 Mpx) with
#: head-room, still a guard against corrupted headers that claim absurd sizes.
MAX_PIXELS = 2_000_000_000

_LIMIT_LOCK = threading.RLock()


def check_pixel_limit(size: tuple[int, int], name: str, max_pixels: int | None = MAX_PIXELS) -> None:
    """Refuse an image of ``size = (W, H)`` above ``max_pixels`` (``None``: no limit), before anything is decoded.

    This is the one limit of every reader here: it is applied to the header's size, whatever the format (TIFF and
    BigTIFF through tifffile, everything else through Pillow's header parser), so Pillow's own bomb check, which only
    raises at twice its limit, is never the only guard.

    Raises:
        ImageTooLargeError: names the image, its size, its pixel count and the limit.
    """
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"image {name!r} is {width} x {height} = {width * height:,} pixels, above the limit of {max_pixels:,} "
            "(lrs_plugin.imagery.large_image.MAX_PIXELS; pass max_pixels= to raise it)"
        )


@contextlib.contextmanager
def pillow_pixel_limit(max_pixels: int | None = MAX_PIXELS) -> Iterator[None]:
    """Temporarily set ``PIL.Image.MAX_IMAGE_PIXELS`` for the calls made inside the ``with`` block.

    Inside the block ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is also pinned to ``False``, so a truncated file raises
    instead of decoding to grey: lmms-eval 0.7.3 sets it to ``True`` process-wide when its task module is imported.
    Pillow only exposes module attributes, so the values are restored on exit and changes are serialised with a lock
    so that two threads of ours never restore each other's values.

    Args:
        max_pixels: The limit to apply inside the block (``None`` disables the check).
    """
    from PIL import Image, ImageFile

    with _LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = previous


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
    """Return ``(width, height)`` of an image from its header, without decoding pixels (and without a size limit).

    Raises:
        ImageReadError: The file is missing or unreadable.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file not found: {str(path)!r}")
    try:
        if is_tiff(path):
            return tiff_size(path)
        with pillow_pixel_limit(None), Image.open(path) as image:
            return image.size
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot read image header of {str(path)!r}: {exc}") from exc
    except Exception as exc:  # tifffile header errors
        raise ImageReadError(f"cannot read image header of {str(path)!r}: {exc}") from exc


def file_of(visual: Any) -> Path | None:
    """The image file a visual stands for, or ``None`` for an in-memory image (or anything else).

    A path (``str`` / ``os.PathLike``) is that file. A PIL image returned by ``PIL.Image.open`` (or :func:`open_lazy`)
    is an ``ImageFile`` with the ``filename`` of an existing file, loaded or not: its pixels are read again from the
    file through our decoders, with truncation refused. An image derived from it (``convert``, ``crop``,
    ``resize``...) is a new, in-memory image without a file name.
    """
    from PIL import ImageFile

    if isinstance(visual, (str, os.PathLike)):
        return Path(visual)
    filename = getattr(visual, "filename", "") if isinstance(visual, ImageFile.ImageFile) else ""
    if filename and isinstance(filename, (str, os.PathLike)) and Path(filename).is_file():
        return Path(filename)
    return None
