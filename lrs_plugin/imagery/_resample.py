"""Separable resampling of a source that is read through a row/column gather (plumbing of ``LargeImage``).

A *gather* returns the source pixels at the crossings of a set of rows and a set of columns, so a resampler only
reads what its filter taps touch: bilinear (no antialias) needs at most two source rows per output row whatever the
scale, which is what makes a 27k-px level or tile cheap to compute from a row-addressable source.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = ["Gather", "bilinear_taps", "resample_bilinear", "resample_area"]

#: ``gather(rows, cols) -> uint8 [len(rows), len(cols), 3]``; ``rows``/``cols`` are sorted, unique, in-bounds int64.
Gather = Callable[[np.ndarray, np.ndarray], np.ndarray]

_BLOCK_BYTES = 32 * 2**20  # working-set bound of one chunk of output rows (gathered block and float copies)


class Taps(NamedTuple):
    """Two-tap linear interpolation along one axis: ``out[j] = (1 - w1[j]) * src[i0[j]] + w1[j] * src[i1[j]]``."""

    i0: np.ndarray  # int64 [n]
    i1: np.ndarray  # int64 [n]
    w1: np.ndarray  # float32 [n], weight of i1 in [0, 1]


def bilinear_taps(start: float, stop: float, n: int, size: int) -> Taps:
    """Source taps of ``n`` output samples spread over the source interval ``[start, stop)`` of an axis of ``size``.

    Output sample ``j`` sits at source coordinate ``x = start + (j + 0.5) * s - 0.5`` with ``s = (stop - start) / n``,
    clamped like PyTorch's ``F.interpolate(mode="bilinear", align_corners=False)``: ``x < 0`` becomes 0 and taps past
    the last pixel repeat it. When ``start`` is a whole multiple of ``s`` (a full resize, or a window of one that starts
    on an output pixel: every tile of a pyramid level), ``x`` is computed in float32 exactly as PyTorch's CPU kernel
    does, ``fma(float32(s), float32(start / s + j + 0.5), -0.5)``, so windows agree with slices of the full
    ``F.interpolate`` to float32 rounding; any other box is computed in float64.

    Args:
        start: Source coordinate of the interval's left edge (pixel edges are integers).
        stop: Source coordinate of the right edge; ``stop > start``.
        n: Number of output samples, ``>= 1``.
        size: Source axis length, ``>= 1``.

    Returns:
        The taps, each array of shape ``[n]``.
    """
    scale = (stop - start) / n
    offset = start / scale
    whole = round(offset)
    if abs(offset - whole) <= 1e-9 * max(1.0, abs(offset)):
        u = (np.arange(n, dtype=np.float64) + (whole + 0.5)).astype(np.float32)
        # float32 x float32 is exact in float64, so one rounding to float32 reproduces a fused multiply-add.
        src = (np.float64(np.float32(scale)) * u.astype(np.float64) - 0.5).astype(np.float32)
    else:
        src = start + scale * (np.arange(n, dtype=np.float64) + 0.5) - 0.5
    src = np.maximum(src, 0)
    i0 = np.minimum(np.floor(src).astype(np.int64), size - 1)
    w1 = np.clip(src - i0.astype(src.dtype), 0, 1).astype(np.float32)
    i1 = np.minimum(i0 + 1, size - 1)
    return Taps(i0, i1, w1)


def resample_bilinear(
    gather: Gather, box: tuple[float, float, float, float], out_size: tuple[int, int], src_size: tuple[int, int]
) -> np.ndarray:
    """Bilinear (no antialias) resample of the source box ``(x0, y0, x1, y1)`` to ``out_size = (w, h)``.

    Reads only the rows and columns the taps touch, in chunks of output rows that bound the working set. The
    arithmetic runs in PyTorch (vectorised, on the intra-op threads): per output pixel the float32 operations of the
    formula in :func:`bilinear_taps`, in one fixed order (the column pass ``a * (1 - w) + b * w`` with each product
    rounded, then the row pass the same way), so the result does not depend on the thread count or the chunking.

    Returns:
        float32 ``[h, w, 3]`` in source units (0..255).
    """
    import torch

    (x0, y0, x1, y1), (w, h), (width, height) = box, out_size, src_size
    tx, ty = bilinear_taps(x0, x1, w, width), bilinear_taps(y0, y1, h, height)
    cols, cinv = np.unique(np.concatenate([tx.i0, tx.i1]), return_inverse=True)
    c0, c1 = torch.from_numpy(cinv[:w]), torch.from_numpy(cinv[w:])
    wx1 = torch.from_numpy(tx.w1).reshape(1, w, 1)
    wx0 = 1 - wx1
    out = np.empty((h, w, 3), np.float32)
    per_row = 2 * (len(cols) * 3 + w * 3 * 4 * 3)
    step = max(1, _BLOCK_BYTES // per_row)
    for r in range(0, h, step):
        i0, i1 = ty.i0[r : r + step], ty.i1[r : r + step]
        wy1 = torch.from_numpy(ty.w1[r : r + step]).reshape(-1, 1, 1)
        rows, rinv = np.unique(np.concatenate([i0, i1]), return_inverse=True)
        block = gather(rows, cols)
        block = torch.from_numpy(block if block.flags.writeable else block.copy())
        across = block.index_select(1, c0).to(torch.float32)
        across.mul_(wx0)
        across.add_(block.index_select(1, c1).to(torch.float32).mul_(wx1))
        del block
        n = len(i0)
        r0, r1 = torch.from_numpy(rinv[:n]), torch.from_numpy(rinv[n:])
        top = across.index_select(0, r0)
        top.mul_(1 - wy1)
        top.add_(across.index_select(0, r1).mul_(wy1))
        out[r : r + n] = top.numpy()
    return out


def _edges(start: float, stop: float, n: int) -> np.ndarray:
    return start + (stop - start) * np.arange(n + 1, dtype=np.float64) / n


def _box_integral(cum: np.ndarray, edges: np.ndarray, first: int, axis: int) -> np.ndarray:
    """Integral of a piecewise-constant signal up to each edge, from its cumulative sum ``cum`` along ``axis``.

    ``cum`` has a leading zero along ``axis`` and covers source pixels ``first, first + 1, ...``.
    """
    pos = edges - first
    idx = np.minimum(np.floor(pos).astype(np.int64), cum.shape[axis] - 2)
    frac = (pos - idx).reshape([-1 if a == axis else 1 for a in range(cum.ndim)])
    lo, hi = np.take(cum, idx, axis=axis), np.take(cum, idx + 1, axis=axis)
    return lo + frac * (hi - lo)


def resample_area(
    gather: Gather, box: tuple[float, float, float, float], out_size: tuple[int, int], src_size: tuple[int, int]
) -> np.ndarray:
    """Area (box-average) resample: each output pixel is the exact mean of the source area it covers.

    Pixels are treated as constant squares, so fractional coverage at the edges is weighted exactly. Every source pixel
    inside the box is read (unlike bilinear), in chunks of output rows. The box must lie inside the image.

    Returns:
        float32 ``[h, w, 3]`` in source units (0..255).
    """
    (x0, y0, x1, y1), (w, h) = box, out_size
    ex, ey = _edges(x0, x1, w), _edges(y0, y1, h)
    c_lo, c_hi = int(np.floor(x0)), min(int(np.ceil(x1)), src_size[0])
    cols = np.arange(c_lo, max(c_hi, c_lo + 1), dtype=np.int64)
    out = np.empty((h, w, 3), np.float32)
    rows_per_out = (y1 - y0) / h + 2
    step = max(1, int(_BLOCK_BYTES // (rows_per_out * len(cols) * 3 * 8 * 2)))
    for r in range(0, h, step):
        n = min(step, h - r)
        r_lo = int(np.floor(ey[r]))
        r_hi = min(max(int(np.ceil(ey[r + n])), r_lo + 1), src_size[1])
        block = gather(np.arange(r_lo, r_hi, dtype=np.int64), cols).astype(np.float64)
        cum = np.zeros((block.shape[0], block.shape[1] + 1, 3))
        np.cumsum(block, axis=1, out=cum[:, 1:])
        del block
        fx = _box_integral(cum, ex, c_lo, axis=1)
        across = (fx[:, 1:] - fx[:, :-1]) / np.diff(ex)[None, :, None]
        cum = np.zeros((across.shape[0] + 1, w, 3))
        np.cumsum(across, axis=0, out=cum[1:])
        fy = _box_integral(cum, ey[r : r + n + 1], r_lo, axis=0)
        out[r : r + n] = (fy[1:] - fy[:-1]) / np.diff(ey[r : r + n + 1])[:, None, None]
    return out
