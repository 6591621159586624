"""Pixel stores behind ``LargeImage``: where decoded pixels live and how rows/columns are gathered from them.

Three stores, all exposing ``gather(rows, cols) -> uint8 [R, C, 3]`` (see :mod:`lrs_plugin.imagery._resample`):

* :class:`ArraySource`: the whole image decoded into RAM (3 bytes per pixel).
* :class:`RawFileSource`: row-major uint8 pixels in a file, read with one positioned read per gathered row: an
  uncompressed striped TIFF read in place, or a scratch file written by one streaming pyvips decode (deleted on close).
  Reads go through the page cache, so they do not add to the process RSS.

Decoders (tifffile, Pillow, pyvips) live in :mod:`lrs_plugin.imagery._decoders`.
"""

from __future__ import annotations

import os
import shutil
import weakref
from pathlib import Path

import numpy as np

__all__ = ["ArraySource", "RawFileSource"]


def _span(index: np.ndarray) -> slice | None:
    """The slice equal to a sorted unique index array when it is contiguous, else ``None``."""
    if len(index) and index[-1] - index[0] + 1 == len(index):
        return slice(int(index[0]), int(index[-1]) + 1)
    return None


class ArraySource:
    """Pixels decoded into RAM.

    Args:
        pixels: uint8 ``[H, W, 3]`` RGB.
        decoder: Name of the library that decoded them (reported by ``LargeImage.backend``).
    """

    kind = "memory"

    def __init__(self, pixels: np.ndarray, decoder: str) -> None:
        self.pixels = np.ascontiguousarray(pixels)
        self.decoder = decoder
        # one 3-byte item per pixel: fancy indexing then moves whole pixels (about 4x faster than [H, W, 3])
        self._items = self.pixels.view(np.dtype((np.void, 3))).reshape(-1)

    def gather(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Return uint8 ``[len(rows), len(cols), 3]``."""
        rs, cs = _span(rows), _span(cols)
        if rs is not None and cs is not None:
            return self.pixels[rs, cs]
        flat = (rows[:, None] * self.pixels.shape[1] + cols[None, :]).reshape(-1)
        return np.take(self._items, flat).view(np.uint8).reshape(len(rows), len(cols), 3)

    def close(self) -> None:
        """Drop the pixels."""
        self.pixels = np.empty((0, 0, 3), np.uint8)
        self._items = self.pixels.view(np.dtype((np.void, 3))).reshape(-1)


def _remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class RawFileSource:
    """Row-major uint8 pixels at a byte offset of a file (``bands`` interleaved samples per pixel).

    With ``bands < 3`` (gray, gray + alpha) the first sample is replicated to RGB; with ``bands >= 3`` the first three
    samples are R, G, B. One
    ``preadv`` per gathered row reads only that row's column span into a small buffer.

    Args:
        path: File holding the pixels.
        offset: Byte offset of row 0.
        size: ``(W, H)``.
        bands: Samples per pixel.
        decoder: What produced the file (``"none"`` for a TIFF read in place, ``"pyvips"`` for a scratch file).
        owned_dir: A scratch directory to delete on close (and at garbage collection / interpreter exit).
    """

    def __init__(
        self,
        path: Path,
        offset: int,
        size: tuple[int, int],
        bands: int,
        decoder: str,
        owned_dir: str | None = None,
    ) -> None:
        self.path, self.offset, self.bands, self.decoder = path, offset, bands, decoder
        self.width, self.height = size
        self.kind = "scratch" if owned_dir else "direct"
        self.owned_dir = owned_dir
        self._cleanup = weakref.finalize(self, _remove_dir, owned_dir) if owned_dir else None
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))

    def gather(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Return uint8 ``[len(rows), len(cols), 3]``."""
        c_lo = int(cols[0])
        span = int(cols[-1]) + 1 - c_lo
        buf = np.empty((span, self.bands), np.uint8)
        pick = cols - c_lo
        whole = len(cols) == span
        keep = 1 if self.bands < 3 else 3
        out = np.empty((len(rows), len(cols), keep), np.uint8)
        stride = self.width * self.bands
        for i, r in enumerate(rows.tolist()):
            start = self.offset + r * stride + c_lo * self.bands
            got = _pread_into(self._fd, buf, start)
            if got != buf.nbytes:
                raise OSError(f"short read in {str(self.path)!r}: row {r} has {got} of {buf.nbytes} bytes")
            out[i] = (buf if whole else buf[pick])[:, :keep]
        if keep == 1:
            return np.repeat(out, 3, axis=2)
        return out

    def close(self) -> None:
        """Close the file and delete the scratch directory, if any."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._cleanup is not None:
            self._cleanup()


def _pread_into(fd: int, buf: np.ndarray, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [memoryview(buf).cast("B")], offset)
    data = os.pread(fd, buf.nbytes, offset) if hasattr(os, "pread") else _seek_read(fd, buf.nbytes, offset)
    buf.reshape(-1)[: len(data)] = np.frombuffer(data, np.uint8)
    return len(data)


def _seek_read(fd: int, n: int, offset: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)
