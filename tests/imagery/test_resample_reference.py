"""The PyTorch arithmetic of ``resample_bilinear`` against the numpy implementation it replaced, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from lrs_plugin.imagery._pixel_sources import ArraySource
from lrs_plugin.imagery._resample import _BLOCK_BYTES, Gather, bilinear_taps, resample_bilinear


# --- the numpy implementation before 2026-12-07 (kept here as the reference) ---------------------------------------
def numpy_reference(
    gather: Gather, box: tuple[float, float, float, float], out_size: tuple[int, int], src_size: tuple[int, int]
) -> np.ndarray:
    (x0, y0, x1, y1), (w, h), (width, height) = box, out_size, src_size
    tx, ty = bilinear_taps(x0, x1, w, width), bilinear_taps(y0, y1, h, height)
    cols, cinv = np.unique(np.concatenate([tx.i0, tx.i1]), return_inverse=True)
    c0, c1 = cinv[:w], cinv[w:]
    wx1 = tx.w1[None, :, None]
    wx0 = np.float32(1) - wx1
    out = np.empty((h, w, 3), np.float32)
    per_row = 2 * (len(cols) * 3 + w * 3 * 4 * 3)
    step = max(1, _BLOCK_BYTES // per_row)
    for r in range(0, h, step):
        i0, i1, wy1 = ty.i0[r : r + step], ty.i1[r : r + step], ty.w1[r : r + step, None, None]
        rows, rinv = np.unique(np.concatenate([i0, i1]), return_inverse=True)
        block = _pixel_items(gather(rows, cols))
        across = _take_columns(block, c0)
        across *= wx0
        across += _take_columns(block, c1) * wx1
        del block
        n = len(i0)
        top = np.take(across, rinv[:n], axis=0)
        top *= np.float32(1) - wy1
        top += np.take(across, rinv[n:], axis=0) * wy1
        out[r : r + n] = top
    return out


def _pixel_items(block: np.ndarray) -> np.ndarray:
    """uint8 ``[R, C, 3]`` -> ``[R, C]`` of 3-byte items (fancy indexing then moves whole pixels)."""
    return np.ascontiguousarray(block).view(np.dtype((np.void, 3)))[:, :, 0]


def _take_columns(items: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Columns ``index`` of a ``[R, C]`` item array, as float32 ``[R, len(index), 3]``."""
    picked = np.take(items, index, axis=1)
    return picked.view(np.uint8).reshape(*picked.shape, 3).astype(np.float32)


BOXES = [  # (source H, W), box, out (w, h): a whole-image resize, a level tile, a fractional window, an upscale, edges
    ((700, 900), (0, 0, 900, 700), (257, 200)),
    ((700, 900), (336 * 2.5, 336 * 1.25, 900, 700), (16, 80)),
    ((700, 900), (13.7, 101.2, 440.9, 333.3), (121, 97)),
    ((60, 80), (0, 0, 80, 60), (336, 252)),
    ((300, 200), (-3.5, 250.0, 203.0, 300.0), (64, 9)),
]


@pytest.mark.parametrize(("shape", "box", "size"), BOXES)
def test_bit_identical_to_the_numpy_implementation(shape, box, size):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    source = ArraySource(pixels, "array")
    src_size = (shape[1], shape[0])
    got = resample_bilinear(source.gather, box, size, src_size)
    ref = numpy_reference(source.gather, box, size, src_size)
    assert got.dtype == np.float32 and got.shape == (size[1], size[0], 3)
    assert np.array_equal(got, ref)


def test_the_row_chunks_do_not_change_a_bit(monkeypatch):
    from lrs_plugin.imagery import _resample

    pixels = np.random.default_rng(7).integers(0, 256, (400, 500, 3), dtype=np.uint8)
    source = ArraySource(pixels, "array")
    whole = resample_bilinear(source.gather, (0, 0, 500, 400), (173, 151), (500, 400))
    monkeypatch.setattr(_resample, "_BLOCK_BYTES", 1)  # one output row per chunk
    assert np.array_equal(resample_bilinear(source.gather, (0, 0, 500, 400), (173, 151), (500, 400)), whole)
    taps = bilinear_taps(0, 10, 5, 10)  # 2x down: samples at 0.5, 2.5, ...: half way between two pixels
    assert taps.i0.tolist() == [0, 2, 4, 6, 8] and taps.w1.tolist() == [0.5] * 5
