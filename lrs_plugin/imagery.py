"""Reading large remote-sensing images without global side effects.

LRS-VQA holds TIFF and PNG images up to 27,328 px a side (650 Mpx); 66 of them exceed twice Pillow's decompression
bomb limit, so a plain ``Image.open`` refuses them. The limit is raised here only for the duration of our own
``open`` calls (:func:`pillow_pixel_limit`), never process-wide.

:class:`LargeImage` decodes an image once (into RAM, or for large PNGs by one pyvips streaming pass into a scratch
file) and then serves exact bilinear windows of any resize of it, reading only the source rows and columns the filter
touches; :class:`ImageCache` keeps a bounded number of them open. The RGB normalisation rule (16-bit, alpha, gray,
palette, 1-bit) and the choice of backend are documented in :mod:`lrs_plugin._decoders`.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from lrs_plugin._decoders import BACKENDS, RAM_LIMIT_PIXELS, is_tiff, open_pixels, tiff_size
from lrs_plugin._resample import resample_area, resample_bilinear
from lrs_plugin.errors import ConfigError, ImageReadError

__all__ = [
    "MAX_PIXELS",
    "RAM_LIMIT_PIXELS",
    "BACKENDS",
    "RESAMPLE_MODES",
    "pillow_pixel_limit",
    "open_lazy",
    "image_size",
    "LargeImage",
    "ImageCache",
]

#: Largest image (in pixels) our readers accept: above the biggest LRS-VQA image (27,328 x 27,328 = 747 Mpx) with
#: head-room, still a guard against corrupted headers that claim absurd sizes.
MAX_PIXELS = 2_000_000_000

_LIMIT_LOCK = threading.RLock()


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
    """Return ``(width, height)`` of an image from its header, without decoding pixels.

    Raises:
        ImageReadError: The file is missing or unreadable.
    """
    image = open_lazy(path)
    try:
        return image.size
    finally:
        image.close()


#: ``read_region`` filters: ``"bilinear"`` reproduces ``F.interpolate(mode="bilinear", align_corners=False)`` without
#: antialias (what the original DIP feeds the model; aliases at strong downscales); ``"area"`` is the exact box average
#: of the covered source area (no aliasing, reads every source pixel of the box; not what the released model saw).
RESAMPLE_MODES = ("bilinear", "area")


class LargeImage:
    """One image file, decoded once, read as exact windows of arbitrary resizes.

    The header is read at construction (``size`` costs no decode); the pixels are decoded on the first read (or by
    :meth:`load`) into the store chosen by ``backend`` and kept until :meth:`close`. Use as a context manager.

    Args:
        path: Image file (PNG, TIFF, or anything Pillow opens).
        backend: ``"auto"``, ``"memory"`` or ``"scratch"`` (see :mod:`lrs_plugin._decoders`).
        ram_limit_pixels: With ``backend="auto"``, larger images go to a pyvips scratch file when pyvips is installed.
        scratch_dir: Parent of the temporary scratch directory (default: the system temp dir). Needs ``3 * W * H``
            bytes free; the directory is deleted by :meth:`close`.
        region_cache_bytes: Results of :meth:`read_region` kept (LRU, float32 bytes) and returned as copies when the
            same region is asked again: every question on an image renders the same thumbnail and base level. 0
            disables it.

    Raises:
        ImageReadError: The file is missing or its header is unreadable.
        ConfigError: Unknown ``backend``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        backend: str = "auto",
        ram_limit_pixels: int = RAM_LIMIT_PIXELS,
        scratch_dir: str | Path | None = None,
        region_cache_bytes: int = 64 * 2**20,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown image backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.path = Path(path)
        self._backend, self._ram_limit, self._scratch_dir = backend, ram_limit_pixels, scratch_dir
        self._source: Any = None
        self._closed = False
        self._memo: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._memo_limit, self._memo_bytes = region_cache_bytes, 0
        if not self.path.is_file():
            raise ImageReadError(f"image file not found: {str(self.path)!r}")
        try:
            self._size = tiff_size(self.path) if is_tiff(self.path) else image_size(self.path)
        except ImageReadError:
            raise
        except Exception as exc:  # tifffile header errors
            raise ImageReadError(f"cannot read image header of {str(self.path)!r}: {exc}") from exc

    @property
    def size(self) -> tuple[int, int]:
        """``(W, H)`` in pixels, from the header."""
        return self._size

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def backend(self) -> str | None:
        """Where the pixels live once loaded, ``"memory:<decoder>"``, ``"direct"`` or ``"scratch:pyvips"``."""
        if self._source is None:
            return None
        return self._source.kind if self._source.kind == "direct" else f"{self._source.kind}:{self._source.decoder}"

    @property
    def scratch_dir(self) -> str | None:
        """The scratch directory of a ``"scratch"`` image while it is open, else ``None``."""
        return getattr(self._source, "owned_dir", None)

    def load(self) -> LargeImage:
        """Decode the pixels now (otherwise done by the first read) and return ``self``.

        Raises:
            ImageReadError: Truncated or undecodable file (the message names the path).
        """
        if self._closed:
            raise ValueError(f"LargeImage {str(self.path)!r} is closed")
        if self._source is None:
            self._source = open_pixels(
                self.path,
                self._size,
                backend=self._backend,
                ram_limit_pixels=self._ram_limit,
                scratch_dir=self._scratch_dir,
            )
        return self

    def read_region(self, box: Sequence[float], out_size: Sequence[int], *, resample: str = "bilinear") -> np.ndarray:
        """Resample the source box ``(x0, y0, x1, y1)`` to ``out_size = (w, h)``.

        Coordinates are continuous source pixels (pixel ``(c, r)`` covers ``[c, c+1) x [r, r+1)``). With
        ``"bilinear"``, output pixel ``(i, j)`` samples ``x = x0 + (j + 0.5)(x1 - x0)/w - 0.5`` and ``y`` likewise,
        clamped to the image like PyTorch (``x < 0`` reads column 0, taps past ``W - 1`` repeat it), so
        ``read_region((0, 0, W, H), (rw, rh))`` equals ``F.interpolate(img, size=(rh, rw), mode="bilinear",
        align_corners=False)`` of the full float image, and a tile window equals the matching slice of it. Only the
        source rows and columns the taps touch are read (at most two rows per output row). Sample positions of a
        window that starts on an output pixel of its resize (a whole level, or any tile of one) are computed in float32
        as PyTorch's CPU kernel does, so tiles stitch to ``F.interpolate`` to float32 rounding. ``"area"`` averages
        the covered source area exactly (about 25 ns per source pixel: every pixel of the box is read) and needs a box
        inside the image. Results are memoised (see ``region_cache_bytes``); the caller owns the returned array.

        Args:
            box: ``(x0, y0, x1, y1)`` with ``x1 > x0`` and ``y1 > y0``; floats allowed.
            out_size: ``(w, h)``, both ``>= 1``.
            resample: One of :data:`RESAMPLE_MODES`.

        Returns:
            float32 ``[h, w, 3]``, RGB in 0..255.

        Raises:
            ConfigError: Bad box, size or ``resample``.
            ImageReadError: The pixels cannot be decoded.
        """
        x0, y0, x1, y1 = (float(v) for v in box)
        w, h = (int(v) for v in out_size)
        if resample not in RESAMPLE_MODES:
            raise ConfigError(f"unknown resample {resample!r}; choose one of {', '.join(RESAMPLE_MODES)}")
        if not (x1 > x0 and y1 > y0 and w >= 1 and h >= 1):
            raise ConfigError(f"empty region: box {tuple(box)} to out_size {tuple(out_size)}")
        width, height = self._size
        if resample == "area" and not (0 <= x0 and x1 <= width and 0 <= y0 and y1 <= height):
            raise ConfigError(f"area resampling needs a box inside the {width}x{height} image, got {tuple(box)}")
        key = (x0, y0, x1, y1, w, h, resample)
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key].copy()
        source = self.load()._source
        resampler = resample_bilinear if resample == "bilinear" else resample_area
        try:
            out = resampler(source.gather, (x0, y0, x1, y1), (w, h), self._size)
        except OSError as exc:
            raise ImageReadError(f"cannot read pixels of {str(self.path)!r}: {exc}") from exc
        if out.nbytes <= self._memo_limit:
            self._memo[key] = out.copy()
            self._memo_bytes += out.nbytes
            while self._memo_bytes > self._memo_limit:
                self._memo_bytes -= self._memo.popitem(last=False)[1].nbytes
        return out

    def level(self, long_side: int, *, resample: str = "bilinear") -> np.ndarray:
        """The whole image resized so that its long side is ``long_side`` (short side ``round(short * scale)``).

        Returns:
            float32 ``[h, w, 3]``, RGB in 0..255.
        """
        width, height = self._size
        scale = long_side / max(width, height)
        out = (max(1, round(width * scale)), max(1, round(height * scale)))
        return self.read_region((0, 0, width, height), out, resample=resample)

    def close(self) -> None:
        """Release the pixels, close the file and delete the scratch directory. Idempotent."""
        if self._source is not None:
            self._source.close()
            self._source = None
        self._memo.clear()
        self._memo_bytes = 0
        self._closed = True

    def __enter__(self) -> LargeImage:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else (self.backend or "not loaded")
        return f"LargeImage({str(self.path)!r}, size={self._size}, {state})"


