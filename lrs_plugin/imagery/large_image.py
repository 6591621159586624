"""Reading large remote-sensing images without global side effects.

LRS-VQA holds TIFF and PNG images up to 27,328 px a side (650 Mpx); 66 of them exceed twice Pillow's decompression
bomb limit, so a plain ``Image.open`` refuses them. The limit is raised here only for the duration of our own
``open`` calls (:func:`pillow_pixel_limit`), never process-wide.

:class:`LargeImage` decodes an image once (into RAM, or for large PNGs by one pyvips streaming pass into a scratch
file) and then serves exact bilinear windows of any resize of it, reading only the source rows and columns the filter
touches; :class:`ImageCache` keeps a bounded number of them open. The RGB normalisation rule (16-bit, alpha, gray,
palette, 1-bit) and the choice of backend are documented in :mod:`lrs_plugin.imagery._decoders`; the pixel limit and
the header-only reads (:func:`image_size`, :func:`open_lazy`, :func:`file_of`) live in
:mod:`lrs_plugin.imagery._headers` and are re-exported here. This module stays a little over 400 lines on purpose:
:class:`LargeImage` is most of it (its window contract is the one every method relies on), and the two things that
build one, :class:`ImageCache` and :func:`open_image`, belong beside it.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from lrs_plugin.errors import ConfigError, ImageReadError, MultipleImagesError
from lrs_plugin.imagery._decoders import (
    BACKENDS,
    RAM_LIMIT_PIXELS,
    open_pixels,
    pil_to_rgb8,
    to_rgb8,
)
from lrs_plugin.imagery._headers import (
    MAX_PIXELS,
    check_pixel_limit,
    file_of,
    image_size,
    open_lazy,
    pillow_pixel_limit,
)
from lrs_plugin.imagery._pixel_sources import ArraySource
from lrs_plugin.imagery._resample import resample_area, resample_bilinear

__all__ = [
    "MAX_PIXELS",
    "RAM_LIMIT_PIXELS",
    "BACKENDS",
    "RESAMPLE_MODES",
    "pillow_pixel_limit",
    "open_lazy",
    "open_image",
    "file_of",
    "image_size",
    "check_pixel_limit",
    "LargeImage",
    "ImageCache",
]

_MEMORY_IDS = itertools.count()


#: ``read_region`` filters: ``"bilinear"`` reproduces ``F.interpolate(mode="bilinear", align_corners=False)`` without
#: antialias (what the original DIP feeds the model; aliases at strong downscales); ``"area"`` is the exact box average
#: of the covered source area (no aliasing, reads every source pixel of the box; not what the released model saw).
RESAMPLE_MODES = ("bilinear", "area")


class LargeImage:
    """One image, decoded once, read as exact windows of arbitrary resizes: the one reader of every method.

    Over a file (the constructor) the header is read at construction (``size`` costs no decode; the pixel limit is
    checked on it) and the pixels are decoded on the first read (or by :meth:`load`) into the store chosen by
    ``backend``, then kept until :meth:`close`. Over an in-memory image (:meth:`from_array`, :meth:`from_pil`, or
    :func:`open_image` for whatever a task's ``doc_to_visual`` returns) the pixels are normalised at once by the same
    8-bit rule (:mod:`lrs_plugin.imagery._decoders`). Use as a context manager.

    Args:
        path: Image file (PNG, TIFF, JPEG, or anything Pillow opens).
        backend: ``"auto"``, ``"memory"`` or ``"scratch"`` (see :mod:`lrs_plugin.imagery._decoders`).
        ram_limit_pixels: With ``backend="auto"``, larger images go to a pyvips scratch file when pyvips is installed.
        scratch_dir: Parent of the temporary scratch directory (default: the system temp dir). Needs ``3 * W * H``
            bytes free; the directory is deleted by :meth:`close`.
        region_cache_bytes: Results of :meth:`read_region` kept (LRU, float32 bytes) and returned as copies when the
            same region is asked again: every question on an image renders the same thumbnail and base level. 0
            disables it.
        max_pixels: The pixel limit checked on the header (:func:`check_pixel_limit`); ``None`` disables it.

    Raises:
        ImageReadError: The file is missing or its header is unreadable.
        ImageTooLargeError: The header claims more than ``max_pixels`` pixels.
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
        max_pixels: int | None = MAX_PIXELS,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown image backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.path: Path | None = Path(path)
        self._backend, self._ram_limit, self._scratch_dir = backend, ram_limit_pixels, scratch_dir
        self._source: Any = None
        self._closed = False
        self._memo: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._memo_limit, self._memo_bytes = region_cache_bytes, 0
        self._size = image_size(self.path)
        self._name = str(self.path)
        check_pixel_limit(self._size, self._name, max_pixels)
        stat = self.path.stat()
        self._key: tuple[Any, ...] = ("file", str(self.path.resolve()), stat.st_mtime_ns, stat.st_size)

    @classmethod
    def from_array(
        cls,
        pixels: np.ndarray,
        *,
        name: str | None = None,
        region_cache_bytes: int = 64 * 2**20,
        max_pixels: int | None = MAX_PIXELS,
    ) -> LargeImage:
        """An in-memory image from samples ``[H, W]`` or ``[H, W, bands]``, normalised by the 8-bit rule.

        Args:
            pixels: Any supported sample type (uint8, uint16, bool, float); see :mod:`lrs_plugin.imagery._decoders`.
            name: Used in messages (default ``"<memory image WxH>"``).
            region_cache_bytes: As for the constructor.
            max_pixels: The pixel limit (checked before the conversion).

        Raises:
            ImageReadError: unsupported sample type or shape.
            ImageTooLargeError: more than ``max_pixels`` pixels.
        """
        array = np.asarray(pixels)
        size = (int(array.shape[1]), int(array.shape[0])) if array.ndim >= 2 else (0, 0)
        label = name or f"<memory image {size[0]}x{size[1]}>"
        check_pixel_limit(size, label, max_pixels)
        return cls._in_memory(to_rgb8(array, label), label, region_cache_bytes)

    @classmethod
    def from_pil(
        cls,
        image: Any,
        *,
        name: str | None = None,
        region_cache_bytes: int = 64 * 2**20,
        max_pixels: int | None = MAX_PIXELS,
    ) -> LargeImage:
        """An in-memory image from a PIL image, decoded (if still lazy) inside :func:`pillow_pixel_limit`.

        A lazy image opened elsewhere is loaded with truncated files refused (lmms-eval allows them process-wide).

        Raises:
            ImageReadError: truncated or undecodable pixels, or an unsupported mode (names the image).
            ImageTooLargeError: more than ``max_pixels`` pixels.
        """
        label = name or getattr(image, "filename", "") or f"<memory image {image.size[0]}x{image.size[1]}>"
        check_pixel_limit(tuple(image.size), label, max_pixels)
        try:
            with pillow_pixel_limit(None):
                image.load()
                pixels = pil_to_rgb8(image, label)
        except ImageReadError:
            raise
        except Exception as exc:  # truncated data, decoder errors
            raise ImageReadError(f"cannot decode image {label!r}: {type(exc).__name__}: {exc}") from exc
        return cls._in_memory(pixels, label, region_cache_bytes)

    @classmethod
    def _in_memory(cls, rgb: np.ndarray, name: str, region_cache_bytes: int) -> LargeImage:
        self = cls.__new__(cls)
        self.path = None
        self._backend, self._ram_limit, self._scratch_dir = "memory", RAM_LIMIT_PIXELS, None
        self._source = ArraySource(rgb, "array")
        self._closed = False
        self._memo = OrderedDict()
        self._memo_limit, self._memo_bytes = region_cache_bytes, 0
        self._size = (int(rgb.shape[1]), int(rgb.shape[0]))
        self._name = name
        self._key = ("memory", next(_MEMORY_IDS))
        return self

    @property
    def name(self) -> str:
        """The file path, or the in-memory image's name (used in messages)."""
        return self._name

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity for caches: ``("file", resolved path, mtime_ns, size)`` or ``("memory", unique id)``."""
        return self._key

    def rgb8(self) -> np.ndarray:
        """The whole image, uint8 ``[H, W, 3]`` (the pixels every window is resampled from; decodes if needed)."""
        source = self.load()._source
        if isinstance(source, ArraySource):
            return source.pixels
        width, height = self._size
        try:
            return source.gather(np.arange(height), np.arange(width))
        except OSError as exc:
            raise ImageReadError(f"cannot read pixels of {self._name!r}: {exc}") from exc

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Whole source rows ``start .. stop - 1``, uint8 ``[stop - start, W, 3]`` (decodes if needed).

        For reading an image in strips (e.g. :func:`lrs_plugin.imagery.streamed_resize`) without holding all of it.

        Raises:
            ConfigError: ``start`` / ``stop`` not a non-empty range inside ``0 .. H``.
            ImageReadError: The pixels cannot be read.
        """
        width, height = self._size
        if not (0 <= start < stop <= height):
            raise ConfigError(f"rows {start}..{stop} are not a non-empty range of the image's {height} rows")
        source = self.load()._source
        try:
            return source.gather(np.arange(start, stop), np.arange(width))
        except OSError as exc:
            raise ImageReadError(f"cannot read pixels of {self._name!r}: {exc}") from exc

    def to_pil(self) -> Any:
        """The whole image as an RGB ``PIL.Image.Image`` (for methods that run the stock processor on it)."""
        from PIL import Image

        return Image.fromarray(np.ascontiguousarray(self.rgb8()), "RGB")

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
            raise ValueError(f"LargeImage {self._name!r} is closed")
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
            raise ImageReadError(f"cannot read pixels of {self._name!r}: {exc}") from exc
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
        return f"LargeImage({self._name!r}, size={self._size}, {state})"


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


def open_image(visual: Any, **kwargs: Any) -> LargeImage:
    """A :class:`LargeImage` over whatever a task's ``doc_to_visual`` returned for one image.

    Accepted:

    * a path (``str`` / ``os.PathLike``): the file, header only (nothing is decoded to learn the size);
    * a PIL image opened from a file (lazy or loaded, see :func:`file_of`): that file, read by our decoders;
    * any other PIL image (e.g. decoded by ``datasets``): :meth:`LargeImage.from_pil`;
    * a numpy array ``[H, W]`` / ``[H, W, bands]``: :meth:`LargeImage.from_array`;
    * a list or tuple holding exactly one of these.

    Args:
        visual: The visual.
        **kwargs: Passed to the constructor for files (``backend``, ``max_pixels``...); ``max_pixels`` and
            ``region_cache_bytes`` also apply to in-memory images.

    Raises:
        MultipleImagesError: a list of several images (names the count).
        ImageReadError: an empty list, an unsupported type (names it and the accepted ones), or an unreadable image.
        ImageTooLargeError: the image is above the pixel limit.
    """
    from PIL import Image

    if isinstance(visual, (list, tuple)):
        if len(visual) > 1:
            raise MultipleImagesError(f"{len(visual)} images given where one is read")
        if not visual:
            raise ImageReadError("no image given (an empty list)")
        visual = visual[0]
    path = file_of(visual)
    if path is not None:
        return LargeImage(path, **kwargs)
    memory_kwargs = {k: v for k, v in kwargs.items() if k in ("max_pixels", "region_cache_bytes")}
    if isinstance(visual, Image.Image):
        return LargeImage.from_pil(visual, **memory_kwargs)
    if isinstance(visual, np.ndarray):
        return LargeImage.from_array(visual, **memory_kwargs)
    if isinstance(visual, LargeImage):
        return visual
    raise ImageReadError(
        f"cannot read an image from a {type(visual).__module__}.{type(visual).__name__}; accepted: a file path, a "
        "PIL image, a numpy array [H, W] or [H, W, bands], or a list holding one of them"
    )
