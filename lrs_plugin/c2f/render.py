"""Rendering pyramid tiles and thumbnails from a :class:`~lrs_plugin.imagery.LargeImage`, only where needed.

The original DIP (method.md §1.1) normalises the whole full-resolution image, resizes it per level with
``F.interpolate(mode="bilinear", align_corners=False)`` (no antialias), zero-pads bottom/right to the tile grid and
cuts tiles. Bilinear is local, so each tile is computed here from its own source window: the tile's window of the
level, intersected with the level content ``(rh, rw)``, mapped to source pixels by ``(W / rw, H / rh)``. Stitching
every tile of a level gives the original level to float32 rounding, at the cost of the tiles actually used.

Levels are duck-typed: anything with ``resize_hw = (rh, rw)`` (content size of the full-level resize) and
``grid_hw = (nb_h, nb_w)`` (tiles per column / row), such as ``lrs_plugin.c2f.pyramid.LevelGeometry``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from lrs_plugin.imagery.large_image import LargeImage

__all__ = ["CLIP_MEAN", "CLIP_STD", "render_tiles", "render_thumbnail"]

#: OpenAI CLIP normalisation used by the released LRS-VQA checkpoints (method.md §1.1).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _Level(Protocol):
    resize_hw: tuple[int, int]
    grid_hw: tuple[int, int]


def _normalise(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """float32 ``[h, w, 3]`` in 0..255 -> float32 ``[3, h, w]`` as ``(x / 255 - mean) / std`` (ToTensor+Normalize)."""
    m = np.asarray(mean, np.float32).reshape(3, 1, 1)
    s = np.asarray(std, np.float32).reshape(3, 1, 1)
    return (pixels.transpose(2, 0, 1) / np.float32(255) - m) / s


def _content_box(
    level: _Level, row: int, col: int, *, tile: int, image_size: tuple[int, int]
) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
    """Source box and content size of one tile of a level.

    Args:
        level: Level geometry (``resize_hw``, ``grid_hw``).
        row: Tile row, ``0 <= row < nb_h``.
        col: Tile column, ``0 <= col < nb_w``.
        tile: Tile side in level pixels.
        image_size: Source ``(W, H)``.

    Returns:
        ``((x0, y0, x1, y1), (w, h))``: the source box of the tile's content and the content size in level pixels
        (``w, h <= tile``; the rest of the tile is padding).

    Raises:
        IndexError: The tile is outside the level's grid or holds no content.
    """
    rh, rw = level.resize_hw
    nb_h, nb_w = level.grid_hw
    r0, c0 = row * tile, col * tile
    r1, c1 = min(r0 + tile, rh), min(c0 + tile, rw)
    if not (0 <= row < nb_h and 0 <= col < nb_w) or r1 <= r0 or c1 <= c0:
        raise IndexError(f"tile (row={row}, col={col}) is outside the {nb_h}x{nb_w} grid of a {rh}x{rw} level")
    width, height = image_size
    sx, sy = width / rw, height / rh
    return (c0 * sx, r0 * sy, c1 * sx, r1 * sy), (c1 - c0, r1 - r0)


def render_tiles(
    image: LargeImage,
    level: _Level,
    tiles: Sequence[tuple[int, int]],
    *,
    tile: int,
    mean: Sequence[float],
    std: Sequence[float],
    resample: str = "bilinear",
) -> np.ndarray:
    """Render tiles of a pyramid level, normalised, with zero (mean-colour) padding bottom/right.

    Args:
        image: The source image.
        level: Level geometry; ``resize_hw = (rh, rw)`` is the full-level resize of the ``(H, W)`` source.
        tiles: ``(row, col)`` tile indices, in output order.
        tile: Tile side in pixels (336 for CLIP-L/14-336).
        mean: Per-channel mean of ``x / 255`` (e.g. :data:`CLIP_MEAN`).
        std: Per-channel std (e.g. :data:`CLIP_STD`).
        resample: ``"bilinear"`` (the original's filter, default) or ``"area"`` (see ``LargeImage.read_region``).

    Returns:
        float32 ``[len(tiles), 3, tile, tile]``.

    Raises:
        IndexError: A tile is outside the level's grid.
    """
    out = np.zeros((len(tiles), 3, tile, tile), np.float32)
    for i, (row, col) in enumerate(tiles):
        box, (w, h) = _content_box(level, row, col, tile=tile, image_size=image.size)
        out[i, :, :h, :w] = _normalise(image.read_region(box, (w, h), resample=resample), mean, std)
    return out


def render_thumbnail(
    image: LargeImage,
    thumb_level: _Level,
    *,
    tile: int,
    mean: Sequence[float],
    std: Sequence[float],
    resample: str = "bilinear",
) -> np.ndarray:
    """Render the global thumbnail: the whole image resized to ``thumb_level.resize_hw``, top-left on a zero canvas.

    Arguments as in :func:`render_tiles`.

    Returns:
        float32 ``[3, tile, tile]``.

    Raises:
        ValueError: The thumbnail's ``resize_hw`` does not fit in one tile.
    """
    rh, rw = thumb_level.resize_hw
    if not (0 < rh <= tile and 0 < rw <= tile):
        raise ValueError(f"thumbnail resize_hw {(rh, rw)} does not fit in a {tile}x{tile} tile")
    width, height = image.size
    out = np.zeros((3, tile, tile), np.float32)
    out[:, :rh, :rw] = _normalise(image.read_region((0, 0, width, height), (rw, rh), resample=resample), mean, std)
    return out