class ImageCache:
    """At most ``max_open`` open :class:`LargeImage` objects, least recently used closed first.

    Group an image's questions together and one decode serves them all; an evicted image is closed (its scratch
    deleted) and decoded again if asked for later. Not thread-safe.

    Args:
        max_open: How many images stay open (``>= 1``).
        **image_kwargs: Passed to every :class:`LargeImage` (``backend``, ``ram_limit_pixels``, ``scratch_dir``).
    """

    def __init__(self, max_open: int = 1, **image_kwargs: Any) -> None:
        if max_open < 1:
            raise ConfigError(f"max_open must be >= 1, got {max_open}")
        self.max_open = max_open
        self._kwargs = image_kwargs
        self._open: OrderedDict[Path, LargeImage] = OrderedDict()

    def get(self, path: str | Path) -> LargeImage:
        """Return the open image for ``path``, opening it (and evicting the least recently used) if needed."""
        key = Path(path).resolve()
        image = self._open.get(key)
        if image is not None and not image.closed:
            self._open.move_to_end(key)
            return image
        self._open.pop(key, None)
        image = LargeImage(key, **self._kwargs)
        self._open[key] = image
        while len(self._open) > self.max_open:
            _, evicted = self._open.popitem(last=False)
            evicted.close()
        return image

    def close_all(self) -> None:
        """Close every open image."""
        while self._open:
            self._open.popitem(last=False)[1].close()

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, (str, Path)) and Path(path).resolve() in self._open

    def __enter__(self) -> ImageCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close_all()
